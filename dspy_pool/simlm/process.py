"""Run the simulated LM as its own supervised process (for `serve --lm sim`, tests and benches).

    start_sim_lm(ARGS) ──exec──> python -m dspy_pool.simlm --listen 127.0.0.1:0 --parent-pid FRONT ARGS
                       <──"SIMLM_LISTENING <port>" on its stdout
    _supervise: it exits ──> up = False, on_change(False)   (the server reports NOT_SERVING)
                         ──> after restarts.after_failure's delay, exec it again on the same port:
                             the workers have its api_base baked into their LM config
                         ──> up = True, on_change(True)
                         past the policy's failures in a row: sim_lm_gave_up, it stays down
    stop(): no more restarts; SUPERVISED_STOP_SIGNAL, a bounded wait, then SIGKILL

A separate process keeps its CPU off the front's event loop. Started with
--parent-pid it ignores SIGTERM and SIGINT sent to the whole process group
(the front drains first, and its workers keep calling the LM meanwhile) and
dies with the front (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
from typing import Callable

import structlog

from dspy_pool.restarts import RestartPolicy, RestartState, after_failure, after_start
from dspy_pool.simlm.server import SUPERVISED_STOP_SIGNAL

log = structlog.get_logger("dspy_pool.simlm")

_READY_PREFIX = b"SIMLM_LISTENING "


class SimLMProcess:
    """The simulated LM's process and port; restarts it on the same port when it dies."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, args: tuple[str, ...] = (), *,
                 on_change: Callable[[bool], None] | None = None, policy: RestartPolicy = RestartPolicy(),
                 start_timeout_s: float = 30.0) -> None:
        self.process = process
        self.port = port
        self.args = args
        self.on_change = on_change
        self.policy = policy
        self.start_timeout_s = start_timeout_s
        self.up = True
        self.restarts = 0
        self._stopping = False
        self._restart_state = after_start(RestartState(), time.monotonic())
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="sim-lm-supervisor")

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return f"{self.base_url}/v1"

    async def set_faults(self, **faults) -> dict:
        return await asyncio.to_thread(self._post, "/admin/faults", faults)

    async def stats(self) -> dict:
        return await asyncio.to_thread(self._get, "/admin/stats")

    def _post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.base_url + path, data=json.dumps(body).encode(), headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
            return json.loads(response.read())

    # -- supervision ----------------------------------------------------------
    def stop_supervising(self) -> None:
        """Shutdown has begun: if it dies from here on, it stays down."""
        self._stopping = True

    async def _supervise(self) -> None:
        while True:
            code = await self.process.wait()
            if self._stopping:
                return
            log.warning("sim_lm_exited", pid=self.process.pid, port=self.port, exit_code=code)
            self._set_up(False)
            if not await self._restart():
                return

    async def _restart(self) -> bool:
        """Exec it again on its port until it listens or the policy gives up; True once it is back."""
        while True:
            delay, self._restart_state = after_failure(self.policy, self._restart_state, time.monotonic())
            if delay is None:
                log.error("sim_lm_gave_up", port=self.port, failures_in_a_row=self._restart_state.failures,
                          hint="the simulated LM keeps dying; every call fails until the server is restarted")
                return False
            await asyncio.sleep(delay)
            if self._stopping:
                return False
            try:
                # --listen last: argparse keeps the last one, and the port must not change.
                self.process, _ = await _exec(*self.args, "--listen", f"127.0.0.1:{self.port}", timeout_s=self.start_timeout_s)
            except RuntimeError as exc:
                log.warning("sim_lm_restart_failed", port=self.port, attempt=self._restart_state.failures, error=str(exc))
                continue
            self._restart_state = after_start(self._restart_state, time.monotonic())
            self.restarts += 1
            log.info("sim_lm_restarted", pid=self.process.pid, port=self.port, attempt=self._restart_state.failures)
            self._set_up(True)
            return True

    def _set_up(self, up: bool) -> None:
        self.up = up
        if self.on_change is not None:
            self.on_change(up)

    async def stop(self, timeout_s: float = 3.0) -> None:
        """No more restarts; then ask it to stop, wait up to timeout_s, SIGKILL. Idempotent."""
        self._stopping = True
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self.process.returncode is not None:
            return
        try:
            self.process.send_signal(SUPERVISED_STOP_SIGNAL)
            await asyncio.wait_for(self.process.wait(), timeout_s)
        except ProcessLookupError:
            pass
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()


async def _exec(*args: str, timeout_s: float) -> tuple[asyncio.subprocess.Process, int]:
    """Exec `python -m dspy_pool.simlm ARGS` and wait for its SIMLM_LISTENING line; RuntimeError if it does not come."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dspy_pool.simlm", "--parent-pid", str(os.getpid()), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=None,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
    except asyncio.TimeoutError:
        await _kill(process)
        raise RuntimeError("simulated LM did not start in time") from None
    except BaseException:  # cancelled while it starts: leave no process behind
        await _kill(process)
        raise
    if not line.startswith(_READY_PREFIX):
        await _kill(process)
        raise RuntimeError(f"simulated LM failed to start (exit code {process.returncode}; its error is printed above)")
    return process, int(line[len(_READY_PREFIX):])


async def _kill(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        try:
            process.kill()
        except ProcessLookupError:
            pass
    await process.wait()


async def start_sim_lm(*args: str, timeout_s: float = 30.0, on_change: Callable[[bool], None] | None = None,
                       policy: RestartPolicy = RestartPolicy()) -> SimLMProcess:
    """Start `python -m dspy_pool.simlm ARGS` on a free loopback port, wait until it listens, and supervise it."""
    process, port = await _exec("--listen", "127.0.0.1:0", *args, timeout_s=timeout_s)
    return SimLMProcess(process, port, args, on_change=on_change, policy=policy, start_timeout_s=timeout_s)
