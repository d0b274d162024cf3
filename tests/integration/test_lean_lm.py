"""The LM engines against the real simulated LM: lean (pool/lean_lm.py), DSPy's lm15 and LiteLLM.

One simulated LM process for the module, at 0 ms; each engine is built the way a worker builds it
(lms.build_lm with --lm-engine) and its faults are switched through the sim's admin API. What the
sim records (requests, outcomes, open connections) is what the provider saw.
"""

from __future__ import annotations

import asyncio
import gzip
import os

import dspy
import pytest
import pytest_asyncio

from dspy_pool.errors import ErrorKind
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool import failures, lms
from dspy_pool.pool.lean_lm import LeanLM, http_error
from dspy_pool.simlm.process import start_sim_lm

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(60)]

ENGINES = ("lean", "lm15", "litellm")
NO_FAULTS = dict(error_rate=0.0, rate_limit_rate=0.0, hang_rate=0.0, malformed_rate=0.0, disconnect_rate=0.0,
                 auth_error_rate=0.0, bad_request_rate=0.0, latency="fixed:0", retry_after_s=1)
TIMEOUT_S = 0.5  # --lm-timeout-s for every engine here: a hang ends in half a second


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sim():
    process = await start_sim_lm("--latency", "fixed:0")
    try:
        yield process
    finally:
        await process.stop()


@pytest_asyncio.fixture(loop_scope="module")
async def faults(sim):
    """Sets the sim's faults for one test and clears them after it."""

    async def set_faults(**changes):
        await sim.set_faults(**{**NO_FAULTS, **changes})

    yield set_faults
    await sim.set_faults(**NO_FAULTS)


def build(sim, engine: str, **config) -> object:
    settings = dict(lm="openai/sim", lm_api_base=sim.api_base, lm_api_key="sim-key", lm_engine=engine, lm_timeout_s=TIMEOUT_S)
    return lms.build_lm(wire.ZygoteConfig(**{**settings, **config}))


@pytest.fixture(scope="module")
def engines(sim):
    return {engine: build(sim, engine) for engine in ENGINES}


async def run(lm, module, **inputs):
    with dspy.context(lm=lm, track_usage=True):
        return await module.acall(**inputs)


def classify(exc: BaseException) -> ErrorKind:
    return failures.classify(exc)


# -- choosing the engine --------------------------------------------------------------------------------


async def test_auto_picks_lean_for_openai_compatible_endpoints_and_dspy_for_the_rest(monkeypatch):
    """auto: lean for openai/... (the sim included) and OpenAI-dialect providers with an api_base; DSPy's own choice otherwise."""
    for name in ("OPENAI_BASE_URL", "OPENAI_API_BASE", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    base = "http://127.0.0.1:9/v1"
    assert lms.choose_engine("openai/sim", base, "auto") == "lean"
    assert lms.choose_engine("openai/gpt-4o-mini", "", "auto") == "lean"
    assert lms.choose_engine("hosted_vllm/llama", base, "auto") == "lean"
    assert lms.choose_engine("hosted_vllm/llama", "", "auto") == "dspy"
    assert lms.choose_engine("anthropic/claude-3-5-haiku-latest", "", "auto") == "dspy"
    assert lms.choose_engine("openai/sim", base, "") == "dspy"  # a ZygoteConfig that names no engine: as before
    assert [lms.choose_engine("anthropic/x", "", engine) for engine in ENGINES] == list(ENGINES)
    monkeypatch.setenv("OPENAI_BASE_URL", "http://gateway.internal/v1")  # DSPy would send openai/ calls there
    assert lms.choose_engine("openai/gpt-4o-mini", "", "auto") == "dspy"
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")  # lean connects directly: leave proxied endpoints to DSPy
    assert lms.choose_engine("openai/sim", "http://10.1.2.3:8000/v1", "auto") == "dspy"


async def test_each_engine_is_built_as_asked(engines):
    """lean is a LeanLM (a dspy.BaseLM); lm15 and litellm are dspy.LM with that engine."""
    assert isinstance(engines["lean"], LeanLM) and isinstance(engines["lean"], dspy.BaseLM)
    assert engines["lm15"].engine == "lm15" and engines["litellm"].engine == "litellm"


# -- answers and usage ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["predict", "chain_of_thought"])
async def test_answers_are_identical_across_engines(engines, kind):
    """The same prompt gets the same answer, field by field, from all three engines."""
    def module():
        return dspy.Predict("question -> answer") if kind == "predict" else dspy.ChainOfThought("question -> answer: int")

    answers = {engine: dict((await run(lm, module(), question="What is 6 times 7?")).items()) for engine, lm in engines.items()}
    assert answers["lean"] and answers["lean"] == answers["lm15"] == answers["litellm"]


async def test_usage_is_reported_as_dspy_engines_report_it(engines, sim):
    """Prompt, completion and total tokens reach DSPy's usage tracker, equal across engines; one request each."""
    usage = {}
    for engine, lm in engines.items():
        before = (await sim.stats())["requests"]
        prediction = await run(lm, dspy.Predict("question -> answer"), question="How many tokens is this?")
        assert (await sim.stats())["requests"] - before == 1
        totals = prediction.get_lm_usage()["openai/sim"]
        usage[engine] = {key: totals[key] for key in ("prompt_tokens", "completion_tokens", "total_tokens")}
    assert usage["lean"]["total_tokens"] > 0
    assert usage["lean"] == usage["lm15"] == usage["litellm"]


async def test_sync_calls_get_the_async_answer(engines):
    """A sync module call (a thread, as a worker runs sync programs) gets what acall gets."""
    lean = engines["lean"]
    predict = dspy.Predict("question -> answer")

    def call_sync():
        with dspy.context(lm=lean):
            return predict(question="sync or async?").answer

    assert await asyncio.to_thread(call_sync) == (await run(lean, predict, question="sync or async?")).answer
    assert (await asyncio.to_thread(lean, "hello"))[0] == (await lean.acall("hello"))[0]


async def test_the_response_cache_answers_repeats_without_a_request(sim):
    """With lm_cache_entries, a repeated prompt is answered from DSPy's cache: no request, no usage."""
    saved = dspy.cache
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True, memory_max_entries=100)
    try:
        lean = build(sim, "lean", lm_cache_entries=100)
        first = await run(lean, dspy.Predict("question -> answer"), question="cache me")
        before = (await sim.stats())["requests"]
        again = await run(lean, dspy.Predict("question -> answer"), question="cache me")
        assert (await sim.stats())["requests"] == before
        assert again.answer == first.answer and not again.get_lm_usage()
    finally:
        dspy.cache = saved


