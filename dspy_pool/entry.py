"""The `dspy-pool` command's entry point: Ctrl-C while the command still imports (grpc, protobuf: a few hundred ms)
ends it with one line and exit 130, as it does later, instead of a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from dspy_pool.cli import main as run

        return run()
    except KeyboardInterrupt:
        print("dspy-pool: interrupted", file=sys.stderr)
        return 130
