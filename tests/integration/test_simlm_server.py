"""The simulated LM over real HTTP: DSPy programs against it, faults, and the HTTP edge cases."""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "true")

import dspy
import pytest
import structlog
from dspy.utils.exceptions import AdapterParseError, LMRateLimitError, LMServerError, LMTransportError

from dspy_pool.simlm.faults import FaultConfig
from dspy_pool.simlm.server import SimLMServer

pytestmark = pytest.mark.timeout(30)

CHAT = {"model": "sim", "messages": [{"role": "user", "content": "hello"}]}


class Typed(dspy.Signature):
    """Answer with typed fields."""

    question: str = dspy.InputField()
    answer: int = dspy.OutputField()
    tags: list[str] = dspy.OutputField()
    ok: bool = dspy.OutputField()


@pytest.fixture
async def server():
    sim = SimLMServer(FaultConfig(), seed=1)
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
def lm(server):
    # One LM per test: lm15's async connection pool belongs to the loop that first used it.
    return make_lm(server.port)


def make_lm(port, **options):
    return dspy.LM("openai/sim", api_base=f"http://127.0.0.1:{port}/v1", api_key="sk-test", cache=False,
                   num_retries=0, **options)


async def http(port, method, path, body=b"", headers=()):
    """One request on a fresh connection with Connection: close; returns (status, headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if isinstance(body, (dict, list)):
        body = json.dumps(body).encode()
    head = [f"{method} {path} HTTP/1.1", "Host: sim", "Connection: close", f"Content-Length: {len(body)}", *headers]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    raw = await reader.read()
    writer.close()
    return parse_response(raw)


def parse_response(raw):
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, payload


async def read_response(reader):
    """One Content-Length response from a keep-alive connection."""
    head = await reader.readuntil(b"\r\n\r\n")
    status, headers, _ = parse_response(head)
    return status, headers, await reader.readexactly(int(headers["content-length"]))


async def set_faults(port, **faults):
    status, _, body = await http(port, "POST", "/admin/faults", faults)
    assert status == 200, body
    return json.loads(body)


async def stats(port):
    return json.loads((await http(port, "GET", "/admin/stats"))[2])


# --- DSPy against the server ---


async def test_predict_returns_typed_outputs(lm):
    """Predict over HTTP parses int, list[str] and bool outputs."""
    with dspy.context(lm=lm):
        out = await dspy.Predict(Typed).acall(question="how many?")
    assert isinstance(out.answer, int) and isinstance(out.ok, bool)
    assert isinstance(out.tags, list) and all(isinstance(t, str) for t in out.tags)


async def test_chain_of_thought_returns_reasoning_and_typed_answer(lm):
    """ChainOfThought over HTTP yields a reasoning sentence and an int answer."""
    with dspy.context(lm=lm):
        out = await dspy.ChainOfThought(Typed).acall(question="why?")
    assert out.reasoning.startswith("sim answer ") and isinstance(out.answer, int)


async def test_sync_call_from_a_thread(lm):
    """The sync DSPy path (lm15's blocking transport) works too."""

    def call():
        with dspy.context(lm=lm):
            return dspy.Predict(Typed)(question="sync")

    assert isinstance((await asyncio.to_thread(call)).answer, int)


async def test_echo_round_trips_unicode(lm):
    """A SIM_ECHO value survives JSON, HTTP and DSPy parsing unchanged."""
    value = "SIM_ECHO ✓ ünïcode 🎉 \"quoted\"\nsecond line"
    with dspy.context(lm=lm):
        out = await dspy.Predict("question -> answer").acall(question=value)
    assert out.answer == value


async def test_error_500_raises_server_error(server, lm):
    """An injected 500 surfaces as DSPy's LMServerError."""
    await set_faults(server.port, error_rate=1.0)
    with dspy.context(lm=lm), pytest.raises(LMServerError):
        await dspy.Predict(Typed).acall(question="x")


async def test_rate_limit_429_raises_rate_limit_error(server, lm):
    """An injected 429 surfaces as DSPy's LMRateLimitError."""
    await set_faults(server.port, rate_limit_rate=1.0)
    with dspy.context(lm=lm), pytest.raises(LMRateLimitError):
        await dspy.Predict(Typed).acall(question="x")


async def test_malformed_raises_parse_error_after_json_fallback(server, lm):
    """Malformed text fails ChatAdapter, then its JSONAdapter fallback: two requests, one parse error."""
    await set_faults(server.port, malformed_rate=1.0)
    with dspy.context(lm=lm), pytest.raises(AdapterParseError):
        await dspy.Predict(Typed).acall(question="x")
    assert (await stats(server.port))["by_outcome"]["malformed"] == 2


async def test_disconnect_raises_transport_error(server, lm):
    """A dropped connection surfaces as DSPy's LMTransportError."""
    await set_faults(server.port, disconnect_rate=1.0)
    with dspy.context(lm=lm), pytest.raises(LMTransportError):
        await dspy.Predict(Typed).acall(question="x")


async def test_hang_is_bounded_by_client_timeout(server):
    """A hung request never answers; the client's read timeout ends it."""
    await set_faults(server.port, hang_rate=1.0)
    start = time.monotonic()
    with dspy.context(lm=make_lm(server.port, timeout=0.3)), pytest.raises(LMTransportError, match="timed out"):
        await dspy.Predict(Typed).acall(question="x")
    assert time.monotonic() - start >= 0.3
    assert (await stats(server.port))["by_outcome"]["hang"] == 1


async def test_stop_ends_hung_connections():
    """stop() closes hung connections and leaves no connection task behind."""
    sim = SimLMServer(FaultConfig(hang_rate=1.0))
    port = await sim.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = json.dumps(CHAT).encode()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    while sim.stats()["requests"] == 0:
        await asyncio.sleep(0.01)
    await asyncio.wait_for(sim.stop(), 5)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert sim.stats()["open_connections"] == 0
    writer.close()


async def test_latency_delays_answers(server, lm):
    """Configured latency is applied before the answer."""
    await set_faults(server.port, latency="fixed:150")
    start = time.monotonic()
    with dspy.context(lm=lm):
        await dspy.Predict(Typed).acall(question="slow")
    assert time.monotonic() - start >= 0.15


async def test_stats_count_requests_by_outcome(server, lm):
    """Stats count chat requests in total and by outcome, and reset to zero."""
    with dspy.context(lm=lm):
        for i in range(3):
            await dspy.Predict(Typed).acall(question=f"q{i}")
    counts = await stats(server.port)
    assert counts["requests"] == 3 and counts["by_outcome"]["ok"] == 3
    await http(server.port, "POST", "/admin/stats/reset")
    assert (await stats(server.port))["requests"] == 0


async def test_dspy_reuses_one_keep_alive_connection(server, lm):
    """Sequential DSPy calls share one keep-alive connection."""
    with dspy.context(lm=lm):
        for i in range(20):
            await dspy.Predict(Typed).acall(question=f"q{i}")
    assert server.stats()["connections_total"] == 1


async def test_200_concurrent_requests_complete(server, lm):
    """200 concurrent DSPy calls all complete with distinct answers."""
    predict = dspy.Predict("question -> answer")
    with dspy.context(lm=lm):
        outs = await asyncio.gather(*(predict.acall(question=f"q{i}") for i in range(200)))
    assert len({o.answer for o in outs}) == 200
    assert server.stats()["by_outcome"]["ok"] == 200


async def test_dspy_streaming_over_sse(lm):
    """DSPy's streamify over the server's SSE yields the answer field word by word."""
    listener = dspy.streaming.StreamListener(signature_field_name="answer")
    with dspy.context(lm=lm):
        program = dspy.streamify(dspy.Predict("question -> answer"), stream_listeners=[listener])
        chunks = [c async for c in program(question="SIM_ECHO stream me")]
    pieces = [c.chunk for c in chunks if isinstance(c, dspy.streaming.StreamResponse)]
    assert len(pieces) > 1 and "".join(pieces) == "SIM_ECHO stream me"


async def test_requests_are_not_logged():
    """Only start and stop are logged, never a request (hot path, and no Authorization header)."""
    with structlog.testing.capture_logs() as logs:
        sim = SimLMServer()
        port = await sim.start()
        await http(port, "POST", "/v1/chat/completions", CHAT, headers=("Authorization: Bearer sk-secret",))
        await sim.stop()
    assert [e["event"] for e in logs] == ["simlm_listening", "simlm_stopped"]


# --- HTTP edge cases ---


async def test_keep_alive_serves_many_sequential_requests(server):
    """One connection carries many requests back to back."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    body = json.dumps(CHAT).encode()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    for _ in range(100):
        writer.write(request)
        status, headers, payload = await read_response(reader)
        assert status == 200 and headers["connection"] == "keep-alive"
    writer.close()
    assert server.stats()["connections_total"] == 1


async def test_pipelined_requests_answered_in_order(server):
    """Requests sent together are answered in order on the same connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health HTTP/1.1\r\n\r\nGET /v1/models HTTP/1.1\r\n\r\n")
    first, second = await read_response(reader), await read_response(reader)
    writer.close()
    assert json.loads(first[2]) == {"status": "ok"} and json.loads(second[2])["object"] == "list"


async def test_connection_close_is_honoured(server):
    """Connection: close gets a closing response and the server ends the connection."""
    status, headers, _ = await http(server.port, "GET", "/health")
    assert status == 200 and headers["connection"] == "close"


async def test_completion_has_openai_shape(server):
    """The response carries id, object, created, model, choices and usage like OpenAI's."""
    status, _, body = await http(server.port, "POST", "/chat/completions", CHAT)
    data = json.loads(body)
    assert status == 200 and data["object"] == "chat.completion" and data["model"] == "sim"
    assert data["choices"][0]["finish_reason"] == "stop" and data["choices"][0]["message"]["content"]
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_chunked_request_body_accepted(server):
    """A chunked request body is reassembled."""
    body = json.dumps(CHAT).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                 + b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (5, body[:5], len(body) - 5, body[5:]))
    status, _, payload = parse_response(await reader.read())
    writer.close()
    assert status == 200 and json.loads(payload)["choices"]


