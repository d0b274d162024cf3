"""Run the simulated LM as its own process (for `serve --lm sim`, tests and benches).

A separate process keeps its CPU off the front's event loop. It is started by
exec and stopped with SIGTERM, then SIGKILL after a bounded wait.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import urllib.request
from dataclasses import dataclass

_READY_PREFIX = b"SIMLM_LISTENING "


@dataclass
class SimLMProcess:
    process: asyncio.subprocess.Process
    port: int

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

    async def stop(self, timeout_s: float = 3.0) -> None:
        if self.process.returncode is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.process.wait(), timeout_s)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.process.wait()


async def start_sim_lm(*args: str, timeout_s: float = 30.0) -> SimLMProcess:
    """Start `python -m dspy_pool.simlm ARGS` on a free loopback port and wait until it listens."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dspy_pool.simlm", "--listen", "127.0.0.1:0", "--parent-pid", str(os.getpid()), *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=None,
    )
    assert process.stdout is not None
    try:
        line = await asyncio.wait_for(process.stdout.readline(), timeout_s)
    except asyncio.TimeoutError:
        process.kill()
        raise RuntimeError("simulated LM did not start in time") from None
    if not line.startswith(_READY_PREFIX):
        process.kill()
        raise RuntimeError(f"simulated LM failed to start: {line!r}")
    return SimLMProcess(process, int(line[len(_READY_PREFIX):]))
