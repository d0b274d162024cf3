"""LM client cost per call: lean, lm15 and LiteLLM against the simulated LM, one JSON object.

    python bench/lm_client.py [--rounds 3] [--calls 1500] [--seconds 4] [--no-http]

The simulated LM runs at 0 ms in its own process; this process is the client, on uvloop as a worker
is. Each engine is built as a worker builds it (pool/lms.build_lm with --lm-engine lean|lm15|litellm,
DSPy's cache off) and measured at two levels:
- "lm": lm.acall(messages=...) with the messages a Predict sends (the LM client alone);
- "predict": dspy.Predict("question -> answer").acall(...) with usage tracking, as a worker runs it
  (adapter formatting and parsing included).
each sequentially (1 in flight) and at 64 in flight. A measurement runs --calls calls or --seconds
seconds, whichever ends first. Figures per engine, level and mode, the median (and min/max) over
--rounds rounds, engines in a shuffled order each round:
- cpu_us_per_call: this process's CPU time (all threads) / calls;
- calls_per_s_per_core: 1e6 / cpu_us_per_call, what one core of client CPU carries;
- calls_per_s: calls / wall time (the sim LM shares the machine);
- sim_cpu_us_per_call: the sim LM process's CPU per call, for scale.
"ratios" divides each DSPy engine's CPU per call by lean's (the target: LiteLLM >= 4x lean, lean <= 1.5 ms).

"http_clients" (skipped with --no-http) is how lean's HTTP and JSON libraries were chosen: one POST of
the same chat body and a JSON parse of the answer, per HTTP client (lean's own asyncio.Protocol pool,
aiohttp, httpx, lm15's stdlib transport), sequential and at 64 in flight; and stdlib json against
orjson for that body and answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
import timeit

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch of LiteLLM's price map

import dspy  # noqa: E402
import orjson  # noqa: E402
import psutil  # noqa: E402

from dspy_pool.internal import worker_pb2 as wire  # noqa: E402
from dspy_pool.pool import lms  # noqa: E402
from load_stats import spread  # noqa: E402  (bench/ is sys.path[0] when run as a script)

ENGINES = ("lean", "lm15", "litellm")
LEVELS = ("lm", "predict")
MODES = {"sequential": 1, "concurrent_64": 64}
SIGNATURE = "question -> answer"



def start_sim() -> tuple[subprocess.Popen, int]:
    process = subprocess.Popen([sys.executable, "-m", "dspy_pool.simlm", "--listen", "127.0.0.1:0", "--latency", "fixed:0"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    line = process.stdout.readline()
    if not line.startswith(b"SIMLM_LISTENING "):
        process.kill()
        raise SystemExit(f"the simulated LM did not start: {line!r}")
    return process, int(line.split()[1])


def predict_messages() -> list[dict]:
    """The messages dspy.Predict(SIGNATURE) sends for one question (ChatAdapter)."""
    return dspy.ChatAdapter().format(dspy.Signature(SIGNATURE), demos=[], inputs={"question": "What is the capital of France?"})


async def measure(call, calls: int, seconds: float, in_flight: int, sim: psutil.Process) -> dict:
    """Run `call(i)` up to `calls` times (or for `seconds`) with `in_flight` at once; CPU and wall per call."""
    done = 0
    deadline = 0.0

    async def client() -> None:
        nonlocal done
        while done < calls and time.perf_counter() < deadline:
            number = done
            done += 1
            await call(number)

    sim_before = sum(sim.cpu_times()[:2])
    cpu_before, started = time.process_time(), time.perf_counter()
    deadline = started + seconds
    await asyncio.gather(*(client() for _ in range(in_flight)))
    cpu, wall = time.process_time() - cpu_before, time.perf_counter() - started
    sim_cpu = sum(sim.cpu_times()[:2]) - sim_before
    return {"calls": done, "cpu_us_per_call": cpu / done * 1e6, "calls_per_s": done / wall,
            "sim_cpu_us_per_call": sim_cpu / done * 1e6}


def build(engine: str, api_base: str) -> object:
    config = wire.ZygoteConfig(lm="openai/sim", lm_api_base=api_base, lm_api_key="sim-key", lm_engine=engine, worker_concurrency=64)
    return lms.build_lm(config)


def level_call(level: str, lm: object, messages: list[dict]):
    if level == "lm":
        try:  # call the LM as an adapter does, so DSPy's engines skip their per-call deprecation warning
            from dspy.clients._deprecation import adapter_message_call
        except ImportError:
            adapter_message_call = None

        async def call(number: int) -> None:
            if adapter_message_call is None:
                await lm.acall(messages=messages)
                return
            with adapter_message_call(lm, messages):
                await lm.acall(messages=messages)
        return call
    predict = dspy.Predict(SIGNATURE)

    async def call(number: int) -> None:
        with dspy.context(lm=lm):
            await predict.acall(question=f"What is the capital of country {number}?")
    return call


async def engines_section(api_base: str, sim: psutil.Process, rounds: int, calls: int, seconds: float) -> dict:
    dspy.configure(disable_history=True, track_usage=True)  # as lms.configure sets a worker up
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    messages = predict_messages()
    lms_by_engine = {engine: build(engine, api_base) for engine in ENGINES}
    for engine, lm in lms_by_engine.items():  # first calls: imports (LiteLLM), pools, metadata
        for level in LEVELS:
            await measure(level_call(level, lm, messages), 20, 30.0, 4, sim)
    samples: dict = {engine: {level: {mode: [] for mode in MODES} for level in LEVELS} for engine in ENGINES}
    order = list(ENGINES)
    for _ in range(rounds):
        random.shuffle(order)
        for engine in order:
            for level in LEVELS:
                for mode, in_flight in MODES.items():
                    samples[engine][level][mode].append(
                        await measure(level_call(level, lms_by_engine[engine], messages), calls, seconds, in_flight, sim))
    for lm in lms_by_engine.values():
        closer = getattr(lm, "aclose", None)
        if closer is not None:
            await closer()
    figures: dict = {}
    for engine in ENGINES:
        figures[engine] = {}
        for level in LEVELS:
            figures[engine][level] = {}
            for mode in MODES:
                runs = samples[engine][level][mode]
                cpu = [run["cpu_us_per_call"] for run in runs]
                figures[engine][level][mode] = {
                    "cpu_us_per_call": spread(cpu, 1),
                    "calls_per_s_per_core": spread([1e6 / value for value in cpu], 0),
                    "calls_per_s": spread([run["calls_per_s"] for run in runs], 0),
                    "sim_cpu_us_per_call": spread([run["sim_cpu_us_per_call"] for run in runs], 1),
                    "calls_per_run": spread([run["calls"] for run in runs], 0),
                }
    ratios = {
        f"{engine}_over_lean": {
            level: {mode: round(figures[engine][level][mode]["cpu_us_per_call"]["median"]
                                / figures["lean"][level][mode]["cpu_us_per_call"]["median"], 2) for mode in MODES}
            for level in LEVELS}
        for engine in ENGINES if engine != "lean"
    }
    return {"engines": figures, "ratios": ratios}


# --- how lean's HTTP and JSON libraries were chosen -------------------------------------------------


async def http_clients_section(port: int, sim: psutil.Process, calls: int, seconds: float) -> dict:
    url = f"http://127.0.0.1:{port}/v1/chat/completions"
    body = {"model": "sim", "messages": predict_messages()}
    headers = {"content-type": "application/json", "authorization": "Bearer sim-key"}

    async def lean():
        from dspy_pool.pool.lean_lm import LeanLM

        lm = LeanLM("openai/sim", api_base=url.rsplit("/chat/completions", 1)[0], api_key="sim-key")
        pool = lm._clients.pool()

        async def post(number: int) -> None:
            payload = orjson.dumps(body)
            reply = await pool.post(lm._head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload, 30.0)
            orjson.loads(reply.body)
        return post, pool.close

    async def aiohttp_client():
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100), timeout=aiohttp.ClientTimeout(total=30))

        async def post(number: int) -> None:
            async with session.post(url, data=orjson.dumps(body), headers=headers) as response:
                orjson.loads(await response.read())
        return post, session.close

    async def httpx_client():
        import httpx

        client = httpx.AsyncClient(limits=httpx.Limits(max_connections=100, max_keepalive_connections=100), timeout=30)

        async def post(number: int) -> None:
            response = await client.post(url, content=orjson.dumps(body), headers=headers)
            orjson.loads(response.content)
        return post, client.aclose

    async def lm15_transport():
        from dspy._vendor.lm15.transports import StdlibAsyncTransport, TransportRequest

        transport = StdlibAsyncTransport(max_connections=100)

        async def post(number: int) -> None:
            request = TransportRequest("POST", url, list(headers.items()), orjson.dumps(body), read_timeout=30)
            async with transport.stream(request) as response:
                orjson.loads(await response.read())
        return post, transport.aclose

    clients = {"lean_protocol": lean, "aiohttp": aiohttp_client, "httpx": httpx_client, "lm15_stdlib": lm15_transport}
    figures: dict = {}
    for name, make in clients.items():
        post, close = await make()
        await measure(post, 50, 10.0, 4, sim)
        figures[name] = {}
        for mode, in_flight in MODES.items():
            run = await measure(post, calls * 2, seconds, in_flight, sim)
            figures[name][mode] = {"cpu_us_per_call": round(run["cpu_us_per_call"], 1), "calls_per_s": round(run["calls_per_s"])}
        result = close()
        if asyncio.iscoroutine(result):
            await result
    reply = orjson.dumps({"id": "chatcmpl-sim-1", "object": "chat.completion", "created": 0, "model": "sim", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "[[ ## answer ## ]]\nParis.\n\n[[ ## completed ## ]]"},
         "finish_reason": "stop"}], "usage": {"prompt_tokens": 80, "completion_tokens": 6, "total_tokens": 86}})
    number = 20000
    json_us = {
        "encode_json": timeit.timeit(lambda: json.dumps(body, ensure_ascii=False).encode(), number=number) / number * 1e6,
        "encode_orjson": timeit.timeit(lambda: orjson.dumps(body), number=number) / number * 1e6,
        "decode_json": timeit.timeit(lambda: json.loads(reply), number=number) / number * 1e6,
        "decode_orjson": timeit.timeit(lambda: orjson.loads(reply), number=number) / number * 1e6,
    }
    return {"http_clients": figures, "json_us_per_call": {key: round(value, 2) for key, value in json_us.items()}}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=1500, help="calls per measurement at most")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds per measurement at most")
    parser.add_argument("--no-http", action="store_true", help="skip the HTTP and JSON library comparison")
    args = parser.parse_args()
    process, port = start_sim()
    try:
        sim = psutil.Process(process.pid)
        api_base = f"http://127.0.0.1:{port}/v1"
        result = {"sim_latency_ms": 0, "cpu_count": os.cpu_count(), "loop": type(asyncio.get_running_loop()).__module__,
                  **await engines_section(api_base, sim, args.rounds, args.calls, args.seconds)}
        if not args.no_http:
            result.update(await http_clients_section(port, sim, args.calls, args.seconds))
    finally:
        process.terminate()
        process.wait(timeout=10)
    print(json.dumps(result))


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
