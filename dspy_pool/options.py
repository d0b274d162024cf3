"""What a client may set, typed and bounded: module options and LM call options.

Both come from a ProgramSpec (`module_options`, `lm_options`) and both are
checked against what the operator declared, never passed through:

    module kind  --kinds.register(name, factory, options={"k": Option(int, min=1, max=20)})
    LM calls     --ServerConfig.lm_call_options ("temperature=0:2", "reasoning_effort=low|high")

An option a declaration does not name is refused, and so is a value of the
wrong type or out of range, with InvalidArgument naming the option. The LM's
endpoint, model, key and headers can never be declared as LM call options:
they are the operator's alone (DESIGN.md, hard rule 9).

Light on purpose: the front imports this to check its configuration.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping

from dspy_pool.errors import InvalidArgument

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_TYPES = (bool, int, float, str)

# Keys that decide where an LM request goes, who it claims to be, or how the
# client behaves: never settable by a client, so never allow-listable either.
OPERATOR_ONLY_LM_KEYS = frozenset({
    "model", "api_base", "base_url", "api_key", "api_version", "headers", "extra_headers", "extra_query",
    "extra_body", "organization", "project", "custom_llm_provider", "azure_ad_token_provider", "model_list",
    "provider", "providers", "timeout", "num_retries", "cache", "callbacks", "engine", "rollout_id",
})

# Counts, not amounts: a range for these takes whole numbers only.
_WHOLE_NUMBER_LM_KEYS = frozenset({"max_tokens", "max_completion_tokens", "n", "seed", "top_k", "top_logprobs"})

# Generation settings DSPy's native engine carries as they are (checked against
# DSPy 3.4): anything it cannot carry would send the call through LiteLLM.
DEFAULT_LM_CALL_OPTIONS: tuple[str, ...] = ("temperature=0:2", "top_p=0:1", "max_tokens=1:16384", "n=1:4")


@dataclass(frozen=True)
class Option:
    """One option a client may set: its type, its range or choices, its default.

    `default` None means "not passed on" when the client leaves it out. Numbers
    arrive from protobuf Structs as doubles: an int option takes 3.0 as 3.
    """

    type: type = str
    default: Any = None
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] = ()
    max_chars: int = 1024

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"option type must be one of bool, int, float, str; got {self.type!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"option bounds reversed: min {self.min} > max {self.max}")
        object.__setattr__(self, "choices", tuple(self.choices))
        for choice in self.choices:
            self._typed(choice)
        if self.default is not None:
            try:
                self.check("default", self.default)
            except InvalidArgument as exc:  # the operator's declaration is wrong, not a client's value
                raise ValueError(exc.message) from None

    def check(self, name: str, value: Any) -> Any:
        """The value, normalised to the option's type; InvalidArgument naming `name` if it does not fit."""
        try:
            typed = self._typed(value)
        except ValueError as exc:
            raise InvalidArgument(f"option {name!r}: {exc}") from None
        if self.choices and typed not in self.choices:
            raise InvalidArgument(f"option {name!r}: {value!r} is not one of {', '.join(map(repr, self.choices))}")
        if self.min is not None and typed < self.min:
            raise InvalidArgument(f"option {name!r}: {value!r} is below the minimum {self.min:g}")
        if self.max is not None and typed > self.max:
            raise InvalidArgument(f"option {name!r}: {value!r} is above the maximum {self.max:g}")
        return typed

    def _typed(self, value: Any) -> Any:
        if self.type is bool:
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {_shown(value)}")
            return value
        if self.type is str:
            if not isinstance(value, str):
                raise ValueError(f"expected a string, got {_shown(value)}")
            if len(value) > self.max_chars:
                raise ValueError(f"longer than {self.max_chars} characters")
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"expected a number, got {_shown(value)}")
        if self.type is int:
            if not float(value).is_integer():
                raise ValueError(f"expected a whole number, got {value!r}")
            return int(value)
        return float(value)


def _shown(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {str(value)[:40]!r}"


def check_options(given: Mapping[str, Any], declared: Mapping[str, Option], what: str) -> dict[str, Any]:
    """Declared defaults overlaid with `given`, each checked; InvalidArgument names the first bad option."""
    unknown = sorted(set(given) - set(declared))
    if unknown:
        accepted = ", ".join(sorted(declared)) or "none"
        raise InvalidArgument(f"{what} {unknown[0]!r} is not accepted (accepted: {accepted})")
    checked = {name: option.default for name, option in declared.items() if option.default is not None}
    for name, value in given.items():
        checked[name] = declared[name].check(name, value)
    return checked


def parse_lm_rule(entry: str) -> tuple[str, Option]:
    """"temperature=0:2" (a number in range) or "reasoning_effort=low|high"; ValueError if malformed."""
    name, sep, rule = entry.strip().partition("=")
    name = name.strip()
    if not sep or not _NAME.fullmatch(name):
        raise ValueError(f"lm_call_options entry {entry!r} must be NAME=MIN:MAX or NAME=A|B|C")
    if name in OPERATOR_ONLY_LM_KEYS:
        raise ValueError(f"lm_call_options cannot allow {name!r}: the LM's endpoint, model, key and headers are the operator's")
    if ":" in rule:
        low, _, high = rule.partition(":")
        try:
            bounds = [_number(part) for part in (low, high)]
        except ValueError:
            raise ValueError(f"lm_call_options entry {entry!r}: bounds must be numbers") from None
        return name, Option(int if name in _WHOLE_NUMBER_LM_KEYS else float, min=bounds[0], max=bounds[1])
    choices = tuple(choice.strip() for choice in rule.split("|") if choice.strip())
    if not choices:
        raise ValueError(f"lm_call_options entry {entry!r} names no values")
    return name, Option(str, choices=choices)


def parse_lm_rules(entries: tuple[str, ...] | list[str]) -> dict[str, Option]:
    return dict(parse_lm_rule(entry) for entry in entries)


def _number(text: str) -> int | float:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value
