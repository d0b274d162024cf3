"""The zygote: a clean process, exec'd by the front, that forks workers.

    front --SPAWN(worker_id) + [channel, stdout, stderr] fds--> zygote
                                                                  | os.fork()
    front <--SPAWNED(pid)--------------------------------------- parent
    front <--EXITED(pid, code) on SIGCHLD -----------------------'  child -> worker.run()

It imports dspy and the operator's modules once and calls gc.freeze(), so a
worker starts in milliseconds and shares those pages copy-on-write. It never
creates a gRPC object or a thread (fork safety), and it talks to the front on
a SOCK_SEQPACKET socketpair: one frame per record, descriptors passed with
SCM_RIGHTS. It dies with the front (PR_SET_PDEATHSIG, and EOF on the control
socket), and its workers die with it the same way.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import os
import select
import signal
import socket
import sys
import time

from dspy_pool.internal import worker_pb2 as wire
from dspy_pool.lifeline import die_with_parent
from dspy_pool.pool.protocol import FrameDecoder, FrameType, ProtocolError, encode

_RECORD_BYTES = 64 * 1024
_FDS_PER_SPAWN = 3


def _preload(config: wire.ZygoteConfig) -> list[str]:
    """Everything a worker needs, imported once here so forks start warm."""
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network fetch at import
    # Progress bars are for terminals: a worker's output is logged line by line, and an optimizer's evaluation bar
    # was most of the server's log. tqdm reads this when it is imported, which is next (through dspy).
    os.environ.setdefault("TQDM_DISABLE", "1")
    import dspy  # noqa: F401

    from dspy_pool import kinds
    from dspy_pool.pool import prewarm, worker  # noqa: F401

    kinds.load_builtins()
    for module_name in config.program_modules:
        importlib.import_module(module_name)
    prewarm.warm_before_fork(config)
    return kinds.names()


class Zygote:
    def __init__(self, control: socket.socket, config: wire.ZygoteConfig) -> None:
        self.control = control
        self.config = config
        self.workers: dict[int, int] = {}  # pid -> worker_id
        self.front_gone = False
        self.wakeup_read, self.wakeup_write = os.pipe()
        os.set_blocking(self.wakeup_read, False)
        os.set_blocking(self.wakeup_write, False)

    def send(self, frame_type: FrameType, message) -> None:
        try:
            self.control.send(encode(frame_type, 0, message.SerializeToString()))
        except OSError:
            # The front closed the channel (it is stopping us, or it is gone): nothing
            # to report to any more, and the next read sees EOF and ends the loop.
            self.front_gone = True

    def serve(self) -> None:
        signal.set_wakeup_fd(self.wakeup_write)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
        while True:
            readable, _, _ = select.select([self.control, self.wakeup_read], [], [])
            if self.wakeup_read in readable:
                self._drain_wakeups()
                self._reap()
            if self.front_gone or (self.control in readable and not self._on_control()):
                break
        self._kill_workers()

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wakeup_read, 512):
                pass
        except BlockingIOError:
            pass

    def _on_control(self) -> bool:
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.control, _RECORD_BYTES, _FDS_PER_SPAWN)
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            return False  # the front is gone
        try:
            frames = FrameDecoder().feed(data)
        except ProtocolError:
            return False
        for frame in frames:
            if frame.type is FrameType.SPAWN and len(fds) == _FDS_PER_SPAWN:
                request = wire.SpawnWorker.FromString(frame.payload)
                self._spawn(request.worker_id, fds, request.role)
            elif frame.type is FrameType.SHUTDOWN:
                return False
            else:
                for fd in fds:
                    os.close(fd)
                self.send(FrameType.ZYGOTE_ERROR, wire.ZygoteError(message=f"unexpected frame {frame.type.name}"))
        return True

    def _spawn(self, worker_id: int, fds: list[int], role: str = "") -> None:
        channel_fd, stdout_fd, stderr_fd = fds
        boot_started = time.monotonic()
        pid = os.fork()
        if pid == 0:
            self._become_worker(worker_id, channel_fd, stdout_fd, stderr_fd, boot_started, role)
        for fd in fds:
            os.close(fd)  # only the worker may hold its channel, or EOF never comes
        self.workers[pid] = worker_id
        self.send(FrameType.SPAWNED, wire.WorkerSpawned(worker_id=worker_id, pid=pid))

    def _become_worker(self, worker_id: int, channel_fd: int, stdout_fd: int, stderr_fd: int, boot_started: float, role: str = "") -> None:
        code = 70
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            self.control.close()
            os.close(self.wakeup_read)
            os.close(self.wakeup_write)
            die_with_parent(self.parent_pid)
            os.dup2(stdout_fd, 1)
            os.dup2(stderr_fd, 2)
            os.close(stdout_fd)
            os.close(stderr_fd)
            gc.unfreeze()  # frozen objects are shared pages; new garbage must be collectable
            from dspy_pool.pool import worker

            code = worker.run(worker_id, channel_fd, self.config, boot_started, role)
        except BaseException as exc:  # noqa: BLE001 - a child must never return into the zygote loop
            try:
                print(f"worker {worker_id} boot failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            except Exception:
                pass
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker_id = self.workers.pop(pid, -1)
            code = os.waitstatus_to_exitcode(status)
            self.send(FrameType.EXITED, wire.WorkerExited(worker_id=worker_id, pid=pid, exit_code=code))

    def _kill_workers(self) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _ignore_signal(signum, frame) -> None:
    pass


def _read_config(control: socket.socket) -> wire.ZygoteConfig:
    data = control.recv(_RECORD_BYTES)
    frames = FrameDecoder().feed(data)
    if not frames or frames[0].type is not FrameType.ZYGOTE_CONFIG:
        raise SystemExit("zygote: expected a config frame first")
    return wire.ZygoteConfig.FromString(frames[0].payload)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dspy_pool.pool.zygote")
    parser.add_argument("--control-fd", type=int, required=True)
    parser.add_argument("--parent-pid", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent(args.parent_pid)
    # SIGTERM or Ctrl-C sent to the whole process group (`timeout`, `kill -- -PGID`,
    # systemd) is the front's to handle: it drains, then stops us (EOF on the control
    # socket). Dying here would kill every worker mid-call. Set before the imports,
    # which take seconds. A handler, not SIG_IGN, for SIGTERM: forked workers set
    # their own, and processes they exec get the default back.
    signal.signal(signal.SIGTERM, _ignore_signal)
    signal.signal(signal.SIGHUP, _ignore_signal)  # a closed terminal: the front drains (stop_signals.py)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    control = socket.socket(fileno=args.control_fd)
    config = _read_config(control)
    started = time.monotonic()
    try:
        module_kinds = _preload(config)
    except Exception as exc:
        message = f"preload failed: {type(exc).__name__}: {exc}"
        control.send(encode(FrameType.ZYGOTE_ERROR, 0, wire.ZygoteError(message=message).SerializeToString()))
        return 3
    gc.collect()
    gc.freeze()
    zygote = Zygote(control, config)
    zygote.parent_pid = os.getpid()
    from dspy_pool import kinds

    metric_kinds = kinds.metric_names() if hasattr(kinds, "metric_names") else []
    ready = wire.ZygoteReady(pid=os.getpid(), import_s=time.monotonic() - started, module_kinds=module_kinds,
                             metric_kinds=metric_kinds)
    zygote.send(FrameType.ZYGOTE_READY, ready)
    zygote.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
