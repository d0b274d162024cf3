"""Fail a ghz run whose calls failed: ghz itself exits 0 whatever its RPCs returned.

    python clients/ghz/check_report.py REPORT.json [REPORT.json ...]

Reads ghz's JSON report (`-O json`) and prints one line per report. Exits 1 when a
report is missing or unreadable, when any call ended with a status other than OK
(`statusCodeDistribution`; a call that failed without a gRPC status is counted
under ""), or when no call succeeded; 0 otherwise. Standard library only.
"""

from __future__ import annotations

import json
import sys
from typing import Any

_SHOWN_ERRORS = 3


def problems(report: dict[str, Any]) -> list[str]:
    """What makes this run a failure; empty when every call returned OK."""
    statuses: dict[str, int] = report.get("statusCodeDistribution") or {}
    found = []
    failed = {status or "(no status)": count for status, count in statuses.items() if status != "OK" and count}
    if failed:
        found.append("non-OK statuses " + ", ".join(f"{status}={count}" for status, count in sorted(failed.items())))
    if not statuses.get("OK"):
        found.append(f"no call succeeded ({report.get('count', 0)} calls)")
    errors: dict[str, int] = report.get("errorDistribution") or {}
    if errors and not failed:
        found.append(f"{sum(errors.values())} calls failed")
    for message, count in sorted(errors.items(), key=lambda item: -item[1])[:_SHOWN_ERRORS]:
        found.append(f"{count}x {message}")
    return found


def summary(report: dict[str, Any]) -> str:
    statuses = report.get("statusCodeDistribution") or {}
    return (f"{report.get('count', 0)} calls, {statuses.get('OK', 0)} OK, "
            f"{float(report.get('rps') or 0):.1f} calls/s, end: {report.get('endReason') or '?'}")


def check(path: str) -> bool:
    try:
        with open(path, encoding="utf-8") as file:
            report = json.load(file)
        if not isinstance(report, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as error:
        print(f"{path}: FAILED: no readable ghz JSON report ({error})")
        return False
    found = problems(report)
    print(f"{path}: {summary(report)}: {'FAILED: ' + '; '.join(found) if found else 'ok'}")
    return not found


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    results = [check(path) for path in argv]  # every report is read and printed, not only up to the first failure
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
