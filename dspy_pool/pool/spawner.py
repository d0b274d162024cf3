"""The front's client of the zygote: start it by exec, ask it for workers.

The zygote is started with `python -m dspy_pool.pool.zygote` (exec, never a
bare fork of the front, which may already hold gRPC threads). Its control
channel is a SOCK_SEQPACKET socketpair read with `loop.add_reader`; SPAWN
records carry the worker's three descriptors as SCM_RIGHTS ancillary data.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import Callable

import structlog

from dspy_pool import redact
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.protocol import FrameDecoder, FrameType, ProtocolError, encode

log = structlog.get_logger("dspy_pool.zygote")

_RECORD_BYTES = 64 * 1024


class ZygoteFailed(Exception):
    """The zygote could not start or died; no worker can be spawned."""


@dataclass(slots=True)
class SpawnedWorker:
    worker_id: int
    pid: int
    channel: socket.socket
    stdout_fd: int
    stderr_fd: int


ExitCallback = Callable[[int, int, int], None]  # worker_id, pid, exit code


class ZygoteClient:
    def __init__(self, on_worker_exit: ExitCallback, on_zygote_lost: Callable[[str], None]) -> None:
        self._on_worker_exit = on_worker_exit
        self._on_zygote_lost = on_zygote_lost
        self._control: socket.socket | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._ready: asyncio.Future[wire.ZygoteReady] | None = None
        self._pending: dict[int, tuple[asyncio.Future[int], list[int]]] = {}
        self._output_tasks: list[asyncio.Task] = []
        self._closed = False
        self.ready_info: wire.ZygoteReady | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    async def launch(self, config: wire.ZygoteConfig) -> None:
        """Exec the zygote and hand it its config; returns before it has imported anything."""
        loop = asyncio.get_running_loop()
        # Operator code prints; the zygote's output and its workers' is scrubbed of the key it gets here.
        redact.remember(config.lm_api_key, *redact.url_secrets(config.lm_api_base))
        self._redactor = redact.process_redactor()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        self._control = ours
        self._process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dspy_pool.pool.zygote",
            "--control-fd", str(theirs.fileno()), "--parent-pid", str(os.getpid()),
            pass_fds=(theirs.fileno(),),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        theirs.close()
        self._output_tasks = [
            loop.create_task(self._log_output(self._process.stdout, "stdout")),
            loop.create_task(self._log_output(self._process.stderr, "stderr")),
        ]
        self._ready = loop.create_future()
        loop.add_reader(ours.fileno(), self._on_readable)
        ours.send(encode(FrameType.ZYGOTE_CONFIG, 0, config.SerializeToString()))

    async def wait_ready(self, timeout_s: float) -> wire.ZygoteReady:
        """Wait until the zygote has imported dspy and the operator modules."""
        assert self._ready is not None, "launch() first"
        try:
            self.ready_info = await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)
        except asyncio.TimeoutError:
            await self.stop(1.0)
            raise ZygoteFailed(f"zygote not ready within {timeout_s:.0f}s") from None
        log.info("zygote_ready", pid=self.ready_info.pid, import_s=round(self.ready_info.import_s, 3), kinds=list(self.ready_info.module_kinds))
        return self.ready_info

    async def _log_output(self, stream: asyncio.StreamReader | None, name: str) -> None:
        if stream is None:
            return
        while line := await stream.readline():
            text = self._redactor.scrub(line.decode(errors="replace").rstrip())
            log.info("zygote_output", stream=name, line=text[:2000])

    def spawn(self, worker_id: int, role: str = "") -> asyncio.Future[SpawnedWorker]:
        """Ask for one worker (role "optimizer": an optimizer worker); the future resolves once the zygote has forked it."""
        if self._control is None or self._closed:
            raise ZygoteFailed("zygote is not running")
        front_end, worker_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        stdout_read, stdout_write = os.pipe()
        stderr_read, stderr_write = os.pipe()
        passed = [worker_end.fileno(), stdout_write, stderr_write]
        try:
            socket.send_fds(self._control, [encode(FrameType.SPAWN, 0, wire.SpawnWorker(worker_id=worker_id, role=role).SerializeToString())], passed)
        except OSError as exc:
            for fd in (stdout_read, stderr_read):
                os.close(fd)
            front_end.close()
            # The zygote is gone even if its EOF has not been read yet: say so now, so the
            # pool relaunches it rather than counting this as a worker that failed to boot.
            self._lost(f"cannot reach the zygote: {exc}")
            raise ZygoteFailed(f"cannot reach the zygote: {exc}") from exc
        finally:
            worker_end.close()
            os.close(stdout_write)
            os.close(stderr_write)
        loop = asyncio.get_running_loop()
        pid_future: asyncio.Future[int] = loop.create_future()
        self._pending[worker_id] = (pid_future, [stdout_read, stderr_read])

        async def _wait() -> SpawnedWorker:
            try:
                pid = await pid_future
            except BaseException:
                front_end.close()
                for fd in (stdout_read, stderr_read):
                    os.close(fd)
                raise
            return SpawnedWorker(worker_id, pid, front_end, stdout_read, stderr_read)

        return asyncio.ensure_future(_wait())

    def _on_readable(self) -> None:
        assert self._control is not None
        try:
            data = self._control.recv(_RECORD_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost("zygote closed its control channel")
            return
        try:
            frames = FrameDecoder().feed(data)
        except ProtocolError as exc:
            self._lost(f"zygote sent a bad frame: {exc}")
            return
        for frame in frames:
            self._on_frame(frame.type, frame.payload)

    def _on_frame(self, frame_type: FrameType, payload: bytes) -> None:
        if frame_type is FrameType.ZYGOTE_READY and self._ready and not self._ready.done():
            self._ready.set_result(wire.ZygoteReady.FromString(payload))
        elif frame_type is FrameType.SPAWNED:
            spawned = wire.WorkerSpawned.FromString(payload)
            pending = self._pending.pop(spawned.worker_id, None)
            if pending and not pending[0].done():
                pending[0].set_result(spawned.pid)
        elif frame_type is FrameType.EXITED:
            exited = wire.WorkerExited.FromString(payload)
            self._on_worker_exit(exited.worker_id, exited.pid, exited.exit_code)
        elif frame_type is FrameType.ZYGOTE_ERROR:
            message = wire.ZygoteError.FromString(payload).message
            log.error("zygote_error", message=message)
            if self._ready and not self._ready.done():
                self._ready.set_exception(ZygoteFailed(message))

    def _lost(self, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        if self._control is not None:
            asyncio.get_running_loop().remove_reader(self._control.fileno())
        error = ZygoteFailed(reason)
        if self._ready and not self._ready.done():
            self._ready.set_exception(error)
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()
        log.error("zygote_lost", reason=reason)
        self._on_zygote_lost(reason)

    async def stop(self, timeout_s: float) -> None:
        """Close the channel (the zygote then SIGKILLs its workers), wait, then SIGKILL. Idempotent."""
        if self._control is not None:
            if not self._closed:
                self._closed = True
                try:
                    asyncio.get_running_loop().remove_reader(self._control.fileno())
                except (ValueError, RuntimeError):
                    pass
            self._control.close()
            self._control = None
        process = self._process
        if process is not None and process.returncode is None:
            try:
                await asyncio.wait_for(process.wait(), timeout_s)
            except asyncio.TimeoutError:
                try:
                    process.send_signal(signal.SIGKILL)
                except ProcessLookupError:
                    pass
                await process.wait()
        for task in self._output_tasks:
            task.cancel()
