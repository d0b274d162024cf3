"""A worker: the child's main loop, forked from the zygote.

    front --REQUEST--> Channel.data_received -> Worker.start_request -> task
                                                     |  build program (cached; on the build thread)
                                                     |  check inputs against the signature's types
                                                     |  await module.acall(...)   (sync modules: a thread)
    front <--REPLY/ERROR------------------------------+

One asyncio loop serves up to `worker_concurrency` requests at once: LM calls
are I/O-bound, so concurrency comes from the loop, not from more processes.
Nothing slow runs on the loop: programs are built on one build thread (an
operator's factory may load an index; a wide signature costs milliseconds),
so the loop keeps answering pings and other calls meanwhile, and concurrent
requests for a program being built wait for that one build.
The worker never writes protocol bytes to stdout/stderr (those are pipes the
front logs); it talks only on its dedicated socket. It exits when the channel
reaches EOF (the front is gone) and, via PR_SET_PDEATHSIG, when the zygote dies.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import gc
import os
import signal
import socket
import sys
import threading
import time
import traceback
from typing import Any

import structlog

from dspy_pool import structs
from dspy_pool.errors import DeadlineExceeded, ErrorKind, PoolError
from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.options import parse_lm_rules
from dspy_pool.pool import calltag, failures, lms, programs
from dspy_pool.pool.protocol import Frame, FrameDecoder, FrameType, ProtocolError, encode
from dspy_pool.redact import Redactor
from dspy_pool.v1 import dspy_pool_pb2 as pb

log = structlog.get_logger("dspy_pool.worker")

_TRACEBACK_LIMIT = 8000
_GC_YOUNG_THRESHOLD = 20_000  # see run()


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def _usage_totals(prediction: Any) -> tuple[int, int, int]:
    get_usage = getattr(prediction, "get_lm_usage", None)
    usage = get_usage() if callable(get_usage) else None
    prompt = completion = total = 0
    for per_model in (usage or {}).values():
        prompt += int(per_model.get("prompt_tokens") or 0)
        completion += int(per_model.get("completion_tokens") or 0)
        total += int(per_model.get("total_tokens") or 0)
    return prompt, completion, total


def _prediction_outputs(prediction: Any) -> dict[str, Any]:
    if hasattr(prediction, "keys"):
        return {key: prediction[key] for key in prediction.keys()}
    return {"output": prediction}


class Channel(asyncio.Protocol):
    """The worker's end of its socket: frames in, frames out."""

    def __init__(self, worker: "Worker", max_frame_bytes: int) -> None:
        self._worker = worker
        self._decoder = FrameDecoder(max_frame_bytes)
        self.transport: asyncio.Transport | None = None
        self._outbox: list[bytes] = []  # frames sent this turn of the loop, written by _flush

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._decoder.feed(data)
        except ProtocolError:
            # The front never sends garbage; if it did, nothing here can be trusted.
            self._worker.stop("protocol_error")
            return
        for frame in frames:
            self._worker.on_frame(frame)

    def connection_lost(self, exc: Exception | None) -> None:
        self._worker.stop("channel_closed")

    def send(self, frame_type: FrameType, request_id: int, payload: bytes = b"") -> None:
        # Frames sent in one turn of the loop leave together, in order, at its end: calls that finish
        # together cost one write and wake the front once.
        if self.transport is not None and not self.transport.is_closing():
            self._outbox.append(encode(frame_type, request_id, payload))
            if len(self._outbox) == 1:
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        frames, self._outbox = self._outbox, []
        if frames and self.transport is not None and not self.transport.is_closing():
            self.transport.write(frames[0] if len(frames) == 1 else b"".join(frames))


