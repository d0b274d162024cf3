"""The front supervisor: `dspy-pool serve --front-processes N` as N front processes on one port.

    supervisor (no gRPC; exec's each front; owns --metrics-port)
      ├─ front 0 ─ zygote ─ its share of the workers    all listen on HOST:PORT (SO_REUSEPORT) and on a
      ├─ front 1 ─ zygote ─ its share of the workers    private unix socket; programs and sessions live
      └─ ...                                            in the shared state store (SQLite file or Redis)

One front process tops out near one core of gRPC and Python; N of them let
the kernel spread connections over N cores. Front 0 starts first (it creates
or migrates the store and registers --programs-file), then the others at once.
A front that dies loses only its own in-flight calls: the kernel stops
handing it connections, the others keep serving, and it is started again
with the helpers' restart policy (backoff; a front that keeps dying is left
down and logged as a crash loop). A front that stops answering (stopped,
deadlocked) would keep taking its share of new connections, so a prober
process (fronts/prober.py) asks each front's private socket for the health
Check; one silent for --hang-timeout-s (fronts/liveness.py decides) is
SIGKILLed (`front_hung`) and restarted like one that died. SIGTERM or SIGINT
to the supervisor is passed on to every front, which drains as a lone server does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable

import structlog

from dspy_pool.fronts import liveness, plan
from dspy_pool.restarts import RestartPolicy, RestartState, after_failure, after_start
from dspy_pool.server import bind, config as config_module
from dspy_pool.server.config import ServerConfig
from dspy_pool.stop_signals import StopSignals

log = structlog.get_logger("dspy_pool.fronts")

__all__ = ["FrontSupervisor", "FrontFailed", "reserve_port"]

_STOP_MARGIN_S = 15.0  # past the drain grace: stopping workers and the zygote, flushing the store


class FrontFailed(RuntimeError):
    """A front did not get to serving."""


@dataclass(frozen=True, slots=True)
class FrontInfo:
    """What a serving front reported on its ready pipe."""

    index: int
    pid: int
    port: int
    metrics_port: int


def reserve_port(listen: str) -> socket.socket:
    """Bind (not listen) the group's address with SO_REUSEPORT: it fixes port 0 to one port and holds it across restarts."""
    host, port = listen.rpartition(":")[0].strip("[]"), plan.port_of(listen)
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    return sock


