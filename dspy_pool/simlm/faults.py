"""Fault injection for the simulated LM: what goes wrong, and how slowly.

A FaultConfig is an immutable value; the server swaps in a new one when
/admin/faults is posted. `decide` draws one outcome per request and
`sample_latency_s` one delay, both from a random.Random the caller seeds,
so a run with the same seed and the same request order fails the same way.

Latency specs (milliseconds): "fixed:20" (or a bare number), "uniform:10:30",
"lognormal:20:0.5" (median, sigma), "exp:20" (mean).
"""

from __future__ import annotations

import enum
import math
import random
from dataclasses import asdict, dataclass, fields
from functools import lru_cache
from typing import Any


class Outcome(enum.Enum):
    """What the server does with one chat-completion request."""

    OK = "ok"
    ERROR_500 = "error_500"
    RATE_LIMIT_429 = "rate_limit_429"
    HANG = "hang"
    MALFORMED = "malformed"
    DISCONNECT = "disconnect"
    AUTH_401 = "auth_401"
    BAD_REQUEST_400 = "bad_request_400"


# The order in which rates claim their slice of [0, 1); OK takes the rest.
_RATED_OUTCOMES = (
    ("error_rate", Outcome.ERROR_500),
    ("rate_limit_rate", Outcome.RATE_LIMIT_429),
    ("hang_rate", Outcome.HANG),
    ("malformed_rate", Outcome.MALFORMED),
    ("disconnect_rate", Outcome.DISCONNECT),
    # Appended last so a seeded run that leaves them at 0 draws as it did before they existed.
    ("auth_error_rate", Outcome.AUTH_401),
    ("bad_request_rate", Outcome.BAD_REQUEST_400),
)
_LATENCY_ARITY = {"fixed": 1, "uniform": 2, "lognormal": 2, "exp": 1}


@dataclass(frozen=True, slots=True)
class LatencySpec:
    """A parsed latency distribution; parameters in milliseconds (sigma unitless)."""

    kind: str
    params: tuple[float, ...]

    @classmethod
    def parse(cls, spec: Any) -> LatencySpec:
        """Parse "kind:a[:b]" or a bare number of milliseconds; ValueError says what is wrong."""
        if isinstance(spec, bool):
            raise ValueError(f"latency must be a number of ms or a spec like 'fixed:20', got {spec!r}")
        if isinstance(spec, (int, float)):
            return cls._checked("fixed", (float(spec),), spec)
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"latency must be a number of ms or a spec like 'fixed:20', got {spec!r}")
        head, *rest = spec.strip().split(":")
        if not rest:
            head, rest = "fixed", [head]
        if head not in _LATENCY_ARITY:
            raise ValueError(f"latency kind must be one of {sorted(_LATENCY_ARITY)}, got {head!r} in {spec!r}")
        if len(rest) != _LATENCY_ARITY[head]:
            raise ValueError(f"latency {head!r} takes {_LATENCY_ARITY[head]} parameter(s), got {spec!r}")
        try:
            params = tuple(float(p) for p in rest)
        except ValueError:
            raise ValueError(f"latency parameters must be numbers, got {spec!r}") from None
        return cls._checked(head, params, spec)

    @classmethod
    def _checked(cls, kind: str, params: tuple[float, ...], spec: Any) -> LatencySpec:
        if not all(math.isfinite(p) and p >= 0 for p in params):
            raise ValueError(f"latency parameters must be finite and >= 0, got {spec!r}")
        if kind == "uniform" and params[0] > params[1]:
            raise ValueError(f"uniform latency needs low <= high, got {spec!r}")
        return cls(kind, params)

    def __str__(self) -> str:
        return ":".join([self.kind, *(f"{p:g}" for p in self.params)])


@dataclass(frozen=True, slots=True)
class FaultConfig:
    """Rates (each 0..1, summing to at most 1) of each failure, and the latency spec."""

    error_rate: float = 0.0
    rate_limit_rate: float = 0.0
    hang_rate: float = 0.0
    malformed_rate: float = 0.0
    disconnect_rate: float = 0.0
    auth_error_rate: float = 0.0
    bad_request_rate: float = 0.0
    latency: str = "fixed:0"
    retry_after_s: int = 1

    def __post_init__(self) -> None:
        for name, _ in _RATED_OUTCOMES:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a number between 0 and 1, got {value!r}")
            object.__setattr__(self, name, float(value))
        total = sum(getattr(self, name) for name, _ in _RATED_OUTCOMES)
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates must sum to at most 1, got {total:g}")
        object.__setattr__(self, "latency", str(LatencySpec.parse(self.latency)))
        retry = self.retry_after_s
        if isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
            raise ValueError(f"retry_after_s must be an integer >= 0, got {retry!r}")

    @property
    def latency_spec(self) -> LatencySpec:
        return _parsed_latency(self.latency)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultConfig:
        """Build from a JSON object; unknown keys are an error, not silently ignored."""
        if not isinstance(data, dict):
            raise ValueError(f"fault config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown fault config keys {unknown}; known keys are {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def merged(self, patch: dict[str, Any]) -> FaultConfig:
        """This config with the keys of patch replaced, validated as a whole."""
        if not isinstance(patch, dict):
            raise ValueError(f"fault config must be a JSON object, got {type(patch).__name__}")
        return FaultConfig.from_dict({**self.to_dict(), **patch})


@dataclass(frozen=True, slots=True)
class Refusal:
    """An error response in OpenAI's shape: what a provider says when it will not take the request."""

    status: int
    message: str
    type: str
    code: str


# Refusals a provider gives at once, before any work: the ones our error table must
# never retry (a 401 answers the same way every time). The code fields are the
# provider codes DSPy reads to tell an auth failure or an over-long prompt apart.
REFUSALS: dict[Outcome, Refusal] = {
    Outcome.AUTH_401: Refusal(401, "simulated: incorrect API key provided", "invalid_request_error", "invalid_api_key"),
    Outcome.BAD_REQUEST_400: Refusal(
        400, "simulated: this model's maximum context length is exceeded", "invalid_request_error", "context_length_exceeded"
    ),
}


@lru_cache(maxsize=64)
def _parsed_latency(spec: str) -> LatencySpec:
    """Parsing once per distinct spec keeps the per-request cost to a dict lookup."""
    return LatencySpec.parse(spec)


def decide(config: FaultConfig, rng: random.Random) -> Outcome:
    """The outcome of one request: one uniform draw against the cumulative rates."""
    draw = rng.random()
    edge = 0.0
    for name, outcome in _RATED_OUTCOMES:
        edge += getattr(config, name)
        if draw < edge:
            return outcome
    return Outcome.OK


def sample_latency_s(config: FaultConfig, rng: random.Random) -> float:
    """One delay in seconds; fixed latency draws nothing, keeping outcome draws aligned."""
    return latency_s(config.latency_spec, rng)


def latency_s(spec: LatencySpec, rng: random.Random) -> float:
    """One delay in seconds drawn from a parsed spec."""
    if spec.kind == "fixed":
        ms = spec.params[0]
    elif spec.kind == "uniform":
        ms = rng.uniform(*spec.params)
    elif spec.kind == "lognormal":
        median, sigma = spec.params
        ms = median * math.exp(sigma * rng.gauss(0.0, 1.0)) if median > 0 else 0.0
    else:
        mean = spec.params[0]
        ms = rng.expovariate(1.0 / mean) if mean > 0 else 0.0
    return ms / 1000.0
