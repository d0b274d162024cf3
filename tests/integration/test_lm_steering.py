"""Clients cannot steer the LM: its endpoint, model, key and headers are the operator's alone (issue 9).

Every vector a spec offers (module options, LM options, saved state, fallback
names, an input DSPy reads as call settings) is tried against a real server
while a loopback listener stands where an attacker's endpoint would be: each
must be refused with INVALID_ARGUMENT and the listener must see nothing. The
operator's key must not reach the log through printed worker or zygote output.
"""

import asyncio
import json

import dspy
import grpc
import pytest
import pytest_asyncio
from structlog.testing import capture_logs

from dspy_pool.simlm.server import SimLMServer
from dspy_pool.v1 import dspy_pool_pb2 as pb
from tests.fixtures.operator_kinds import KEY

from .harness import CHAOS, eventually, execute_request, register, running_app

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(120)]

OPERATOR_KINDS = "tests.fixtures.operator_kinds"


class Listener:
    """A plain asyncio server on 127.0.0.1 that records every connection (its first bytes) and hangs up."""

    def __init__(self) -> None:
        self.connections: list[bytes] = []
        self.server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.connections.append(await asyncio.wait_for(reader.read(4096), 2.0))
        except (asyncio.TimeoutError, ConnectionError):
            self.connections.append(b"")
        writer.close()

    async def stop(self) -> None:
        self.server.close()
        await self.server.wait_closed()


class RecordingLM(SimLMServer):
    """The simulated LM as the operator's own endpoint, keeping each chat request's headers and body."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[dict, dict]] = []

    async def _chat(self, request, reader, writer):
        self.requests.append((dict(request.headers), json.loads(request.body)))
        return await super()._chat(request, reader, writer)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def attacker():
    listener = Listener()
    await listener.start()
    yield listener
    await listener.stop()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(attacker):
    """lm="sim" with the operator's fake key; every log line is captured from start-up on."""
    with capture_logs() as logs:
        async with running_app(workers=1, lm_api_key=KEY, programs=(CHAOS, OPERATOR_KINDS),
                               fallback_lms=("openai/backup",)) as (app, stub, _):
            yield app, stub, logs


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def recorded():
    """The operator's endpoint is a recording simulated LM: what reaches the LM can be read back."""
    lm = RecordingLM()
    port = await lm.start()
    async with running_app(workers=1, lm="openai/sim", lm_api_base=f"http://127.0.0.1:{port}/v1", lm_api_key=KEY,
                           programs=(CHAOS, OPERATOR_KINDS)) as (app, stub, _):
        yield lm, stub
    await lm.stop()


def _state(module: dspy.Module, **extra) -> str:
    state = module.dump_state()
    state.update(extra)
    return json.dumps(state)


def _lm_state(url: str) -> str:
    predict = dspy.Predict("question -> answer")
    predict.lm = dspy.LM("openai/evil", api_base=url, api_key="client-key", extra_headers={"X-Client": "1"})
    return _state(predict)


def _nested_lm_state(url: str) -> str:
    cot = dspy.ChainOfThought("question -> answer")
    cot.predict.lm = dspy.LM("openai/evil", api_base=url, api_key="client-key")
    return _state(cot)


# Each vector: spec fields given the attacker's URL, and the inputs a call would send.
VECTORS = {
    "module_options.api_base": lambda url: dict(module_options={"api_base": url}),
    "module_options.base_url": lambda url: dict(module_options={"base_url": url}),
    "module_options.model": lambda url: dict(module_options={"model": "openai/evil"}),
    "module_options.api_key": lambda url: dict(module_options={"api_key": "client-key"}),
    "module_options.extra_headers": lambda url: dict(module_options={"extra_headers": {"X-Client": "1"}}),
    "module_options.headers": lambda url: dict(module_options={"headers": {"Authorization": "Bearer client"}}),
    "lm_options.api_base": lambda url: dict(lm_options={"api_base": url}),
    "lm_options.model": lambda url: dict(lm_options={"model": "openai/evil"}),
    "lm_options.not_allow_listed": lambda url: dict(lm_options={"logit_bias": {"50256": -100}}),
    "state_json.lm": lambda url: dict(state_json=_lm_state(url)),
    "state_json.config": lambda url: dict(state_json=_state(dspy.Predict("question -> answer"), config={"api_base": url})),
    "state_json.nested_lm": lambda url: dict(module="chain_of_thought", state_json=_nested_lm_state(url)),
    "fallback.lm_api_base": lambda url: dict(fallback=pb.FallbackSpec(chain=["lm"], lm="openai/backup", lm_api_base=url)),
    "fallback.lm_not_allow_listed": lambda url: dict(fallback=pb.FallbackSpec(chain=["lm"], lm="openai/evil")),
    "input_named_config": lambda url: dict(signature="config -> answer"),
}