class Worker:
    def __init__(self, worker_id: int, config: wire.ZygoteConfig) -> None:
        self.worker_id = worker_id
        self.config = config
        self.channel: Channel | None = None
        self.programs = programs.ProgramCache(config.program_cache_entries or 256)
        self.rules = programs.BuildRules(lm_options=parse_lm_rules(config.lm_call_options))
        self.builds: dict[str, asyncio.Future[programs.BuiltProgram]] = {}  # program key -> build in progress
        self.lm: Any = None  # the configured LM, set once the loop runs
        self.extra_lms = lms.LMCache(config)
        self._extra_lms_ready: set[tuple[str, str, str]] = set()
        self.tasks: dict[int, asyncio.Task] = {}
        self.optimize_cancels: dict[int, threading.Event] = {}  # request id -> a running job's cancel flag
        self.served = 0
        self.redactor = Redactor(config.lm_api_key)
        self.stopped = asyncio.Event()
        self.draining = False
        self.threads = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, config.worker_concurrency), thread_name_prefix="program"
        )
        # One thread: builds run one at a time (operator factories need not be thread-safe).
        self.builder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="build")

    # -- frames ---------------------------------------------------------
    def on_frame(self, frame: Frame) -> None:
        if frame.type is FrameType.REQUEST:
            self.start_request(frame.request_id, frame.payload)
        elif frame.type is FrameType.OPTIMIZE:
            self.start_optimize(frame.request_id, frame.payload)
        elif frame.type is FrameType.CANCEL:
            cancel = self.optimize_cancels.get(frame.request_id)
            if cancel is not None:
                cancel.set()  # a job runs on a thread: it stops at its next LM call
                return
            task = self.tasks.get(frame.request_id)
            if task is not None:
                task.cancel()
                # A request and its cancel read together: the task is cancelled before its coroutine
                # ever runs, so nothing in it answers the front (which then kills us for cancel_timeout).
                task.add_done_callback(functools.partial(self._answer_if_never_ran, frame.request_id))
        elif frame.type is FrameType.PING:
            self.send(FrameType.PONG, frame.request_id, self.stats().SerializeToString())
        elif frame.type is FrameType.SHUTDOWN:
            self.draining = True
            asyncio.get_running_loop().create_task(self._drain_then_stop())
        else:
            self.stop(f"unexpected_frame_{frame.type.name.lower()}")

    def _answer_if_never_ran(self, request_id: int, task: asyncio.Task) -> None:
        if task.cancelled():  # _run_request answers a cancel itself, so only a task that never started ends cancelled
            self.tasks.pop(request_id, None)
            self._send_error(request_id, PoolError("cancelled by the front", kind=ErrorKind.CANCELLED))

    def send(self, frame_type: FrameType, request_id: int, payload: bytes = b"") -> None:
        assert self.channel is not None
        self.channel.send(frame_type, request_id, payload)

    def stats(self) -> wire.WorkerStats:
        return wire.WorkerStats(
            rss_bytes=_rss_bytes(), in_flight=len(self.tasks), served=self.served, programs_loaded=len(self.programs)
        )

    def start_optimize(self, request_id: int, payload: bytes) -> None:
        """An optimization job (optimizer workers only): on a thread, reporting progress, cancellable."""
        from dspy_pool.pool import optimizer_worker

        cancel = self.optimize_cancels[request_id] = threading.Event()

        async def job() -> None:
            try:
                await optimizer_worker.run_job(self, request_id, payload, cancel)
            finally:
                self.optimize_cancels.pop(request_id, None)
                self.tasks.pop(request_id, None)

        self.tasks[request_id] = asyncio.get_running_loop().create_task(job())

    def send_error(self, request_id: int, exc: BaseException) -> None:
        self._send_error(request_id, exc)

    def start_request(self, request_id: int, payload: bytes) -> None:
        if self.draining:
            self._send_error(request_id, PoolError("worker is draining", kind=ErrorKind.UNAVAILABLE))
            return
        task = asyncio.get_running_loop().create_task(self._run_request(request_id, payload))
        self.tasks[request_id] = task

    # -- execution ------------------------------------------------------
    async def _resolve_program(self, request: wire.WorkRequest) -> programs.BuiltProgram:
        key = request.program_key
        program = self.programs.get(key)
        if program is not None:
            return program
        build = self.builds.get(key)  # the spec came with an earlier request, still building
        if build is None:
            if not request.spec:
                raise PoolError(f"program {key} is not loaded here", kind=ErrorKind.PROGRAM_NOT_LOADED)
            build = self.builds[key] = asyncio.ensure_future(self._build(key, request.spec))
            build.add_done_callback(_consume_exception)
        return await asyncio.shield(build)  # a cancelled caller leaves the build to finish for the others

    async def _build(self, key: str, spec: bytes) -> programs.BuiltProgram:
        try:
            program = await asyncio.get_running_loop().run_in_executor(self.builder, self._build_on_thread, spec)
        finally:
            self.builds.pop(key, None)
        self.programs.put(key, program)
        return program

    def _build_on_thread(self, spec: bytes) -> programs.BuiltProgram:
        program = programs.build(pb.ProgramSpec.FromString(spec), self.rules)
        lms.prepare_engine(self.lm, program.lm_options)  # a LiteLLM import, if ever needed, happens here
        return program

    async def _call_program(self, program: programs.BuiltProgram, request: wire.WorkRequest) -> Any:
        import dspy

        inputs = program.call_inputs(structs.struct_to_dict(request.inputs))
        if program.takes_history:
            turns = structs.list_to_python(request.history) if request.has_history else []
            inputs[programs.HISTORY_FIELD] = dspy.History(messages=turns)
        # A trace of this call only: DSPy's default trace is one process-wide list to which every predictor call
        # appends (predictor, inputs, prediction), kept up to max_trace_size (10,000) calls. In a worker it held
        # every evicted program's module and signature class, and callers' inputs and outputs, for the next
        # 10,000 calls: RSS grew ~19 MiB per 1,000 distinct programs run (76 -> 293 MiB) and with large inputs
        # by their size times 10,000. Modules that read the trace within a call (Refine, BestOfN) still see it.
        overrides: dict[str, Any] = {"trace": []}
        if request.lm_model:
            overrides["lm"] = await self._extra_lm(request, program)
        with dspy.context(**overrides):
            return await self._run_module(program, inputs)

    async def _extra_lm(self, request: wire.WorkRequest, program: programs.BuiltProgram) -> Any:
        """A fallback LM the operator allow-listed; readied off the loop the first time it runs a program."""
        lm = self.extra_lms.get(request.lm_model, request.lm_api_base)
        ready = (request.lm_model, request.lm_api_base, request.program_key)
        if ready not in self._extra_lms_ready:
            await asyncio.to_thread(lms.prepare_engine, lm, program.lm_options)
            self._extra_lms_ready.add(ready)
        return lm

    async def _run_module(self, program: programs.BuiltProgram, inputs: dict[str, Any]) -> Any:
        if program.runs_async:
            return await program.module.acall(**inputs)
        loop = asyncio.get_running_loop()
        call = lambda: program.module(**inputs)  # noqa: E731 - closes over inputs for the thread
        return await loop.run_in_executor(self.threads, _with_context(call))

    async def _run_request(self, request_id: int, payload: bytes) -> None:
        started = time.perf_counter()
        try:
            request = wire.WorkRequest.FromString(payload)
            calltag.begin(request.request_id, request.program_key)  # this task's output lines name the call
            timeout = request.timeout_s if request.timeout_s > 0 else None
            try:
                async with asyncio.timeout(timeout):
                    program = await self._resolve_program(request)
                    if request.validate_only:  # the program's shape is what validation asks for; a call's reply leaves it out
                        reply = wire.WorkReply(
                            input_names=program.input_names, output_names=program.output_names, takes_history=program.takes_history
                        )
                    else:
                        reply = wire.WorkReply()
                        prediction = await self._call_program(program, request)
                        structs.dict_to_struct(_prediction_outputs(prediction), reply.outputs)
                        reply.prompt_tokens, reply.completion_tokens, reply.total_tokens = _usage_totals(prediction)
            except TimeoutError:
                raise DeadlineExceeded("deadline exceeded while running (the worker's own timer: the program was built or ran)") from None
            reply.execution_ms = (time.perf_counter() - started) * 1000.0
            self.served += 1
            self.send(FrameType.REPLY, request_id, reply.SerializeToString())
        except asyncio.CancelledError:
            self._send_error(request_id, PoolError("cancelled by the front", kind=ErrorKind.CANCELLED))
        except Exception as exc:  # every failure travels back as type, message and traceback
            self._send_error(request_id, exc)
        finally:
            self.tasks.pop(request_id, None)

    def _send_error(self, request_id: int, exc: BaseException) -> None:
        kind = failures.classify(exc)
        message = exc.message if isinstance(exc, PoolError) else str(exc)
        error = wire.WorkError(
            kind=kind.value,
            type=type(exc).__name__ if not isinstance(exc, PoolError) else exc.error_type,
            message=self.redactor.scrub(message)[:_TRACEBACK_LIMIT],
            traceback=""
            if isinstance(exc, (PoolError, asyncio.CancelledError))
            else self.redactor.scrub("".join(traceback.format_exception(exc)))[-_TRACEBACK_LIMIT:],
        )
        self.send(FrameType.ERROR, request_id, error.SerializeToString())

    # -- lifecycle ------------------------------------------------------
    async def _drain_then_stop(self) -> None:
        while self.tasks:
            await asyncio.wait(list(self.tasks.values()))
        self.stop("shutdown")

    def stop(self, reason: str) -> None:
        if not self.stopped.is_set():
            self.stop_reason = reason
            self.stopped.set()


