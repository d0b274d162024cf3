"""The front's view of one worker: its channel, its in-flight calls, its state.

A handle turns frames into completions. Anything that breaks the protocol
contract (a malformed frame, a reply for an unknown id, a cancel that is not
acknowledged in time, a ping that is not answered) poisons the worker: it is
killed and replaced, its channel never reused. Death is noticed from either
side: EOF on the channel, or the zygote's EXITED report.

A ping left unanswered for one ping interval marks the worker unresponsive
(SIGSTOP, a loop blocked by user code): the dispatcher routes no new call to
it until a pong comes back. Past hang_timeout it is killed as hung.
"""

from __future__ import annotations

import asyncio
import enum
import os
import signal
import socket
import time
from typing import Callable, Protocol

import structlog

from dspy_pool import errors, logs
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.pool.output import WorkerOutputLog
from dspy_pool.pool.protocol import HEADER_BYTES, Frame, FrameDecoder, FrameType, ProtocolError, encode

log = structlog.get_logger("dspy_pool.pool")

# Module constants: an enum member read off its class costs a lookup, and these are compared per frame.
_REPLY, _ERROR, _OPTIMIZED, _REQUEST = FrameType.REPLY, FrameType.ERROR, FrameType.OPTIMIZED, FrameType.REQUEST
_work_reply = wire.WorkReply.FromString


class WorkerState(str, enum.Enum):
    STARTING = "starting"
    WARMING = "warming"  # booted; building programs and running warm-up calls before it takes traffic
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Call(Protocol):
    """What a handle needs from a dispatched call (the dispatcher's Job)."""

    counted: bool  # counts as served: False for the pool's own work (a program's validation build)

    def complete(self, handle: "WorkerHandle", reply: wire.WorkReply | None, error: errors.PoolError | None) -> None: ...


