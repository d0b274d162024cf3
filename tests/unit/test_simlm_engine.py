"""The in-process simulated LM (`--lm dummy`) behind real DSPy modules."""

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")

import dspy
import pytest

from dspy_pool.simlm.engine import make_dummy_lm


class Typed(dspy.Signature):
    """Answer with typed fields."""

    question: str = dspy.InputField()
    answer: int = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    ok: bool = dspy.OutputField()


@pytest.fixture(scope="module")
def lm():
    return make_dummy_lm()


def test_predict_sync_returns_typed_outputs(lm):
    """Predict parses int, list[str] and bool outputs from the engine's answer."""
    with dspy.context(lm=lm):
        out = dspy.Predict(Typed)(question="how many?")
    assert isinstance(out.answer, int) and isinstance(out.ok, bool)
    assert isinstance(out.tags, list) and all(isinstance(t, str) for t in out.tags)


async def test_chain_of_thought_async_returns_typed_outputs(lm):
    """ChainOfThought via acall adds a str reasoning and keeps typed outputs."""
    with dspy.context(lm=lm):
        out = await dspy.ChainOfThought(Typed).acall(question="why?")
    assert out.reasoning.startswith("sim answer ")
    assert isinstance(out.answer, int)


def test_sync_and_async_agree(lm):
    """The sync and async engines give the same prediction for the same inputs."""
    import asyncio

    with dspy.context(lm=lm):
        sync = dspy.Predict(Typed)(question="same")
        async_ = asyncio.run(dspy.Predict(Typed).acall(question="same"))
    assert sync.toDict() == async_.toDict()


def test_echo_round_trips_unicode(lm):
    """A SIM_ECHO input comes back verbatim through DSPy's parsing."""
    value = "SIM_ECHO ✓ ünïcode 🎉\nline two"
    with dspy.context(lm=lm):
        assert dspy.Predict("question -> answer")(question=value).answer == value


def test_json_adapter_works(lm):
    """JSONAdapter prompts are answered with JSON the adapter parses."""
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        out = dspy.Predict(Typed)(question="json please")
    assert isinstance(out.answer, int) and isinstance(out.tags, list)


def test_usage_is_reported(lm):
    """The engine reports token usage, which DSPy tracks when asked."""
    with dspy.context(lm=lm, track_usage=True):
        out = dspy.Predict("question -> answer")(question="count my tokens")
    usage = next(iter(out.get_lm_usage().values()))
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0


async def test_streamify_emits_word_chunks(lm):
    """Streaming through the engine yields the answer field word by word, then the prediction."""
    listener = dspy.streaming.StreamListener(signature_field_name="answer")
    with dspy.context(lm=lm):
        program = dspy.streamify(dspy.Predict("question -> answer"), stream_listeners=[listener])
        chunks = [c async for c in program(question="SIM_ECHO stream me")]
    text = "".join(c.chunk for c in chunks if isinstance(c, dspy.streaming.StreamResponse))
    assert text == "SIM_ECHO stream me"
    assert chunks[-1].answer == "SIM_ECHO stream me"
