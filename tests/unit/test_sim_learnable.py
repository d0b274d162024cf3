"""The simulated LM's learnable task family: low zero-shot, high with demos or the key phrase, other prompts unchanged."""

import json
import os
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")

import dspy
import pytest
from dspy.adapters import ChatAdapter, JSONAdapter

from dspy_pool.simlm import answer, learnable
from dspy_pool.simlm.answer import complete

DATASET = Path(__file__).resolve().parents[2] / "examples" / "optimize" / "dataset.jsonl"
TASK = dspy.Signature("word -> code")
HINTED = TASK.with_instructions("Reverse the letters of the word, then add how many letters it has.")


def rows(split):
    return [json.loads(line) for line in DATASET.read_text().splitlines() if json.loads(line)["split"] == split]


def dev_words():
    return [row["inputs"]["word"] for row in rows("dev")]


def demos(words, code=learnable.code_for):
    return [dspy.Example(word=w, code=code(w)) for w in words]


GOOD_DEMOS = demos(["anchor", "zebra", "violet"])


def accuracy_on_dev(signature=TASK, demo_list=(), adapter=None):
    adapter = adapter or ChatAdapter()
    right = 0
    for word in dev_words():
        out = adapter.parse(signature, complete(adapter.format(signature, list(demo_list), {"word": word})))
        right += out["code"] == learnable.code_for(word)
    return right / len(dev_words())


def without_learnable(monkeypatch, messages):
    """What the sim answered before the learnable family existed."""
    with monkeypatch.context() as patch:
        patch.setattr(learnable, "field_values", lambda *a, **k: None)
        patch.setattr(learnable, "plain_reply", lambda *a, **k: None)
        return complete(messages)


def test_hidden_rule_reverses_capitalises_and_counts():
    """code(word): the letters reversed, in capitals, then the letter count."""
    assert learnable.code_for("apple") == "ELPPA5"
    assert learnable.code_for(" river ") == "REVIR5"


def test_accuracy_table():
    """p per prompt: 0.30 zero-shot, 0.85 with 3 good demos, 0.70 hinted, 0.95 both, linear and penalised between."""
    Context = learnable.Context
    assert learnable.accuracy(Context()) == pytest.approx(0.30)
    assert learnable.accuracy(Context(good_demos=3)) == pytest.approx(0.85)
    assert learnable.accuracy(Context(good_demos=9)) == pytest.approx(0.85)
    assert learnable.accuracy(Context(hinted=True)) == pytest.approx(0.70)
    assert learnable.accuracy(Context(good_demos=3, hinted=True)) == pytest.approx(0.95)
    assert 0.30 < learnable.accuracy(Context(good_demos=1)) < 0.85
    assert learnable.accuracy(Context(good_demos=3, wrong_demos=2)) == pytest.approx(0.55)
    assert learnable.accuracy(Context(wrong_demos=9)) == pytest.approx(learnable.P_MIN)


def test_zero_shot_accuracy_is_low_on_the_shipped_dev_split():
    """Zero-shot, the sim gets about a third of the shipped dev words right."""
    assert 0.2 <= accuracy_on_dev() <= 0.45


def test_relevant_demos_make_it_accurate():
    """Three correct demos of the task lift dev accuracy to 85% or more."""
    assert accuracy_on_dev(demo_list=GOOD_DEMOS) >= 0.85


def test_key_phrase_in_instructions_helps_without_demos():
    """Instructions carrying 'reverse the letters' lift zero-shot accuracy; with demos as well, higher still."""
    hinted = accuracy_on_dev(HINTED)
    assert hinted >= accuracy_on_dev() + 0.25
    assert accuracy_on_dev(HINTED, GOOD_DEMOS) >= hinted


def test_wrong_demos_hurt():
    """Demos whose codes break the rule lower accuracy below what correct demos give."""
    wrong = demos(["anchor", "zebra", "violet"], code=lambda w: w.upper() + str(len(w)))
    assert accuracy_on_dev(demo_list=wrong) < accuracy_on_dev(demo_list=GOOD_DEMOS)


def test_better_prompts_never_turn_a_right_answer_wrong():
    """Difficulty is per word: every word right zero-shot stays right with demos."""
    adapter = ChatAdapter()
    for word in dev_words():
        zero = adapter.parse(TASK, complete(adapter.format(TASK, [], {"word": word})))["code"]
        helped = adapter.parse(TASK, complete(adapter.format(TASK, GOOD_DEMOS, {"word": word})))["code"]
        if zero == learnable.code_for(word):
            assert helped == zero


def test_wrong_answers_are_plausible_codes():
    """A wrong answer still looks like a code: capitals and a number, never the right one."""
    for word in dev_words() + ["level", "noon"]:
        wrong = learnable.wrong_code(word)
        assert wrong != learnable.code_for(word)
        assert wrong.rstrip("0123456789").isupper() and wrong[-1].isdigit()


def test_a_demo_of_the_same_word_is_copied():
    """A demo for the very word asked makes the answer right, as a real model would copy it."""
    hard = max(dev_words(), key=learnable.difficulty)
    assert learnable.difficulty(hard) > learnable.accuracy(learnable.Context(good_demos=1))
    adapter = ChatAdapter()
    out = adapter.parse(TASK, complete(adapter.format(TASK, demos([hard]), {"word": hard})))
    assert out["code"] == learnable.code_for(hard)


