"""A task family the simulated LM gets better at the way a real model does: so optimizers have something to find.

The task: `word -> code`, where the code follows a hidden rule

    code(word) = the word's letters reversed, in capitals, then its letter count
    code("apple") == "ELPPA5"

Data flow per request (pure, deterministic; `answer.complete` asks here first):

    messages --task_prompt?--> the word, the demos (earlier user/assistant pairs), the system prompt
             --accuracy-------> p from (good demos, wrong demos, key phrase in the instructions)
             --difficulty-----> u(word) in [0, 1), a hash of the word alone
             --u < p ?--------> the right code, else a plausible wrong one
    messages --proposal?-----> an instruction an optimizer asked for, sometimes carrying the key phrase

How often the sim is right (p; a word is answered correctly when u(word) < p):

    | prompt                                              | p    |
    | --------------------------------------------------- | ---- |
    | zero-shot                                           | 0.30 |
    | 3 or more correct demos of this task                | 0.85 |
    | key phrase in the instructions, no demos            | 0.70 |
    | key phrase and 3 or more correct demos              | 0.95 |
    | 1 or 2 correct demos: linear in between             |      |
    | each demo with a wrong code                         | -0.15 |

p is clipped to [0.05, 0.95]. Because u depends on the word alone, a word
answered right at some p is also answered right at any higher p: a better
prompt never makes an item worse, as with item difficulty in a real
benchmark. A demo whose word is the asked word makes the answer right (the
model copies it), as a real model would.

The key phrase is `reverse the letters` (any case, anywhere in the system
prompt: the instructions or a field description).

Which prompts use this family (everything else is answered by `answer`
exactly as before):

- the task itself: a DSPy prompt whose only input field is `word` and whose
  output fields are `code` (a str), optionally after `reasoning`
  (ChainOfThought). Other outputs or inputs: not this family.
- an optimizer asking for instructions about it: a DSPy prompt with an output
  field `proposed_instruction` / `new_instruction` (MIPROv2, COPRO) or
  `module_advice` (SIMBA), or a plain chat that asks to "write a new
  instruction" (GEPA's reflection), whose last user message mentions the
  task's fields (`` `word` `` and `` `code` ``, or `Word:`/`Code:` lines, or
  `# word`/`# code` headings). About half of those proposals (by a digest of
  the conversation) contain the key phrase; the rest are generic.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

INPUT_FIELD = "word"
OUTPUT_FIELD = "code"
REASONING_FIELD = "reasoning"
KEY_PHRASE = "reverse the letters"

ZERO_SHOT = 0.30
WITH_DEMOS = 0.85
WITH_HINT = 0.70
WITH_HINT_AND_DEMOS = 0.95
FULL_DEMOS = 3
WRONG_DEMO_PENALTY = 0.15
P_MIN, P_MAX = 0.05, 0.95

HINTED_INSTRUCTION = ("Reverse the letters of the word, write them in capital letters, "
                      "and append the number of letters.")
GENERIC_INSTRUCTION = "Read the word carefully and write its code."
OUTPUT_PREFIX = "Code:"

_INSTRUCTION_FIELDS = frozenset({"proposed_instruction", "new_instruction"})
_ADVICE_FIELD = "module_advice"
_PREFIX_FIELD = "proposed_prefix_for_output_field"
_PLAIN_ASK = "write a new instruction"
_BLOCK = re.compile(r"^\[\[ ## (\w+) ## \]\]\n?", re.MULTILINE)
_TRAILER = re.compile(r"\n*Respond with (?:the corresponding output fields|a JSON object)")
_MENTIONS_WORD = re.compile(r"`word`|^\s*Word:|^#+ word\s*$|\"word\"", re.MULTILINE)
_MENTIONS_CODE = re.compile(r"`code`|^\s*Code:|^#+ code\s*$|\"code\"", re.MULTILINE)
_SPACES = re.compile(r"\s+")


def code_for(word: str) -> str:
    """The hidden rule: letters reversed, in capitals, then the letter count."""
    word = word.strip()
    return word[::-1].upper() + str(len(word))


def difficulty(word: str) -> float:
    """u(word) in [0, 1): the word is answered right when u < p."""
    digest = hashlib.sha256(b"learnable:" + word.strip().lower().encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def wrong_code(word: str) -> str:
    """A plausible mistake: the letters not reversed, or the count off by one; never the right code."""
    word = word.strip()
    right = code_for(word)
    if int(difficulty(word) * 1e6) % 2 == 0:
        guess = word.upper() + str(len(word))
        if guess != right:  # a palindrome reads the same both ways
            return guess
    return word[::-1].upper() + str(len(word) + 1)


@dataclass(frozen=True, slots=True)
class Context:
    """What in a prompt moves the accuracy: demos of this task and the key phrase."""

    good_demos: int = 0
    wrong_demos: int = 0
    hinted: bool = False


def accuracy(context: Context) -> float:
    """p for a prompt (see the table in the module docstring)."""
    low, high = (WITH_HINT, WITH_HINT_AND_DEMOS) if context.hinted else (ZERO_SHOT, WITH_DEMOS)
    p = low + (high - low) * min(context.good_demos, FULL_DEMOS) / FULL_DEMOS
    p -= WRONG_DEMO_PENALTY * context.wrong_demos
    return min(P_MAX, max(P_MIN, p))


def solve(word: str, context: Context, copied: str | None = None) -> str:
    """The sim's code for `word` in this context."""
    if copied is not None:
        return copied
    return code_for(word) if difficulty(word) < accuracy(context) else wrong_code(word)