_SOCKET_DIR_PREFIX = "dspy-pool-fronts-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def sweep_socket_dirs(root: str, alive: Callable[[int], bool]) -> int:
    """Remove the socket folders in `root` that groups killed with SIGKILL left behind (the supervisor that made each
    one, named in it, is gone; its fronts die with it); only this user's. Returns how many were removed."""
    removed = 0
    with contextlib.suppress(OSError):
        for entry in os.scandir(root):
            pid_text = entry.name[len(_SOCKET_DIR_PREFIX):].partition("-")[0]
            if not (entry.name.startswith(_SOCKET_DIR_PREFIX) and pid_text.isdigit()):
                continue
            with contextlib.suppress(OSError):
                if entry.is_dir(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_uid == os.getuid() \
                        and not alive(int(pid_text)):
                    shutil.rmtree(entry.path)
                    removed += 1
    return removed


def _read_line(fd: int) -> bytes:
    with os.fdopen(fd, "rb") as pipe:
        return pipe.readline()


class FrontSupervisor:
    def __init__(self, config: ServerConfig, policy: RestartPolicy = RestartPolicy(), on_serving: Callable[[int], None] | None = None) -> None:
        self.config = config
        self.count = config.server.front_processes
        self.policy = policy
        self.on_serving = on_serving
        self.ready_timeout_s = config.pool.boot_timeout_s + 60.0  # imports, the store, the zygote, the first workers
        self.socket_dir = ""
        self.port = 0
        self.restarts = 0
        self._processes: dict[int, asyncio.subprocess.Process] = {}
        self._info: dict[int, FrontInfo] = {}
        self._liveness: dict[int, liveness.Liveness] = {}  # serving fronts only: what their health checks said
        self._stopping = False

    # -- one front -------------------------------------------------------------------
    async def _start(self, index: int) -> FrontInfo:
        read_fd, write_fd = os.pipe()
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dspy_pool.fronts.child", "--index", str(index), "--count", str(self.count),
                "--socket-dir", self.socket_dir, "--ready-fd", str(write_fd), "--supervisor-pid", str(os.getpid()),
                stdin=asyncio.subprocess.PIPE, pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the child holds the only write end: EOF when it exits
        self._processes[index] = process
        values = config_module.flat(plan.front_config(self.config, self.port))
        try:
            process.stdin.write(json.dumps(values).encode())  # the key travels on a pipe, never in argv
            await process.stdin.drain()
            process.stdin.close()
        except OSError:  # it died at once: its exit status says why
            os.close(read_fd)
            raise FrontFailed(f"front {index} exited (status {await process.wait()}) before reading its configuration") from None
        try:
            line = await asyncio.wait_for(asyncio.to_thread(_read_line, read_fd), self.ready_timeout_s)
        except asyncio.TimeoutError:
            process.kill()
            raise FrontFailed(f"front {index} was not serving within {self.ready_timeout_s:.0f} s") from None
        if not line:
            code = await process.wait()
            raise FrontFailed(f"front {index} exited (status {code}) before serving; its log is above")
        info = FrontInfo(**json.loads(line))
        self._info[index] = info
        self._liveness[index] = liveness.started(time.monotonic())
        log.info("front_serving", index=index, pid=info.pid)
        return info

    async def _keep(self, index: int) -> None:
        """Restart front `index` whenever it dies, until the group stops or it is a crash loop."""
        state = after_start(RestartState(), time.monotonic())
        while True:
            code = await self._processes[index].wait()
            self._info.pop(index, None)
            self._liveness.pop(index, None)
            if self._stopping:
                return
            log.warning("front_died", index=index, status=code)
            while True:
                delay, state = after_failure(self.policy, state, time.monotonic())
                if delay is None:
                    log.error("front_crash_loop", index=index, hint="this front keeps dying; the others keep serving. See its log above")
                    return
                await asyncio.sleep(delay)
                if self._stopping:
                    return
                try:
                    await self._start(index)
                except (FrontFailed, OSError) as exc:
                    log.warning("front_restart_failed", index=index, error=str(exc))
                    continue
                self.restarts += 1
                state = after_start(state, time.monotonic())
                break

    # -- liveness --------------------------------------------------------------------
    async def _watch(self) -> None:
        """Run the prober (restarted with backoff if it dies) and act on every check it reports."""
        # The checks run in an exec'd process, not here: a front that dies or hangs is started again with
        # create_subprocess_exec, a fork (then exec) of this process while the group runs, and a process that has
        # created gRPC objects must never fork (DESIGN.md, rule 1). So this process holds no gRPC at all.
        interval_s = liveness.check_interval_s(self.config.pool.hang_timeout_s)
        state = RestartState()
        while not self._stopping:
            prober = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "dspy_pool.fronts.prober", "--socket-dir", self.socket_dir, "--count", str(self.count),
                "--interval-s", str(interval_s), "--supervisor-pid", str(os.getpid()),
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            )
            state = after_start(state, time.monotonic())
            try:
                async for line in prober.stdout:
                    check = json.loads(line)  # {"index": i, "answered": bool}
                    self._checked(check["index"], check["answered"], time.monotonic())
            finally:
                if prober.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        prober.kill()
                await prober.wait()
            if self._stopping:
                return
            delay, state = after_failure(self.policy, state, time.monotonic())
            if delay is None:
                log.error("front_prober_crash_loop", hint="hung fronts are no longer detected; the group keeps serving")
                return
            log.warning("front_prober_died", status=prober.returncode)
            await asyncio.sleep(delay)

    def _checked(self, index: int, answered: bool, now: float) -> None:
        """One health check's outcome; SIGKILL the front if it is hung (its keeper then restarts it)."""
        state = self._liveness.get(index)
        if state is None or self._stopping:
            return  # starting, restarting or stopping: not ours to judge
        state = self._liveness[index] = liveness.after_check(state, answered, now)
        timeout_s = self.config.pool.hang_timeout_s
        if not liveness.hung(state, timeout_s):
            return
        process = self._processes[index]
        log.error("front_hung", index=index, pid=process.pid, silent_s=round(liveness.silent_s(state), 1), hang_timeout_s=timeout_s,
                  hint="it did not answer health checks on its private socket; killed, and started again")
        del self._liveness[index]
        with contextlib.suppress(ProcessLookupError):
            process.kill()

    # -- the group -------------------------------------------------------------------
    def metrics_ports(self) -> dict[int, int]:
        return {index: info.metrics_port for index, info in self._info.items() if info.metrics_port > 0}

    async def run(self, stop: asyncio.Event) -> None:
        """Start the group, keep it up until `stop` is set, then stop every front. Raises FrontFailed if it never served."""
        swept = sweep_socket_dirs(tempfile.gettempdir(), _alive)
        if swept:
            log.info("fronts_socket_dirs_swept", dirs=swept, hint="left by groups whose supervisor was killed")
        # 0700: only this user reaches the peer sockets. Named with our pid, so a later group can tell it is left over.
        self.socket_dir = tempfile.mkdtemp(prefix=f"{_SOCKET_DIR_PREFIX}{os.getpid()}-")
        reservation = reserve_port(self.config.server.listen)
        self.port = reservation.getsockname()[1]
        observe = self.config.observe
        try:  # checked before any front starts, as one front does (it failed after both served, naming nothing)
            metrics_hold = bind.reserve(observe.metrics_addr, observe.metrics_port, "--metrics-port") if observe.metrics_port > 0 else None
        except OSError:
            reservation.close()
            shutil.rmtree(self.socket_dir, ignore_errors=True)
            raise
        metrics = None
        keepers: list[asyncio.Task] = []
        try:
            if not await _unless_stopped(self._start_all(), stop):
                return  # SIGTERM while starting: stop what started
            keepers = [asyncio.ensure_future(self._keep(index)) for index in range(self.count)]
            keepers.append(asyncio.ensure_future(self._watch()))
            if metrics_hold is not None:
                metrics_hold.close()  # held until now: the endpoint binds it next
                metrics_hold = None
            metrics = self._serve_metrics()
            log.info("fronts_serving", port=self.port, fronts=self.count, pids=[self._info[i].pid for i in sorted(self._info)],
                     metrics_port=metrics[1] if metrics else -1)
            if self.on_serving is not None:
                self.on_serving(self.port)
            await stop.wait()
        finally:
            self._stopping = True
            await self._stop_fronts()
            for keeper in keepers:
                keeper.cancel()
            if metrics is not None:
                await asyncio.to_thread(_stop_http, metrics[0])
            if metrics_hold is not None:
                metrics_hold.close()
            reservation.close()
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    async def _start_all(self) -> None:
        await self._start(0)  # first: it creates or migrates the store and registers --programs-file
        await asyncio.gather(*(self._start(index) for index in range(1, self.count)))

    def _serve_metrics(self):
        if self.config.observe.metrics_port < 0:
            return None
        from prometheus_client import CollectorRegistry, start_http_server

        from dspy_pool.fronts.metrics import FrontsCollector

        registry = CollectorRegistry(auto_describe=False)
        registry.register(FrontsCollector(self.metrics_ports, lambda: self.restarts))
        server, _thread = start_http_server(self.config.observe.metrics_port, addr=self.config.observe.metrics_addr, registry=registry)
        return server, server.server_address[1]

    def cut_drain(self) -> None:
        """Signal every live front again: a front that is draining stops waiting for its calls (App.cut_drain)."""
        for process in self._processes.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)

    async def _stop_fronts(self) -> None:
        """SIGTERM every front (each drains), SIGKILL what is still there past the grace."""
        live = [process for process in self._processes.values() if process.returncode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        waiting = [asyncio.ensure_future(process.wait()) for process in live]
        if not waiting:
            return
        _, pending = await asyncio.wait(waiting, timeout=self.config.server.drain_grace_s + _STOP_MARGIN_S)
        for process in live:
            if process.returncode is None:
                log.warning("front_killed", pid=process.pid, hint="it did not stop within the drain grace")
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        if pending:
            await asyncio.wait(pending, timeout=5.0)


async def _unless_stopped(work, stop: asyncio.Event) -> bool:
    """Run `work` unless `stop` is set first (then cancel it); True when it finished."""
    task, stopped = asyncio.ensure_future(work), asyncio.ensure_future(stop.wait())
    await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    if task.done():
        task.result()  # a front that failed to start stops the group
        return True
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    return False


def _stop_http(server) -> None:
    server.shutdown()
    server.server_close()


async def serve_group(config: ServerConfig, on_serving: Callable[[int], None] | None = None) -> None:
    """Run the group until SIGTERM/SIGINT/SIGHUP; a later signal makes the fronts stop without waiting for their calls."""
    stop = asyncio.Event()
    supervisor = FrontSupervisor(config, on_serving=on_serving)
    StopSignals(on_stop=stop.set, on_cut=supervisor.cut_drain).install(asyncio.get_running_loop())
    await supervisor.run(stop)
