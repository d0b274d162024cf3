"""The floor: the least a Python gRPC front with DSPy worker processes can do per call.

    python bench/floor.py [--listen 127.0.0.1:0] [--workers 2] [--concurrency 64] [--lm dummy|dspy-dummy]

    client --gRPC--> front (grpc.aio, one event loop)
                       Execute: inputs Struct -> bytes -> a worker, round robin
                       <- outputs bytes -> ExecuteResponse(program, outputs)
                          |  socketpair, frames: u32 length | u32 call id | payload
                          v
                     worker process (forked before any gRPC object exists)
                       asyncio loop, up to --concurrency calls at once:
                       Struct -> dict -> await dspy.Predict(signature).acall(**inputs) -> Struct

It exposes the same `dspy_pool.v1.DSPyPool/Execute` method as dspy-pool (any
program name is accepted; every call runs the one --signature), and nothing
else: no queue bound, no breaker, no session, no deadline handling, no
registry, no metrics, no logging per call. Worker errors come back as INTERNAL.

The DSPy work per call is the same as a dspy-pool worker's under `--lm dummy`:
the same in-process LM (`dspy_pool.simlm.engine.make_dummy_lm`, or DSPy's own
DummyLM with `--lm dspy-dummy`), DSPy's cache off, `disable_history=True`,
`track_usage=True`, the async path (`acall`), uvloop on both sides when
installed (as `dspy-pool serve` uses). So the difference between the two is
the pool's own cost. bench/overhead.py runs both in one run.

Once serving it prints one JSON line on stdout, `{"port": ..., "pid": ...,
"workers": [pids]}`, and runs until SIGTERM or SIGINT. Workers die with it
(EOF on their socket, and PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import struct
import sys

_HEADER = struct.Struct(">II")  # payload length, call id
_OK, _FAILED = b"\x00", b"\x01"


def _new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


class _Framed(asyncio.Protocol):
    """Length-prefixed frames on a stream socket; `on_frame(call_id, payload)` per whole frame."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset, size = 0, len(buffer)
        while size - offset >= _HEADER.size:
            length, call_id = _HEADER.unpack_from(buffer, offset)
            end = offset + _HEADER.size + length
            if end > size:
                break
            self.on_frame(call_id, bytes(buffer[offset + _HEADER.size:end]))
            offset = end
        if offset:
            del buffer[:offset]

    def send(self, call_id: int, payload: bytes) -> None:
        self.transport.write(_HEADER.pack(len(payload), call_id) + payload)

    def on_frame(self, call_id: int, payload: bytes) -> None:
        raise NotImplementedError


# -- worker --------------------------------------------------------------------
def _configure_dspy(lm_kind: str):
    import dspy

    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=False)
    if lm_kind == "dspy-dummy":
        from dspy.utils.dummies import DummyLM

        lm = DummyLM([{"answer": "a short answer"}] * 1000, cache=False)  # cycles through its answers per call
    else:
        from dspy_pool.simlm.engine import make_dummy_lm

        lm = make_dummy_lm()
    dspy.configure(lm=lm, disable_history=True, track_usage=True)
    return lm


class _WorkerChannel(_Framed):
    def __init__(self, module, concurrency: int, done: asyncio.Event) -> None:
        super().__init__()
        from google.protobuf import struct_pb2

        self._struct = struct_pb2.Struct
        self._module = module
        self._slots = asyncio.Semaphore(concurrency)
        self._done = done
        self._tasks: set[asyncio.Task] = set()

    def on_frame(self, call_id: int, payload: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._call(call_id, payload))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, call_id: int, payload: bytes) -> None:
        async with self._slots:
            try:
                inputs = dict(self._struct.FromString(payload).items())
                prediction = await self._module.acall(**inputs)
                outputs = self._struct()
                outputs.update({key: prediction[key] for key in prediction.keys()})
                self.send(call_id, _OK + outputs.SerializeToString())
            except Exception as exc:  # noqa: BLE001 - every failure goes back to the front
                self.send(call_id, _FAILED + f"{type(exc).__name__}: {exc}".encode()[:4000])

    def connection_lost(self, exc) -> None:
        self._done.set()