def _consume_exception(build: asyncio.Future) -> None:
    """A build whose every caller was cancelled still fails quietly (its error reached whoever waited)."""
    if not build.cancelled():
        build.exception()


def _with_context(fn):
    """Run `fn` in a thread with the caller's contextvars (DSPy's settings overrides live there)."""
    import contextvars

    context = contextvars.copy_context()
    return lambda: context.run(fn)


async def _serve(worker: Worker, channel_sock: socket.socket, boot_started: float) -> str:
    loop = asyncio.get_running_loop()
    worker.lm = lms.configure(worker.config)
    from dspy_pool import kinds

    kinds.run_worker_start_hooks()
    _, channel = await loop.connect_accepted_socket(
        lambda: Channel(worker, worker.config.max_frame_bytes or 64 * 1024 * 1024), channel_sock
    )
    worker.channel = channel
    hello = wire.WorkerHello(worker_id=worker.worker_id, pid=os.getpid(), boot_ms=(time.monotonic() - boot_started) * 1000)
    channel.send(FrameType.HELLO, 0, hello.SerializeToString())
    await worker.stopped.wait()
    for task in list(worker.tasks.values()):
        task.cancel()
    worker.threads.shutdown(wait=False, cancel_futures=True)
    worker.builder.shutdown(wait=False, cancel_futures=True)
    return getattr(worker, "stop_reason", "stopped")


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def run(worker_id: int, channel_fd: int, config: wire.ZygoteConfig, boot_started: float, role: str = "") -> int:
    """Entry point in the forked child; returns the exit code (the caller must os._exit)."""
    if role == "optimizer":
        os.nice(10)  # optimization is background work: serving workers keep the CPU first
    # Ctrl-C or SIGTERM sent to the whole process group (`timeout`, `kill -- -PGID`,
    # systemd) is the front's to handle: it drains us (SHUTDOWN), and we die with it
    # anyway (PR_SET_PDEATHSIG, EOF). Dying here would fail every call in flight.
    # SIGTERM gets a no-op handler rather than SIG_IGN, which processes that user code
    # execs would inherit (and then ignore their own SIGTERM).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    signal.signal(signal.SIGHUP, lambda signum, frame: None)  # a closed terminal: the front drains us (stop_signals.py)
    for stream in (sys.stdout, sys.stderr):
        stream.reconfigure(line_buffering=True)
    sys.stdout, sys.stderr = calltag.TaggingStream(sys.stdout), calltag.TaggingStream(sys.stderr)
    channel_sock = socket.socket(fileno=channel_fd)
    channel_sock.setblocking(False)
    # A DSPy call allocates thousands of objects, and up to worker_concurrency calls hold theirs at once: at the
    # default threshold (700) a young-generation collection runs every few calls and moves what the calls in
    # flight hold into the older generations, which are then scanned again. A larger threshold collects the same
    # garbage (by refcount, or by the next collection) with far fewer scans: about 7% less worker CPU per call
    # at 64 calls in flight (--lm dummy, same-run A/B).
    gc.set_threshold(_GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    worker = Worker(worker_id, config)
    loop = _new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        reason = loop.run_until_complete(_serve(worker, channel_sock, boot_started))
    except Exception as exc:
        print(f"worker {worker_id} failed: {type(exc).__name__}: {worker.redactor.scrub(str(exc))}", file=sys.stderr)
        return 70
    return 0 if reason in ("shutdown", "channel_closed") else 1