def _spec(name: str, fields: dict) -> pb.ProgramSpec:
    spec = pb.ProgramSpec(name=name, signature=fields.pop("signature", "question -> answer"), module=fields.pop("module", ""))
    for struct_field in ("module_options", "lm_options"):
        if struct_field in fields:
            getattr(spec, struct_field).update(fields.pop(struct_field))
    if "fallback" in fields:
        spec.fallback.CopyFrom(fields.pop("fallback"))
    spec.state_json = fields.pop("state_json", "")
    return spec


@pytest.mark.parametrize("vector", sorted(VECTORS))
async def test_a_client_cannot_steer_the_lm(server, attacker, vector):
    """Each steering vector is refused with INVALID_ARGUMENT, and nothing reaches the attacker's listener."""
    _, stub, _ = server
    spec = _spec(f"steer-{vector.replace('.', '-')}", VECTORS[vector](attacker.url))
    before = len(attacker.connections)
    try:
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
        code = grpc.StatusCode.OK
        inputs = {"config": {"api_base": attacker.url}} if "config" in spec.signature else {"question": "steer?"}
        try:  # registered: show where its calls go
            await stub.Execute(execute_request(spec.name, **inputs), timeout=20)
        except grpc.aio.AioRpcError:
            pass
    except grpc.aio.AioRpcError as error:
        code = error.code()
    await asyncio.sleep(0.2)  # a connection in flight would land by now
    assert attacker.connections[before:] == []
    assert code == grpc.StatusCode.INVALID_ARGUMENT


async def test_refusals_name_the_option(server):
    """The refusal names the offending option, so the client can see what it may not set."""
    _, stub, _ = server
    spec = pb.ProgramSpec(name="names-the-option", signature="question -> answer")
    spec.module_options.update({"api_base": "http://127.0.0.1:9/v1"})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'api_base'" in caught.value.details()


async def test_an_allow_listed_lm_option_reaches_the_lm(recorded):
    """temperature within the operator's bounds is accepted and sent, with the operator's key, to the operator's endpoint."""
    lm, stub = recorded
    spec = pb.ProgramSpec(name="warm", signature="question -> answer")
    spec.lm_options.update({"temperature": 0.7, "max_tokens": 256})
    await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
    lm.requests.clear()
    await stub.Execute(execute_request("warm", question="how warm?"), timeout=20)
    headers, body = lm.requests[-1]
    assert body["temperature"] == 0.7
    assert body.get("max_completion_tokens", body.get("max_tokens")) == 256  # OpenAI's newer name, as DSPy sends it
    assert headers["authorization"] == f"Bearer {KEY}"


async def test_an_lm_option_out_of_bounds_is_invalid(recorded):
    """temperature above the allow-listed maximum is refused, naming the option."""
    _, stub = recorded
    spec = pb.ProgramSpec(name="too-hot", signature="question -> answer")
    spec.lm_options.update({"temperature": 5})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'temperature'" in caught.value.details()


async def test_an_unknown_module_option_is_refused_and_loads_no_litellm(recorded):
    """{"foo": 1} on predict is INVALID_ARGUMENT, and allow-listed calls stay on DSPy's native engine (no LiteLLM import)."""
    _, stub = recorded
    spec = pb.ProgramSpec(name="foo", signature="question -> answer")
    spec.module_options.update({"foo": 1})
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=spec), timeout=30)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'foo'" in caught.value.details()
    hot = pb.ProgramSpec(name="native", signature="question -> answer")
    hot.lm_options.update({"temperature": 1.5, "top_p": 0.5, "n": 1})
    await stub.RegisterProgram(pb.RegisterProgramRequest(spec=hot), timeout=30)
    await stub.Execute(execute_request("native", question="native?"), timeout=20)
    await register(stub, "probe", "tag -> litellm_loaded", "reports_litellm")
    response = await stub.Execute(execute_request("probe", tag="after"), timeout=20)
    assert response.outputs["litellm_loaded"] is False


async def test_worker_output_never_shows_the_key(server):
    """A key that operator code prints on stdout or stderr is scrubbed before it is logged."""
    _, stub, logs = server
    await register(stub, "prints-key", "question -> answer", "prints_key")
    await stub.Execute(execute_request("prints-key", question="debug?"), timeout=20)
    printed = lambda: [e for e in logs if e["event"] == "worker_output" and "calling the LM with key" in e["line"]]  # noqa: E731
    await eventually(lambda: {e["stream"] for e in printed()} == {"stdout", "stderr"})
    assert all("[redacted]" in e["line"] for e in printed())
    assert KEY not in str(logs)


async def test_zygote_output_never_shows_the_key(server):
    """A key an operator module prints while the zygote imports it is scrubbed before it is logged."""
    _, _, logs = server
    imported = lambda: [e for e in logs if e["event"] == "zygote_output" and "operator module imported" in e["line"]]  # noqa: E731
    await eventually(imported)
    assert "[redacted]" in imported()[0]["line"]
    assert KEY not in str(logs)