class WorkerHandle(asyncio.Protocol):
    def __init__(
        self,
        worker_id: int,
        *,
        max_frame_bytes: int,
        cancel_grace_s: float,
        on_dead: Callable[["WorkerHandle", str], None],
        on_slot_free: Callable[["WorkerHandle"], None],
    ) -> None:
        self.worker_id = worker_id
        self.pid = 0
        self.worker_ref = None  # the pool API's WorkerRef for this worker, made on its first result (api._result)
        self.state = WorkerState.STARTING
        self.in_flight: dict[int, Call] = {}
        self.loaded_programs: set[str] = set()
        self.served = 0
        self.failed = 0
        self.rss_bytes = 0
        self.started_at = time.monotonic()
        self.ready_at: float | None = None
        self.death_reason = ""
        self.responsive = True  # False from a missed ping to the next pong: no new calls meanwhile
        self.drained = False  # asked to finish and exit: its exit is expected, never a restart
        # A handle lives on the loop that made it (its transport does); kept because asking for the running loop
        # costs a getpid syscall per call on Python 3.11, and frames are written on every call.
        self._loop = asyncio.get_running_loop()
        self.hello: asyncio.Future[wire.WorkerHello] = self._loop.create_future()
        self._decoder = FrameDecoder(max_frame_bytes)
        self._max_request_bytes = max_frame_bytes - HEADER_BYTES  # what the worker's decoder takes (it stops on more)
        self._cancel_grace_s = cancel_grace_s
        self._on_dead = on_dead
        self._on_slot_free = on_slot_free
        self._transport: asyncio.Transport | None = None
        self._outbox: list[bytes] = []  # frames written this turn of the loop, sent by _flush
        self._next_request_id = 1
        self._ping_sent_at: float | None = None
        self._output: list[WorkerOutputLog] = []

    # -- wiring -----------------------------------------------------------
    async def attach(self, pid: int, channel: socket.socket, stdout_fd: int, stderr_fd: int) -> None:
        self.pid = pid
        loop = self._loop
        channel.setblocking(False)
        await loop.connect_accepted_socket(lambda: self, channel)
        for fd, stream in ((stdout_fd, "stdout"), (stderr_fd, "stderr")):
            output = WorkerOutputLog(self.worker_id, pid, stream)
            await loop.connect_read_pipe(lambda output=output: output, os.fdopen(fd, "rb", buffering=0))
            self._output.append(output)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.kill("channel_closed")

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ProtocolError as exc:
            self.kill(f"protocol_error: {exc}")
            return
        stopped = WorkerState.STOPPED
        for frame in frames:
            if self.state is stopped:
                return
            if frame[0] is _REPLY:  # nearly every frame: straight to its call, no _on_frame in between
                self._on_result(frame)
            else:
                self._on_frame(frame)

    # -- frames -------------------------------------------------------------
    def _on_frame(self, frame: Frame) -> None:
        frame_type = frame[0]
        if frame_type is _REPLY or frame_type is _ERROR or frame_type is _OPTIMIZED:
            self._on_result(frame)
        elif frame.type is FrameType.PROGRESS:
            call = self.in_flight.get(frame.request_id)
            if call is None or not hasattr(call, "progress"):
                self.kill(f"protocol_error: progress for unknown request {frame.request_id}")
                return
            call.progress(wire.OptimizeProgress.FromString(frame.payload))
        elif frame.type is FrameType.PONG:
            self._ping_sent_at = None
            try:
                self.rss_bytes = wire.WorkerStats.FromString(frame.payload).rss_bytes
            except Exception:
                self.kill("protocol_error: bad stats frame")
                return
            if not self.responsive:
                self.responsive = True
                log.info("worker_responsive", worker_id=self.worker_id, pid=self.pid)
                self._on_slot_free(self)  # it takes calls again: start what queued meanwhile
        elif frame.type is FrameType.HELLO and self.state is WorkerState.STARTING:
            self.state = WorkerState.READY
            self.ready_at = time.monotonic()
            if not self.hello.done():
                self.hello.set_result(wire.WorkerHello.FromString(frame.payload))
        else:
            self.kill(f"protocol_error: unexpected {frame.type.name} frame")

    def _on_result(self, frame: Frame) -> None:
        frame_type, request_id, payload = frame
        call = self.in_flight.pop(request_id, None)
        if call is None:
            self.kill(f"protocol_error: reply for unknown request {request_id}")
            return
        try:
            if frame_type is _REPLY:
                reply, error = _work_reply(payload), None
                if call.counted:
                    self.served += 1
            elif frame_type is _OPTIMIZED:
                reply, error = wire.OptimizeReply.FromString(frame.payload), None
                self.served += 1
            else:
                remote = wire.WorkError.FromString(frame.payload)
                reply, error = None, errors.from_kind(remote.kind, remote.message, remote.type, remote.traceback)
                if call.counted:
                    self.failed += 1
        except Exception:
            self.in_flight[request_id] = call  # failed with the worker's other calls, at once (not at its deadline)
            self.kill("protocol_error: undecodable result")
            return
        call.complete(self, reply, error)
        self._on_slot_free(self)

    # -- requests -----------------------------------------------------------
    def send_request(self, call: Call, request: wire.WorkRequest) -> int:
        """Send `request` for `call`; InvalidArgument, with nothing sent, when it is too large for a frame."""
        payload = request.SerializeToString()
        if len(payload) > self._max_request_bytes:
            # A frame past the worker's limit would stop the worker, and every call on it. Inputs are bounded by
            # --max-message-bytes, but a session's history and the program's spec travel with them.
            raise errors.InvalidArgument(
                f"this call's request to the worker is {len(payload)} bytes (its inputs, the session's history and the "
                f"program's spec), over the worker's limit of {self._max_request_bytes}: send smaller inputs, or use a new session")
        return self._send(_REQUEST, call, payload)

    def send_optimize(self, call: Call, work: wire.OptimizeWork) -> int:
        """An optimization job (optimizer workers only); `call` also gets `progress(OptimizeProgress)`."""
        return self._send(FrameType.OPTIMIZE, call, work.SerializeToString())

    def _send(self, frame_type: FrameType, call: Call, payload: bytes) -> int:
        request_id = self._next_request_id
        self._next_request_id += 1
        self.in_flight[request_id] = call
        self._write(frame_type, request_id, payload)
        return request_id

    def cancel(self, request_id: int) -> None:
        """Ask the worker to cancel; a worker that does not answer in time is poisoned."""
        if request_id not in self.in_flight or self.state is WorkerState.STOPPED:
            return
        self._write(FrameType.CANCEL, request_id)
        # Not the cancelled call's context: a kill for cancel_timeout, and the respawn after it, are the worker's.
        self._loop.call_later(self._cancel_grace_s, self._check_cancelled, request_id, context=logs.without_call())

    def _check_cancelled(self, request_id: int) -> None:
        if request_id in self.in_flight:
            self.kill("cancel_timeout")

    def ping(self, now: float, hang_timeout_s: float) -> None:
        """Send a ping; the last one still unanswered marks the worker unresponsive, and poisons it past hang_timeout_s.

        Called once per ping interval, so an outstanding ping is at least one interval old.
        """
        if self.state is WorkerState.STOPPED:
            return
        if self._ping_sent_at is not None:
            if now - self._ping_sent_at > hang_timeout_s:
                self.kill("hung")
            elif self.responsive:
                self.responsive = False
                log.warning("worker_unresponsive", worker_id=self.worker_id, pid=self.pid,
                            ping_age_s=round(now - self._ping_sent_at, 2), in_flight=len(self.in_flight))
            return
        self._ping_sent_at = now
        self._write(FrameType.PING, 0)

    def begin_warmup(self) -> None:
        if self.state is WorkerState.READY:
            self.state = WorkerState.WARMING

    def end_warmup(self) -> None:
        if self.state is WorkerState.WARMING:
            self.state = WorkerState.READY

    def drain(self) -> None:
        """No new calls; the worker exits once its in-flight calls finish."""
        if self.state in (WorkerState.READY, WorkerState.STARTING, WorkerState.WARMING):
            self.state = WorkerState.DRAINING
            self.drained = True
            self._write(FrameType.SHUTDOWN, 0)

    def _write(self, frame_type: FrameType, request_id: int, payload: bytes = b"") -> None:
        # Frames written in one turn of the loop leave together, in order, at its end: under load many calls
        # start per turn, and one write (one syscall, one wake-up of the worker) carries them all.
        transport = self._transport
        if transport is not None and not transport.is_closing():
            outbox = self._outbox
            outbox.append(encode(frame_type, request_id, payload))
            if len(outbox) == 1:
                self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if frames and self._transport is not None and not self._transport.is_closing():
            self._transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    # -- death --------------------------------------------------------------
    def kill(self, reason: str, exit_code: int | None = None) -> None:
        """Mark dead (idempotent): SIGKILL the process, fail what it was running."""
        if self.state is WorkerState.STOPPED:
            return
        expected = reason == "shutdown" or self.state is WorkerState.DRAINING
        self.state = WorkerState.STOPPED
        self.death_reason = reason
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self._transport is not None:
            self._transport.abort()
        crashed = errors.WorkerCrashed(
            f"worker {self.worker_id} (pid {self.pid}) died while running this call ({reason}); it may have partly run",
            kind=errors.ErrorKind.WORKER_HUNG if reason in ("hung", "cancel_timeout") else errors.ErrorKind.WORKER_CRASHED,
            metadata={"worker_pid": str(self.pid), "worker_id": str(self.worker_id)},
        )
        calls, self.in_flight = list(self.in_flight.values()), {}
        for call in calls:
            call.complete(self, None, crashed)
        if not self.hello.done():
            self.hello.set_exception(crashed)
            self.hello.exception()  # retrieved: a boot failure is reported by the supervisor
        log_method = log.info if expected else log.warning
        log_method("worker_stopped", worker_id=self.worker_id, pid=self.pid, reason=reason, exit_code=exit_code, failed_in_flight=len(calls))
        self._on_dead(self, reason)

    def uptime_s(self, now: float) -> float:
        return now - self.started_at