def _worker_main(sock: socket.socket, parent: int, signature: str, lm_kind: str, concurrency: int) -> int:
    from dspy_pool.lifeline import die_with_parent

    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the front's; we end on EOF
    import dspy

    _configure_dspy(lm_kind)
    module = dspy.Predict(signature)
    loop = _new_event_loop()
    asyncio.set_event_loop(loop)

    async def serve() -> None:
        done = asyncio.Event()
        sock.setblocking(False)
        await loop.connect_accepted_socket(lambda: _WorkerChannel(module, concurrency, done), sock)
        await done.wait()

    loop.run_until_complete(serve())
    return 0


def spawn_workers(count: int, signature: str, lm_kind: str, concurrency: int) -> list[tuple[int, socket.socket]]:
    """Fork `count` workers, each with its end of a socketpair. Call before any gRPC object exists."""
    import dspy  # noqa: F401 - imported once here, shared by the forked workers

    workers = []
    parent = os.getpid()
    for _ in range(count):
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            mine.close()
            for _, other in workers:
                other.close()
            code = 1
            try:
                code = _worker_main(theirs, parent, signature, lm_kind, concurrency)
            finally:
                os._exit(code)
        theirs.close()
        workers.append((pid, mine))
    return workers


# -- front ---------------------------------------------------------------------
class _FrontChannel(_Framed):
    def __init__(self, pid: int) -> None:
        super().__init__()
        self.pid = pid
        self.pending: dict[int, asyncio.Future] = {}

    def on_frame(self, call_id: int, payload: bytes) -> None:
        future = self.pending.pop(call_id, None)
        if future is not None and not future.done():
            future.set_result(payload)

    def connection_lost(self, exc) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"worker {self.pid} is gone"))
        self.pending.clear()


async def serve_front(listen: str, workers: list[tuple[int, socket.socket]], ready=None) -> None:
    import grpc

    from dspy_pool.v1 import dspy_pool_pb2 as pb
    from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

    loop = asyncio.get_running_loop()
    channels = []
    for pid, sock in workers:
        sock.setblocking(False)
        _, channel = await loop.connect_accepted_socket(lambda pid=pid: _FrontChannel(pid), sock)
        channels.append(channel)
    count = len(channels)
    state = {"next": 0}

    class Floor(pb_grpc.DSPyPoolServicer):
        async def Execute(self, request, context):
            number = state["next"]
            state["next"] = number + 1
            channel = channels[number % count]
            future = loop.create_future()
            channel.pending[number] = future
            channel.send(number, request.inputs.SerializeToString())
            try:
                reply = await future
            except ConnectionError as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            if reply[:1] != _OK:
                await context.abort(grpc.StatusCode.INTERNAL, reply[1:].decode(errors="replace"))
            response = pb.ExecuteResponse(program=request.program)
            response.outputs.MergeFromString(reply[1:])
            return response

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    pb_grpc.add_DSPyPoolServicer_to_server(Floor(), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise RuntimeError(f"cannot listen on {listen}")
    await server.start()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if ready is not None:
        ready(port)
    await stop.wait()
    await server.stop(0.5)
    for channel in channels:
        channel.transport.close()  # EOF: the workers exit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:0", help="gRPC address (port 0: any free port, printed once serving)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64, help="calls one worker runs at once")
    parser.add_argument("--signature", default="question -> answer")
    parser.add_argument("--lm", choices=("dummy", "dspy-dummy"), default="dummy",
                        help="dummy: the LM dspy-pool's --lm dummy runs (simlm.engine.make_dummy_lm); dspy-dummy: DSPy's DummyLM")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.concurrency < 1:
        parser.error("--workers and --concurrency must be >= 1")
    workers = spawn_workers(args.workers, args.signature, args.lm, args.concurrency)  # before grpc is imported

    def ready(port: int) -> None:
        print(json.dumps({"port": port, "pid": os.getpid(), "workers": [pid for pid, _ in workers]}), flush=True)

    loop = _new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        loop.run_until_complete(serve_front(args.listen, workers, ready))
    finally:
        for _, sock in workers:
            sock.close()
        for pid, _ in workers:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # dspy_pool from a checkout
    sys.exit(main())
