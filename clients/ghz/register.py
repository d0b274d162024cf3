"""Register the programs the ghz configs call (grpcurl-free), using the Python client.

    python clients/ghz/register.py [--target 127.0.0.1:50051]

ghz-qa:   "question -> answer"                        (execute.json, execute-proto.json)
ghz-chat: "question, history: dspy.History -> answer" (sessions.json)
Registering is idempotent: the same content returns the existing version.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "python"))

from dspy_pool_client import Client, DSPyPoolError, RetryPolicy  # noqa: E402

PROGRAMS = {
    "ghz-qa": "question -> answer",
    "ghz-chat": "question, history: dspy.History -> answer",
}


def wait_serving(client: Client, timeout_s: float) -> bool:
    """Poll the health service: programs are validated on a worker, so wait for the pool first."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if client.health(timeout=2.0) == "SERVING":
                return True
        except DSPyPoolError:
            pass  # not listening yet
        time.sleep(0.2)
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    with Client(args.target, default_timeout=args.timeout, retries=RetryPolicy(max_attempts=40, max_backoff_s=1.0)) as client:
        if not wait_serving(client, args.timeout):
            print(f"{args.target} did not report SERVING within {args.timeout}s", file=sys.stderr)
            return 1
        for name, signature in PROGRAMS.items():
            try:
                program = client.register_program(name, signature)
            except DSPyPoolError as error:
                print(f"register {name}: {error}", file=sys.stderr)
                return 1
            print(f"{name} v{program.version} ({'new' if program.created else 'existing'}): {signature}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
