"""One front process of a group: `python -m dspy_pool.fronts.child --index I --count N --socket-dir D --ready-fd F`.

Started (exec'd, never forked from a process that runs gRPC) by the front
supervisor, which writes this front's configuration as JSON on stdin, so the
API key never shows in `ps`. Once serving, the front writes one JSON line to
the ready pipe (its pid, port and metrics port) and closes it; if it never
gets there, the pipe closes when it exits and the supervisor sees why.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import structlog

from dspy_pool import logs
from dspy_pool.lifeline import die_with_parent
from dspy_pool.server import config as config_module
from dspy_pool.server.config import ServerConfig


def read_config(text: str) -> ServerConfig:
    values = json.loads(text)
    return config_module.build(**{name: tuple(value) if isinstance(value, list) else value for name, value in values.items()})


def _ready_line(app, index: int) -> bytes:
    return (json.dumps({"index": index, "pid": os.getpid(), "port": app.port, "metrics_port": app.metrics_port}) + "\n").encode()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dspy_pool.fronts.child")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--socket-dir", required=True)
    parser.add_argument("--ready-fd", type=int, required=True)
    parser.add_argument("--supervisor-pid", type=int, required=True)
    args = parser.parse_args(argv)
    die_with_parent(args.supervisor_pid)  # a kill -9 of the supervisor takes every front (and so every worker) with it
    config = read_config(sys.stdin.read())
    logs.configure(config.observe.log_format, config.observe.log_level, secrets=config_module.secrets_of(config))
    structlog.contextvars.bind_contextvars(front=args.index)  # every line says which front wrote it

    from dspy_pool.cli import run_loop
    from dspy_pool.server.app import serve
    from dspy_pool.server.peers import FrontGroup

    def on_serving(app) -> None:
        os.write(args.ready_fd, _ready_line(app, args.index))
        os.close(args.ready_fd)

    try:
        run_loop(serve(config, on_serving, FrontGroup(args.index, args.count, args.socket_dir)))
    except Exception as exc:
        print(f"dspy-pool front {args.index}: failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