# -- faults -----------------------------------------------------------------------------------------------

# What each engine's error becomes; LiteLLM reports a dropped connection as a server error.
FAULTS = {
    "auth_error_rate": ("LMAuthError", ErrorKind.LM_AUTH),
    "rate_limit_rate": ("LMRateLimitError", ErrorKind.LM_RATE_LIMITED),
    "error_rate": ("LMServerError", ErrorKind.LM_ERROR),
    "hang_rate": (None, ErrorKind.LM_TIMEOUT),
    "disconnect_rate": ("LMTransportError", ErrorKind.LM_CONNECTION),
    "malformed_rate": ("AdapterParseError", ErrorKind.LM_MALFORMED_OUTPUT),
    "bad_request_rate": ("ContextWindowExceededError", ErrorKind.LM_BAD_REQUEST),
}
LITELLM_DIFFERS = {"disconnect_rate": ("LMServerError", ErrorKind.LM_ERROR)}


@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("engine", ENGINES)
async def test_each_fault_raises_the_typed_error_failures_classifies(engines, faults, engine, fault):
    """401, 429, 500, hang, disconnect, malformed output and an over-long prompt: DSPy's typed error, the right kind."""
    error_type, kind = (LITELLM_DIFFERS if engine == "litellm" else {}).get(fault, FAULTS[fault])
    await faults(**{fault: 1.0})
    with pytest.raises(Exception) as caught:
        await run(engines[engine], dspy.Predict("question -> answer"), question="will this fail?")
    if error_type is not None:
        assert type(caught.value).__name__ == error_type
    assert classify(caught.value) is kind
    if fault == "rate_limit_rate" and engine != "litellm":
        assert caught.value.retry_after == 1.0  # the sim's Retry-After header


async def test_lean_retries_what_dspy_retries(sim, faults):
    """With num_retries=2 a 429 is sent three times and a 401 once, by lean as by DSPy's lm15 engine."""
    await faults(retry_after_s=0)
    sent = {}
    for engine in ("lean", "lm15"):
        lm = build(sim, engine, lm_num_retries=2)
        for fault in ("rate_limit_rate", "auth_error_rate"):
            await faults(**{fault: 1.0}, retry_after_s=0)
            before = (await sim.stats())["requests"]
            with pytest.raises(dspy.LMError):
                await run(lm, dspy.Predict("question -> answer"), question="again?")
            sent[engine, fault] = (await sim.stats())["requests"] - before
    assert sent == {("lean", "rate_limit_rate"): 3, ("lean", "auth_error_rate"): 1,
                    ("lm15", "rate_limit_rate"): 3, ("lm15", "auth_error_rate"): 1}


# -- cancellation and concurrency --------------------------------------------------------------------------


async def wait_for(predicate, timeout_s: float = 5.0):
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        value = await predicate()
        if value or asyncio.get_running_loop().time() > deadline:
            return value
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("engine", ENGINES)
async def test_cancelling_an_in_flight_call_closes_its_request(sim, faults, engine):
    """Cancelling the await of a hung call closes its connection: the sim sees it go at once."""
    lm = build(sim, engine, lm_timeout_s=30.0)
    await run(lm, dspy.Predict("question -> answer"), question="warm")  # a pooled connection, as in steady state
    await faults(hang_rate=1.0)
    before = await sim.stats()
    task = asyncio.ensure_future(run(lm, dspy.Predict("question -> answer"), question="are you there?"))

    async def hung():
        return (await sim.stats())["by_outcome"]["hang"] > before["by_outcome"]["hang"]

    assert await wait_for(hung)
    during = (await sim.stats())["open_connections"]
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    async def closed():
        return (await sim.stats())["open_connections"] < during

    assert await wait_for(closed, 2.0)
    if engine == "lean":
        assert lm.pool_stats()["open"] == 0  # the aborted connection gave its slot back


