"""The load generator of a bench, in its own process so its CPU is counted apart from the servers'.

A bench script runs itself with --load-child as the generator; the parent sends JSON commands on
its stdin and reads one JSON answer per command from its stdout (`{"ok": true, ...}` or an error).
"""

from __future__ import annotations

import contextlib
import json
import pathlib
import socket
import subprocess
import sys

__all__ = ["LoadChild", "free_port"]


class LoadChild:
    def __init__(self, script: str, cwd: pathlib.Path) -> None:
        self.process = subprocess.Popen([sys.executable, str(pathlib.Path(script).resolve()), "--load-child"],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd)

    def ask(self, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("the load generator died")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise RuntimeError(f"load generator: {command['op']}: {answer.get('error')}")
        return answer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ask(op="quit")
        with contextlib.suppress(Exception):
            self.process.wait(5)
        if self.process.poll() is None:
            self.process.kill()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
