"""Quarantine: a program whose build or warm-up keeps breaking workers is set aside (pure).

    warm-up of a new worker, one program at a time
        │ the worker died or hung building it / running its warm-up calls, or its build failed
        v
    record_fault(state, key, why, threshold) ──> strikes + 1; at `threshold` in a row: quarantined
    record_success(state, key) ──────────────> strikes back to 0 (it built and warmed up cleanly)

Without this, a program that kills every worker building it takes the pool
down: each replacement warms up, builds it, dies, and is replaced again.
Warm-up builds one program at a time, so a fault names exactly one program.
Strikes count in a row: a clean build proves the program can be built, so an
unrelated death (the OOM killer, an operator's SIGKILL) that happens to land
on an innocent program's warm-up is forgiven at its next success.

A quarantined program is left out of warm-up and its calls fail fast with
PROGRAM_QUARANTINED. Keys are per content ("name#hash"), so registering a
fixed version (new content, a new key) is what clears it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

from dspy_pool import errors

__all__ = ["DEFAULT_THRESHOLD", "QuarantineState", "record_fault", "record_success", "refusal"]

DEFAULT_THRESHOLD = 3

_EMPTY: Mapping[str, object] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class QuarantineState:
    strikes: Mapping[str, int] = field(default_factory=lambda: _EMPTY)  # faults in a row, per program key
    quarantined: Mapping[str, str] = field(default_factory=lambda: _EMPTY)  # program key -> why


def record_fault(state: QuarantineState, key: str, why: str, threshold: int) -> QuarantineState:
    """One more fault for `key`; at `threshold` faults in a row it is quarantined with `why` (the last fault)."""
    if key in state.quarantined:
        return state
    strikes = state.strikes.get(key, 0) + 1
    if strikes < max(1, threshold):
        return QuarantineState(_with(state.strikes, key, strikes), state.quarantined)
    reason = f"{strikes} warm-ups in a row failed; last: {why}"
    return QuarantineState(_without(state.strikes, key), _with(state.quarantined, key, reason))


def record_success(state: QuarantineState, key: str) -> QuarantineState:
    """`key` built and warmed up cleanly on a worker: its faults so far were not its own."""
    if key not in state.strikes:
        return state
    return QuarantineState(_without(state.strikes, key), state.quarantined)


def refusal(key: str, why: str) -> errors.PoolError:
    """The error a call to a quarantined program fails with (FAILED_PRECONDITION)."""
    return errors.PoolError(
        f"program {key} is quarantined: {why}. Calls to it fail until a fixed version is registered "
        "(registering new content clears it; check the module kind and its options)",
        kind=errors.ErrorKind.PROGRAM_QUARANTINED,
        metadata={"program_key": key},
    )


def _with(mapping: Mapping, key: str, value) -> Mapping:
    return MappingProxyType({**mapping, key: value})


def _without(mapping: Mapping, key: str) -> Mapping:
    return MappingProxyType({k: v for k, v in mapping.items() if k != key})
