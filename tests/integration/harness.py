"""Start a real server (sim LM, zygote, workers, gRPC on 127.0.0.1:0) for a test module."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time

import grpc

from dspy_pool.server.app import App
from dspy_pool.server.config import ServerConfig, build
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

CHAOS = "tests.fixtures.chaos_kinds"


def make_config(**overrides) -> ServerConfig:
    """A test server's config; overrides by flat setting name (the flag's name), e.g. max_queue=5."""
    defaults = dict(state="memory", optimizer_workers=0, listen="127.0.0.1:0", workers=2, worker_concurrency=16, max_queue=100, lm="sim",
                    sim_latency="fixed:5", programs=(CHAOS,), drain_grace_s=2.0, default_deadline_s=20.0)
    return build(**{**defaults, **overrides})


@contextlib.asynccontextmanager
async def running_app(**overrides):
    app = App(make_config(**overrides))
    try:
        await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        try:
            yield app, pb_grpc.DSPyPoolStub(channel), channel
        finally:
            await channel.close()
    finally:
        await app.stop(grace_s=2.0)


def execute_request(program: str, session_id: str = "", **inputs) -> pb.ExecuteRequest:
    request = pb.ExecuteRequest(program=program, session_id=session_id)
    request.inputs.update(inputs)
    return request


async def register(stub, name: str, signature: str, module: str = "predict", **fields) -> pb.Program:
    return await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(name=name, signature=signature, module=module, **fields)), timeout=30)


async def eventually(predicate, timeout_s: float = 10.0, interval_s: float = 0.02):
    """Await until predicate() (sync or async) is truthy; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(interval_s)


_PORT = re.compile(rb"server_serving.*?port=(\d+)")
FRONTS_SERVING = re.compile(rb"fronts_serving.*? port=(\d+)")  # --front-processes N: every front serves


class ServeProcess:
    """`dspy-pool serve` as a real process, in its own process group, on 127.0.0.1:0."""

    def __init__(self, *args: str, ready: re.Pattern = None) -> None:
        self.ready = ready or _PORT  # the log line that says it serves, with the port
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dspy_pool.cli", "serve", "--lm", "dummy", "--workers", "1", "--listen", "127.0.0.1:0",
             "--programs", "tests.fixtures.chaos_kinds", "--drain-grace-s", "1", *args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        )
        self.log = b""
        self.port = 0

    async def serving(self) -> "ServeProcess":
        def wait() -> int:
            for line in self.process.stderr:
                self.log += line
                match = self.ready.search(line)
                if match:
                    return int(match.group(1))
            raise AssertionError(f"server exited before serving:\n{self.log.decode(errors='replace')[-3000:]}")

        self.port = await asyncio.wait_for(asyncio.to_thread(wait), 60)
        # Keep reading, so a chatty server never blocks on a full stderr pipe (and the log stays readable).
        threading.Thread(target=self._drain, daemon=True).start()
        return self

    def _drain(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed by stop()
            for line in self.process.stderr:
                self.log += line

    async def failed(self) -> tuple[int, str]:
        """Wait for a start that must fail; (exit code, what it printed)."""
        _, err = await asyncio.to_thread(self.process.communicate, None, 60)
        return self.process.returncode, err.decode(errors="replace")

    def kill9(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
        if self.process.stderr:
            self.process.stderr.close()