# --- reading prompts ---------------------------------------------------------


def _text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def _fields(text: str) -> dict[str, str]:
    """`[[ ## name ## ]]` blocks of a message, or the keys of a JSON object answer."""
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError:
            value = None
        if isinstance(value, dict):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
    trailer = _TRAILER.search(text)
    text = text[: trailer.start()] if trailer else text
    headers = list(_BLOCK.finditer(text))
    values = {}
    for i, match in enumerate(headers):
        end = headers[i + 1].start() if i + 1 < len(headers) else len(text)
        values[match.group(1)] = text[match.end():end].strip()
    return values


def demo_pairs(messages: list[Mapping[str, Any]]) -> Iterable[tuple[dict[str, str], dict[str, str]]]:
    """(inputs, outputs) of each user/assistant pair before the last user message."""
    for i in range(len(messages) - 1):
        if messages[i].get("role") == "user" and messages[i + 1].get("role") == "assistant":
            yield _fields(_text(messages[i])), _fields(_text(messages[i + 1]))


def read_context(messages: list[Mapping[str, Any]], system: str, word: str) -> tuple[Context, str | None]:
    """The demos and key phrase of a task prompt, and a demo's code for this very word if there is one."""
    good = wrong = 0
    copied = None
    for inputs, outputs in demo_pairs(messages):
        demo_word, demo_code = inputs.get(INPUT_FIELD), outputs.get(OUTPUT_FIELD)
        if demo_word is None or demo_code is None:
            continue  # a demo of another task: no help, no harm
        if demo_code.strip() == code_for(demo_word):
            good += 1
            if demo_word.strip() == word.strip():
                copied = demo_code.strip()
        else:
            wrong += 1
    hinted = KEY_PHRASE in _SPACES.sub(" ", system.lower())
    return Context(good, wrong, hinted), copied


def is_task(field_names: list[str], field_types: list[str], inputs: Mapping[str, str]) -> bool:
    """`word -> code` (or `word -> reasoning, code`): the only prompts answered by the rule."""
    if set(inputs) != {INPUT_FIELD} or OUTPUT_FIELD not in field_names:
        return False
    if not set(field_names) <= {OUTPUT_FIELD, REASONING_FIELD} or len(set(field_names)) != len(field_names):
        return False
    return dict(zip(field_names, field_types))[OUTPUT_FIELD] == "str"


def mentions_task(text: str) -> bool:
    return bool(_MENTIONS_WORD.search(text) and _MENTIONS_CODE.search(text))


def _digest(messages: list[Mapping[str, Any]]) -> int:
    h = hashlib.sha256(b"proposal")
    for message in messages:
        h.update(str(message.get("role", "")).encode() + b"\0" + _text(message).encode("utf-8", "surrogatepass") + b"\1")
    return int.from_bytes(h.digest()[:8], "big")


def proposed_instruction(messages: list[Mapping[str, Any]]) -> str:
    """About half of the proposals (by conversation digest) carry the key phrase."""
    return HINTED_INSTRUCTION if _digest(messages) % 2 == 0 else GENERIC_INSTRUCTION


# --- answering ---------------------------------------------------------------


def field_values(messages: list[Mapping[str, Any]], system: str, fields: list[Any],
                 inputs: Mapping[str, str]) -> dict[str, Any] | None:
    """Values for a DSPy prompt of this family (fields: name and type_name each), or None for any other prompt.

    Fields this family does not decide (`reasoning`, SIMBA's `discussion`) are
    left out: the caller fills them as it does for any prompt.
    """
    names = [f.name for f in fields]
    types = [f.type_name for f in fields]
    if is_task(names, types, inputs):
        word = inputs[INPUT_FIELD]
        context, copied = read_context(messages, system, word)
        return {OUTPUT_FIELD: solve(word, context, copied)}
    asks = set(names) & (_INSTRUCTION_FIELDS | {_ADVICE_FIELD})
    if not asks:
        return None
    last_user = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    if not mentions_task(last_user):
        return None
    instruction = proposed_instruction(messages)
    values: dict[str, Any] = {}
    for field in fields:
        if field.name in _INSTRUCTION_FIELDS and field.type_name == "str":
            values[field.name] = instruction
        elif field.name == _PREFIX_FIELD and field.type_name == "str":
            values[field.name] = OUTPUT_PREFIX
        elif field.name == _ADVICE_FIELD and field.type_name.startswith("dict"):
            values[field.name] = {name: instruction for name in _module_names(inputs)}
    return values or None


def _module_names(inputs: Mapping[str, str]) -> list[str]:
    try:
        names = json.loads(inputs.get("module_names", "[]"))
    except ValueError:
        names = []
    names = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    return names or ["self"]


def plain_reply(messages: list[Mapping[str, Any]], last_user: str) -> str | None:
    """GEPA's reflection prompt (a plain chat asking for a new instruction about this task), else None."""
    if _PLAIN_ASK not in last_user.lower() or not mentions_task(last_user):
        return None
    return f"```\n{proposed_instruction(messages)}\n```"
