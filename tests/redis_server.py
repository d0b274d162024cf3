"""A real redis-server for tests: loopback only, persistence off, stoppable and restartable on its port.

    server = RedisServer.launch()      # a free 127.0.0.1 port; returns once PING answers
    server.url                         # redis://127.0.0.1:PORT/0
    server.stop(); server.start()      # an outage, then the same server (empty) on the same port
    server.close()                     # killed; also dies with the test process (PR_SET_PDEATHSIG)
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

_READY_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
# Exec redis-server behind the parent-death signal, so a killed pytest leaves no server behind.
_EXEC_WITH_LIFELINE = (
    "import os, sys; from dspy_pool.lifeline import die_with_parent; "
    "die_with_parent(int(sys.argv[1])); os.execvp(sys.argv[2], sys.argv[2:])"
)


def redis_server_path() -> str | None:
    return shutil.which("redis-server")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(port: int, timeout_s: float = 0.5) -> bool:
    """True once a Redis on this loopback port answers PING with PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self, executable: str, port: int, workdir: str) -> None:
        self.executable = executable
        self.port = port
        self.workdir = workdir
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    def launch(cls, executable: str | None = None, attempts: int = 3) -> "RedisServer":
        """Start on a free port (another port if one was taken between choosing and binding it)."""
        executable = executable or redis_server_path()
        if executable is None:
            raise FileNotFoundError("redis-server is not on PATH")
        workdir = tempfile.mkdtemp(prefix="dspy-pool-redis-")
        for attempt in range(attempts):
            server = cls(executable, free_port(), workdir)
            try:
                server.start()
                return server
            except RuntimeError:
                if attempt == attempts - 1:
                    shutil.rmtree(workdir, ignore_errors=True)
                    raise
        raise AssertionError("unreachable")

    def _log_path(self) -> str:
        return os.path.join(self.workdir, "redis.log")

    def start(self) -> None:
        """Run redis-server on self.port and return once it answers PING; RuntimeError with its log if it cannot."""
        if self.process is not None and self.process.poll() is None:
            return
        args = [self.executable, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.workdir, "--logfile", self._log_path(), "--loglevel", "warning", "--daemonize", "no"]
        self.process = subprocess.Popen([sys.executable, "-c", _EXEC_WITH_LIFELINE, str(os.getpid()), *args],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not ping(self.port):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on 127.0.0.1:{self.port} did not answer PING: {self._log_tail()}")
            time.sleep(0.01)  # between PING attempts, never in place of one

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); its data is gone (persistence is off). Idempotent."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            with open(self._log_path(), errors="replace") as log:
                return log.read()[-2000:] or "(empty log)"
        except OSError:
            return "(no log)"