def test_chain_of_thought_and_json_prompts_use_the_family():
    """`word -> reasoning, code` (ChainOfThought) and JSONAdapter prompts are the same task."""
    cot = dspy.ChainOfThought(TASK).predict.signature
    assert accuracy_on_dev(cot, GOOD_DEMOS) >= 0.85
    assert accuracy_on_dev(TASK, GOOD_DEMOS, JSONAdapter()) >= 0.85
    assert accuracy_on_dev(TASK, (), JSONAdapter()) <= 0.45


def test_answers_are_deterministic():
    """The same prompt always gets the same code."""
    messages = ChatAdapter().format(TASK, GOOD_DEMOS, {"word": "harbor"})
    assert complete(messages) == complete(json.loads(json.dumps(messages)))


@pytest.mark.parametrize("signature", [
    "question -> answer", "word -> answer", "word, context -> code", "word -> code: int", "text -> code",
    "word -> code, note",
])
def test_other_prompts_are_answered_as_before(monkeypatch, signature):
    """Prompts outside the family get exactly the answer the sim gave before it existed."""
    sig = dspy.Signature(signature)
    inputs = {name: "apple" for name in sig.input_fields}
    for messages in (ChatAdapter().format(sig, [], inputs), JSONAdapter().format(sig, [], inputs),
                     [{"role": "user", "content": "hello there"}]):
        assert complete(messages) == without_learnable(monkeypatch, messages)


class Propose(dspy.Signature):
    """Propose an instruction for the language model."""

    basic_instruction: str = dspy.InputField()
    proposed_instruction: str = dspy.OutputField()
    proposed_prefix_for_output_field: str = dspy.OutputField()


def proposal(basic_instruction):
    adapter = ChatAdapter()
    return adapter.parse(Propose, complete(adapter.format(Propose, [], {"basic_instruction": basic_instruction})))


def test_instruction_proposals_about_the_task_sometimes_carry_the_key_phrase():
    """Proposals about `word -> code` are one of two instructions; about half of them carry the key phrase."""
    texts = [proposal(f"Given the fields `word`, produce the fields `code`. Variant {i}.") for i in range(40)]
    instructions = [t["proposed_instruction"] for t in texts]
    assert set(instructions) <= {learnable.HINTED_INSTRUCTION, learnable.GENERIC_INSTRUCTION}
    assert 10 <= instructions.count(learnable.HINTED_INSTRUCTION) <= 30
    assert all(t["proposed_prefix_for_output_field"] == learnable.OUTPUT_PREFIX for t in texts)
    assert learnable.KEY_PHRASE in learnable.HINTED_INSTRUCTION.lower()


def test_proposals_about_other_tasks_are_answered_as_before(monkeypatch):
    """An instruction proposal for another task does not use the family."""
    messages = ChatAdapter().format(Propose, [], {"basic_instruction": "Given the fields `question`, produce the fields `answer`."})
    assert complete(messages) == without_learnable(monkeypatch, messages)


def test_simba_advice_names_each_module():
    """SIMBA's module_advice (a dict) gets the proposed instruction for each module it names."""

    class Advice(dspy.Signature):
        program_inputs: str = dspy.InputField()
        module_names: list[str] = dspy.InputField()
        discussion: str = dspy.OutputField()
        module_advice: dict[str, str] = dspy.OutputField()

    adapter = ChatAdapter()
    messages = adapter.format(Advice, [], {"program_inputs": '{"word": "apple"}, expected {"code": "ELPPA5"}',
                                           "module_names": ["self", "other"]})
    out = adapter.parse(Advice, complete(messages))
    assert set(out["module_advice"]) == {"self", "other"}
    assert set(out["module_advice"].values()) <= {learnable.HINTED_INSTRUCTION, learnable.GENERIC_INSTRUCTION}
    assert out["discussion"].startswith("sim answer ")


def test_gepa_reflection_prompt_gets_a_fenced_instruction(monkeypatch):
    """A plain chat asking to write a new instruction for this task gets one inside ``` blocks."""
    prompt = ("I provided an assistant with the following instructions to perform a task for me:\n```\n"
              "Given the fields `word`, produce the fields `code`.\n```\n\nExamples:\n### word\napple\n### code\nAPPLE5\n\n"
              "Your task is to write a new instruction for the assistant.\nProvide the new instructions within ``` blocks.")
    text = complete([{"role": "user", "content": prompt}])
    assert text.startswith("```\n") and text.endswith("\n```")
    assert text.strip("`\n") in {learnable.HINTED_INSTRUCTION, learnable.GENERIC_INSTRUCTION}
    other = [{"role": "user", "content": prompt.replace("`word`", "`question`").replace("### word", "### question")
              .replace("`code`", "`answer`").replace("### code", "### answer")}]
    assert complete(other) == without_learnable(monkeypatch, other)


def test_answer_module_documents_the_family():
    """answer.py points at the learnable family; learnable.py carries the accuracy table."""
    assert "learnable" in answer.__doc__
    assert "0.85" in learnable.__doc__ and learnable.KEY_PHRASE in learnable.__doc__
