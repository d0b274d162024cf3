"""Which version a call runs (pure): the program's execution policy, the call's override, its session.

    traditional  the base version
    optimized    the promoted version (the base, saying "optimization_pending", while there is none)
    hybrid       hybrid_percent of calls to the promoted version; with sticky_sessions a session
                 always takes the same arm (its id picks the arm), otherwise each call is drawn
    evaluation   the base version answers, and the promoted version runs beside it for comparison

A call that names a version runs exactly that version ("version").
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass


class Mode(enum.StrEnum):
    TRADITIONAL = "traditional"
    OPTIMIZED = "optimized"
    HYBRID = "hybrid"
    EVALUATION = "evaluation"


PENDING = "optimization_pending"


@dataclass(frozen=True, slots=True)
class PolicyView:
    """What routing needs of an ExecutionPolicy, with the base version already resolved."""

    mode: Mode = Mode.TRADITIONAL
    base_version: int = 0
    optimized_version: int = 0  # 0: none promoted
    hybrid_percent: float = 0.0
    sticky_sessions: bool = False


@dataclass(frozen=True, slots=True)
class Route:
    version: int
    label: str  # ExecuteResponse.execution_mode
    compare_with: int = 0  # evaluation: the other version to run beside it
    pending: bool = False  # optimized mode with nothing promoted yet: the caller may wait, then says so


_TRADITIONAL_ROUTES: dict[int, Route] = {}  # version -> its traditional Route: most calls take one, none need a new one
_ROUTES_KEPT = 4096


def traditional(version: int) -> Route:
    """Route(version, "traditional"), built once per version (a Route is immutable)."""
    route = _TRADITIONAL_ROUTES.get(version)
    if route is None:
        if len(_TRADITIONAL_ROUTES) >= _ROUTES_KEPT:
            _TRADITIONAL_ROUTES.clear()
        route = _TRADITIONAL_ROUTES[version] = Route(version, Mode.TRADITIONAL.value)
    return route


def parse_mode(name: str) -> Mode:
    try:
        return Mode(name)
    except ValueError:
        raise ValueError(f"mode {name!r} must be one of {', '.join(m.value for m in Mode)}") from None


def arm_bucket(key: str) -> float:
    """A stable number in [0, 100) for a key: the same session always falls in the same place."""
    digest = hashlib.sha256(key.encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000 / 100.0


def route(policy: PolicyView, requested_version: int, requested_mode: str, session_id: str, draw_key: str) -> Route:
    """The version a call runs and how it was chosen; `draw_key` is the call's own id (for non-sticky hybrid draws)."""
    if requested_version:
        return Route(requested_version, "version")
    mode = parse_mode(requested_mode) if requested_mode else policy.mode
    base, promoted = policy.base_version, policy.optimized_version
    if mode is Mode.TRADITIONAL:
        return traditional(base)
    if mode is Mode.OPTIMIZED:
        return Route(promoted, Mode.OPTIMIZED.value) if promoted else Route(base, Mode.TRADITIONAL.value, pending=True)
    if mode is Mode.EVALUATION:
        return Route(base, Mode.EVALUATION.value, compare_with=promoted if promoted and promoted != base else 0)
    if not promoted:
        return Route(base, "hybrid:traditional")
    key = session_id if policy.sticky_sessions and session_id else draw_key
    if arm_bucket(key) < policy.hybrid_percent:
        return Route(promoted, "hybrid:optimized")
    return Route(base, "hybrid:traditional")