async def test_stream_answers_server_sent_events(server):
    """stream: true answers with SSE chunks that end in [DONE]."""
    status, headers, body = await http(server.port, "POST", "/v1/chat/completions", {**CHAT, "stream": True})
    events = [line[6:] for line in body.decode().split("\n\n") if line.startswith("data: ")]
    assert status == 200 and headers["content-type"] == "text/event-stream"
    assert json.loads(events[0])["choices"][0]["delta"]["content"] and events[-1] == "[DONE]"


async def test_bad_json_is_400(server):
    """A body that is not JSON gets 400 with an OpenAI error object."""
    status, _, body = await http(server.port, "POST", "/v1/chat/completions", b"{not json")
    assert status == 400 and json.loads(body)["error"]["type"] == "invalid_request_error"


async def test_missing_messages_is_400(server):
    """A chat request without messages gets 400."""
    status, _, _ = await http(server.port, "POST", "/v1/chat/completions", {"model": "sim"})
    assert status == 400


async def test_unknown_path_is_404(server):
    """Unknown paths get 404."""
    assert (await http(server.port, "GET", "/v2/nothing"))[0] == 404


async def test_garbage_request_line_is_400(server):
    """A request line that is not HTTP gets 400 and the connection closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"HELLO\r\n\r\n")
    status, _, _ = parse_response(await reader.read())
    writer.close()
    assert status == 400


async def test_rate_limit_sends_retry_after(server):
    """A 429 carries the configured Retry-After header."""
    await set_faults(server.port, rate_limit_rate=1.0, retry_after_s=7)
    status, headers, _ = await http(server.port, "POST", "/v1/chat/completions", CHAT)
    assert status == 429 and headers["retry-after"] == "7"


async def test_admin_faults_rejects_invalid_and_keeps_config(server):
    """An invalid fault patch is a 400 naming the problem; the live config is unchanged."""
    status, _, body = await http(server.port, "POST", "/admin/faults", {"error_rate": 3})
    assert status == 400 and "error_rate" in json.loads(body)["error"]["message"]
    current = json.loads((await http(server.port, "GET", "/admin/faults"))[2])
    assert current == FaultConfig().to_dict()


async def test_admin_faults_merges_patch(server):
    """A fault patch changes only the keys it names and answers the new config."""
    await set_faults(server.port, latency="fixed:1")
    config = await set_faults(server.port, error_rate=0.5)
    assert config["latency"] == "fixed:1" and config["error_rate"] == 0.5


# --- the process entry point ---


def test_main_announces_port_and_exits_cleanly_on_sigterm():
    """`python -m dspy_pool.simlm` prints SIMLM_LISTENING <port>, serves, and exits 0 on SIGTERM."""
    proc = subprocess.Popen([sys.executable, "-m", "dspy_pool.simlm", "--listen", "127.0.0.1:0", "--seed", "3"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        word, port = proc.stdout.readline().split()
        assert word == "SIMLM_LISTENING"
        status, _, _ = asyncio.run(http(int(port), "GET", "/health"))
        assert status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