@pytest.mark.parametrize("engine", ENGINES)
async def test_64_concurrent_calls_share_one_pool(sim, faults, engine):
    """64 calls at once all answer; lean's one pool opens 64 connections once and reuses them for the next 64."""
    await faults(latency="fixed:50")
    lm = build(sim, engine, lm_timeout_s=30.0)  # 64 connections at once to one sim on a loaded machine: not the short test timeout
    predict = dspy.Predict("question -> answer")
    for burst in range(2):
        answers = await asyncio.gather(*(run(lm, predict, question=f"q{burst}-{i}") for i in range(64)))
        assert all(answer.answer for answer in answers)
    if engine == "lean":
        stats = lm.pool_stats()
        assert stats["connections_made"] == 64 and stats["idle"] == 64
        await lm.aclose()


async def test_connections_are_made_after_fork_never_before(engines):
    """Building a lean LM (the zygote does) opens nothing; a forked child drops whatever pools its parent held."""
    from dspy_pool.pool import lean_lm

    lean = engines["lean"]
    fresh = lean_lm.LeanLM("openai/sim", api_base=lean.api_base, api_key="sim-key")
    assert fresh._clients.pools == {}
    await fresh.acall("hello")
    assert fresh.pool_stats()["connections_made"] == 1
    lean_lm._after_fork_in_child()  # what os.fork runs in the child
    assert fresh._clients.pools == {} and lean._clients.pools == {}
    await fresh.acall("hello")  # the child's own first call: its own pool, its own connection
    assert fresh.pool_stats()["connections_made"] == 1


# -- HTTP framing the sim does not use ------------------------------------------------------------------------

_COMPLETION = (b'{"id":"x","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant",'
               b'"content":"framed"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}')


def _responses():
    gzipped = gzip.compress(_COMPLETION)
    chunked = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(part), part) for part in (_COMPLETION[:7], _COMPLETION[7:]))
    return {
        "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked + b"0\r\nX-Trailer: 1\r\n\r\n",
        "interim": b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(_COMPLETION) + _COMPLETION,
        "gzip": b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(gzipped) + gzipped,
        "close": b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + _COMPLETION,
    }


async def test_lean_reads_chunked_interim_gzip_and_close_delimited_answers():
    """Each framing an OpenAI-compatible server may use is read to the same answer; a close-delimited one is not reused."""
    responses = _responses()
    seen = []

    async def serve(reader, writer):
        try:
            while True:  # keep-alive until the client closes, or the framing ends the connection
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
                await reader.readexactly(length)
                framing = head.split(b" ")[1].decode().split("/")[1]
                seen.append(framing)
                writer.write(responses[framing])
                await writer.drain()
                if framing == "close":
                    break
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        for framing in responses:
            lm = LeanLM("openai/m", api_base=f"http://127.0.0.1:{port}/{framing}", api_key="k")
            assert await lm.acall("hi") == ["framed"]
            assert lm.pool_stats()["idle"] == (0 if framing == "close" else 1)  # a close-delimited body ends its connection
            await lm.aclose()
    finally:
        server.close()
    assert seen == list(responses)


async def test_http_errors_map_as_dspy_maps_openai_errors():
    """Status and the OpenAI error body decide the type; vLLM's top-level error shape and Retry-After dates are read."""
    def error(status, body=b"", headers=None):
        return http_error(status, body, headers or {}, model="openai/m", provider="openai")

    assert type(error(403)).__name__ == "LMAuthError"
    assert type(error(402)).__name__ == "LMBillingError"
    assert type(error(429, b'{"error":{"code":"insufficient_quota","message":"pay"}}')).__name__ == "LMBillingError"
    assert error(429, headers={"retry-after-ms": "1500"}).retry_after == 1.5
    assert error(429, headers={"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}).retry_after == 0.0
    assert type(error(400, b'{"object":"error","message":"This model\'s maximum context length is 4096 tokens","code":400}')
                ).__name__ == "ContextWindowExceededError"
    assert type(error(404, b'{"error":{"message":"The model `x` does not exist","code":"model_not_found"}}')
                ).__name__ == "LMUnsupportedModelError"
    assert type(error(422)).__name__ == "LMInvalidRequestError"
    assert type(error(504)).__name__ == "LMTimeoutError"
    assert type(error(503, b"<html>upstream</html>")).__name__ == "LMServerError"
    assert classify(error(404, b'{"error":{"code":"model_not_found","message":"no model"}}')) is ErrorKind.LM_AUTH
