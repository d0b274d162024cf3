"""The one typed configuration: sections of settings, each declared once, validated once.

Sources, lowest to highest: built-in defaults, the named profile
(dspy_pool/profiles/NAME.toml), the config file (TOML: flat keys or
[section] tables), DSPY_POOL_* environment variables, command-line flags. No
other module reads the environment. The API key comes from
DSPY_POOL_LM_API_KEY (or the file) only, never from a flag, so it never shows
in `ps`.

Every setting is declared once with `setting(...)`: its default, meaning,
unit, choices and bounds. Validation, `--help` and the README's configuration
table (`python scripts/gen_config_docs.py`) all read those declarations, so
they cannot drift apart; a unit test fails when the README's table is stale.

The pool's size: `--workers N` alone means exactly N workers. A profile's
autoscaling bounds apply only when the workers count also comes from the
profile (or when --min-workers/--max-workers are given): the effective
bounds are logged at start-up and shown in GetPoolStatus.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import pathlib
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any, Iterator, Mapping

from dspy_pool.options import DEFAULT_LM_CALL_OPTIONS, parse_lm_rule
from dspy_pool.pool.api import LM_ENGINES, WARMUP_MODES
from dspy_pool.redact import mask_urls_in, url_secrets

ENV_PREFIX = "DSPY_POOL_"
PROFILES_DIR = pathlib.Path(__file__).resolve().parent.parent / "profiles"
DEFAULT_PROFILE = "balanced"
_POOL_BOUNDS = ("min_workers", "max_workers")


def setting(default: Any, meaning: str, *, unit: str = "", choices: tuple[str, ...] = (), minimum: float | None = None,
            maximum: float | None = None, flat: str = "", secret: bool = False, repeatable: bool = False) -> Any:
    """Declare one setting: the one place its default, meaning, unit, choices and bounds are written."""
    metadata = {"meaning": meaning, "unit": unit, "choices": choices, "minimum": minimum, "maximum": maximum,
                "flat": flat, "secret": secret, "repeatable": repeatable}
    return field(default=default, metadata=metadata, repr=not secret)


# Where a setting declares no maximum: what a C int holds (gRPC options and counts end up as one), so a huge value
# is refused naming the setting instead of failing later, deep in a library, after children started. Sizes in bytes
# stay Python ints (a cache of 8 GiB is fine): bounded only where a double still counts them exactly.
_INT_MAXIMUM = 2**31 - 1
_BYTES_MAXIMUM = 2**53


def _check_section(section: Any) -> list[str]:
    problems = []
    for item in fields(section):
        value, meta = getattr(section, item.name), item.metadata
        name = meta["flat"] or item.name
        if meta["choices"] and value not in meta["choices"]:
            problems.append(f"{name} must be one of {', '.join(meta['choices'])}, not {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # NaN passes every comparison below
            problems.append(f"{name} must be a finite number, not {value!r}")
            continue
        if meta["minimum"] is not None and value < meta["minimum"]:
            problems.append(f"{name} must be >= {meta['minimum']}, not {value!r}")
        maximum = meta["maximum"]
        if maximum is None and isinstance(value, int) and not isinstance(value, bool):
            maximum = _BYTES_MAXIMUM if meta["unit"] == "bytes" else _INT_MAXIMUM
        if maximum is not None and value > maximum:
            problems.append(f"{name} must be <= {maximum}, not {value!r}")
    return problems


class _Section:
    def __post_init__(self) -> None:
        problems = _check_section(self) + self.problems()
        if problems:
            raise ValueError("; ".join(problems))

    def problems(self) -> list[str]:
        return []


@dataclass(frozen=True)
class ServerSection(_Section):
    listen: str = setting("127.0.0.1:50051", "gRPC address: HOST:PORT ([v6]:PORT) or unix:PATH; loopback unless asked")
    max_message_bytes: int = setting(4 * 1024 * 1024, "largest accepted request", unit="bytes", minimum=1024, maximum=1 << 30)
    max_input_depth: int = setting(32, "deepest nesting of inputs and spec values", minimum=1, maximum=100)
    client_max_in_flight: int = setting(0, "Execute calls one client may have in flight (x-dspy-pool-client metadata, else "
                                           "its host); beyond it RESOURCE_EXHAUSTED (0: no limit)", minimum=0)
    max_programs: int = setting(1000, "program versions the registry holds", minimum=1)
    max_program_bytes: int = setting(1 << 20, "largest program spec (serialized: signature, instructions, demos, saved state); "
                                              "past it RegisterProgram is INVALID_ARGUMENT", unit="bytes", minimum=1024)
    max_programs_bytes: int = setting(128 << 20, "the program versions the registry holds, together (serialized specs): "
                                                 "past it RegisterProgram is RESOURCE_EXHAUSTED", unit="bytes", minimum=1024)
    default_deadline_s: float = setting(30.0, "deadline for calls that set none (capped at max_deadline_s)", unit="s", minimum=0.001)
    max_deadline_s: float = setting(600.0, "longest deadline a call may ask for, or get by default", unit="s", minimum=0.001)
    drain_grace_s: float = setting(10.0, "time to finish calls on SIGTERM/SIGINT/SIGHUP before they end UNAVAILABLE", unit="s", minimum=0)
    front_processes: int = setting(1, "front processes sharing the listening port (SO_REUSEPORT), each with its share of the workers; "
                                      "they share sessions and programs through the state store", minimum=1, maximum=64)
    keepalive_s: float = setting(60.0, "ping a client's connection after this long without traffic; one that does not answer within "
                                       "--keepalive-timeout-s is closed and its calls end (0: never ping)", unit="s", minimum=0)
    keepalive_timeout_s: float = setting(20.0, "how long a keepalive ping may go unanswered", unit="s", minimum=0.001)
    client_keepalive_min_s: float = setting(10.0, "the shortest interval between a client's own keepalive pings the server "
                                                  "accepts, with or without calls (more often: the connection is closed, "
                                                  "too_many_pings)", unit="s", minimum=0.001)
    max_connection_age_s: float = setting(0.0, "close a connection this old, after its calls finish (within --max-deadline-s), "
                                               "so clients reconnect and spread over replicas behind an L4 balancer "
                                               "(0: never)", unit="s", minimum=0)

    def problems(self) -> list[str]:
        listen = check_listen(self.listen)
        return [listen] if listen else []

    @property
    def effective_default_deadline_s(self) -> float:
        """A call that sets no deadline gets the default, capped like any other at max_deadline_s."""
        return min(self.default_deadline_s, self.max_deadline_s)


@dataclass(frozen=True)
class PoolSection(_Section):
    workers: int = setting(2, "worker processes at start (alone: exactly this many; see min/max_workers)", minimum=1)
    min_workers: int = setting(0, "autoscaling lower bound (0: = workers)", minimum=0)
    max_workers: int = setting(0, "autoscaling upper bound (0: = workers)", minimum=0)
    fixed_workers: int = setting(0, "exactly this many workers, never autoscaled, whatever min/max_workers say (0: off)", minimum=0)
    worker_concurrency: int = setting(64, "calls one worker runs at once", minimum=1)
    max_queue: int = setting(1000, "calls waiting for a slot; beyond it RESOURCE_EXHAUSTED", minimum=0)
    warming: str = setting("parallel", "how the first workers start: all at once, one by one, or min first", choices=("parallel", "sequential", "staged"))
    warmup: str = setting("calls", "before a joining worker takes traffic: nothing, build programs, or build and run warmup_inputs", choices=WARMUP_MODES)
    warmup_timeout_s: float = setting(10.0, "bound on one worker's warm-up", unit="s", minimum=0.001)
    boot_timeout_s: float = setting(60.0, "a worker not ready by then counts as a boot failure", unit="s", minimum=0.1)
    crash_loop_threshold: int = setting(5, "boot failures in a row before respawning stops (NOT_SERVING)", minimum=1)
    hang_timeout_s: float = setting(10.0, "a worker silent to pings this long is killed (it gets no new calls after one missed ping); "
                                          "so is a front of a group silent to health checks",
                                    unit="s", minimum=0.1)
    quarantine_after: int = setting(3, "warm-up faults in a row (a build or warm-up call that kills or hangs a worker) "
                                       "before a program is quarantined", minimum=1)
    programs: tuple[str, ...] = setting((), "operator module imported in the zygote (kinds, metrics, tools)", repeatable=True)

    def problems(self) -> list[str]:
        if self.max_workers and self.max_workers < self.min_workers:
            return ["need min_workers <= max_workers"]
        return []


@dataclass(frozen=True)
class LMSection(_Section):
    model: str = setting("sim", "sim (simulated HTTP LM), dummy (in-worker, no HTTP) or a dspy.LM model id", flat="lm")
    api_base: str = setting("", "provider endpoint", flat="lm_api_base")
    api_key: str = setting("", "provider key (DSPY_POOL_LM_API_KEY or the config file only)", flat="lm_api_key", secret=True)
    num_retries: int = setting(0, "DSPy's own retries of transient provider errors", flat="lm_num_retries", minimum=0, maximum=10)
    cache_entries: int = setting(0, "in-memory response cache per worker (0: off)", flat="lm_cache_entries", minimum=0)
    timeout_s: float = setting(0.0, "per-request LM timeout (0: derived from each call's deadline)", unit="s", flat="lm_timeout_s", minimum=0)
    max_tokens: int = setting(0, "max_tokens sent with every request (0: provider default)", flat="lm_max_tokens", minimum=0)
    temperature: float = setting(0.0, "temperature sent with every request (0: provider default)", flat="lm_temperature", minimum=0, maximum=2)
    engine: str = setting("auto", "LM client: lean (dspy-pool's OpenAI-compatible client), DSPy's lm15 or litellm engine, or auto "
                                  "(lean for OpenAI-compatible endpoints not behind a proxy, DSPy's choice otherwise)",
                          flat="lm_engine", choices=LM_ENGINES)
    sim_latency: str = setting("fixed:20", "simulated LM latency: fixed:MS, uniform:LO:HI, lognormal:MEDIAN:SIGMA, exp:MEAN")
    fallback_lms: tuple[str, ...] = setting((), "LMs a fallback may name, MODEL or MODEL@API_BASE; clients name only the model", repeatable=True)
    call_options: tuple[str, ...] = setting(DEFAULT_LM_CALL_OPTIONS, "what a spec's lm_options may set: NAME=MIN:MAX or NAME=A|B|C "
                                            "(never the endpoint, model, key or headers)", flat="lm_call_options", repeatable=True)

    def problems(self) -> list[str]:
        problems = [] if self.model else ["lm must be set (sim, dummy or a model id such as openai/gpt-4o-mini)"]
        problems += [f"fallback_lms entry {entry!r} needs a model before '@'" for entry in self.fallback_lms if not entry.split("@", 1)[0]]
        for entry in self.call_options:
            try:
                parse_lm_rule(entry)
            except ValueError as exc:
                problems.append(str(exc))
        return problems


@dataclass(frozen=True)
class SessionSection(_Section):
    max_sessions: int = setting(10000, "sessions held at once", minimum=1)
    ttl_s: float = setting(3600.0, "a session idle this long expires", unit="s", flat="session_ttl_s", minimum=1)
    max_turns: int = setting(50, "turns of history kept per session", flat="session_max_turns", minimum=1)
    history_max_bytes: int = setting(2 * 1024 * 1024, "a session's turns kept, and the history a program receives: the newest "
                                     "whose JSON fits this (GetSession returns them, up to half of --max-message-bytes)", unit="bytes", flat="session_history_max_bytes", minimum=1024)
    max_in_flight: int = setting(0, "calls one session may have running (0: no limit)", flat="session_max_in_flight", minimum=0)
    protect_s: float = setting(60.0, "at the cap, sessions used this recently are never evicted (new ones are refused)", unit="s",
                               flat="session_protect_s", minimum=0)


@dataclass(frozen=True)
class StateSection(_Section):
    url: str = setting("sqlite", "where state lives: sqlite (a file in state_dir), sqlite:///PATH, redis://HOST:PORT/DB "
                                 "(replicas share it) or memory (gone at exit)", flat="state")
    dir: str = setting("./.dspy-pool", "folder of the embedded store (--state sqlite)", flat="state_dir")
    programs_file: str = setting("", "YAML, TOML or JSON file of program specs registered before SERVING (idempotent)")

    def problems(self) -> list[str]:
        if self.url in ("sqlite", "memory") or self.url.startswith(("sqlite:///", "redis://", "rediss://", "unix://")):
            return []
        return [f"state {self.url!r} must be sqlite, sqlite:///PATH, redis://HOST:PORT/DB or memory"]


@dataclass(frozen=True)
class OptimizeSection(_Section):
    optimizer_workers: int = setting(1, "processes that run optimization jobs (niced, never serving calls; 0: optimization off)",
                                     minimum=0, maximum=64)
    optimizer_threads: int = setting(4, "concurrent LM calls of one optimization job", minimum=1, maximum=64)
    optimization_max_queue: int = setting(100, "optimization jobs waiting; beyond it StartOptimization is RESOURCE_EXHAUSTED", minimum=1)
    optimization_jobs_kept: int = setting(10_000, "finished optimization jobs the store keeps, the newest (older ones are "
                                          "pruned as new jobs start)", minimum=1)
    optimizer_lms: tuple[str, ...] = setting((), "LMs an llm_judge metric or GEPA's reflection may name: MODEL or MODEL@API_BASE",
                                             repeatable=True)
    dataset_max_examples: int = setting(10_000, "examples one dataset holds at most", minimum=1)
    max_datasets: int = setting(1000, "datasets the store holds at most; a new one beyond is RESOURCE_EXHAUSTED", minimum=1)
    example_max_bytes: int = setting(64 * 1024, "largest example (inputs and expected outputs)", unit="bytes", minimum=64)
    capture_max_bytes: int = setting(64 * 1024 * 1024, "captured calls' inputs and outputs held for feedback, in all (the oldest "
                                     "go first)", unit="bytes", minimum=1024)
    auto_optimize_tick_s: float = setting(5.0, "how often a policy's auto_optimize thresholds are checked", unit="s", minimum=0.05)


@dataclass(frozen=True)
class ResilienceSection(_Section):
    breaker_window: int = setting(100, "circuit breaker per (program, LM endpoint): last N calls", minimum=1)
    breaker_minimum_calls: int = setting(20, "calls in the window before the breaker may trip", minimum=1)
    breaker_failure_rate: float = setting(0.5, "failure rate that trips the breaker", minimum=0.01, maximum=1.0)
    breaker_wait_s: float = setting(5.0, "open time before a probe (doubles per consecutive trip, capped)", unit="s", minimum=0.01)
    retry_max_attempts: int = setting(3, "attempts for transient failures that cannot have run, under a budget of ~20% of calls", minimum=1, maximum=10)
    result_cache_entries: int = setting(10000, "results the memory level holds at most (programs whose cache policy keeps them)", minimum=1)
    result_cache_ttl_s: float = setting(3600.0, "how long a cached result stays usable (a spec's cache.ttl_s overrides it)", unit="s", minimum=0.001)
    result_cache_max_bytes: int = setting(64 * 1024 * 1024, "the memory level's bound on cached results", unit="bytes", minimum=1024)
    result_cache_store_max_bytes: int = setting(256 * 1024 * 1024, "the store level's bound on cached results (the SQLite file or "
                                                "Redis; the entries that expire soonest make room): kept apart from "
                                                "sessions and programs, so caching never fills what they need",
                                                unit="bytes", minimum=1024)
    result_cache_warm_entries: int = setting(1000, "most-hit entries loaded from the store into memory at start-up", minimum=0)
    default_fallback: tuple[str, ...] = setting((), "fallback chain for programs that set none, e.g. cache,static (a lm, program "
                                                    "or static step applies to the programs whose spec gives its LM, program "
                                                    "or outputs)")
    fallback_concurrency: int = setting(256, "fallbacks doing work at once", minimum=0)

    def problems(self) -> list[str]:
        from dspy_pool.server.fallback import check_default_chain  # imports grpc: not for `dspy-pool --help`

        try:
            check_default_chain(self.default_fallback)
        except ValueError as exc:
            return [f"default_fallback: {exc}"]
        return []


@dataclass(frozen=True)
class ScalingSection(_Section):
    target_queue_wait_s: float = setting(0.1, "queue-wait p95 the autoscaler aims under", unit="s", minimum=0.001)
    target_load_per_worker: float = setting(0.7, "busy slots per worker slot the autoscaler aims at", minimum=0.05, maximum=1.0)
    upscale_cooldown_s: float = setting(2.0, "wait between queue-driven scale-ups", unit="s", minimum=0)
    upscale_step_max: int = setting(4, "workers added per scale-up at most", minimum=1)
    downscale_window_s: float = setting(60.0, "idle time before shrinking", unit="s", minimum=0)
    downscale_utilisation: float = setting(0.3, "utilisation under which the pool may shrink", minimum=0, maximum=1)
    downscale_step_fraction: float = setting(0.5, "share of the surplus shed per step", minimum=0.01, maximum=1)
    memory_budget_bytes: int = setting(0, "caps growth by measured worker RSS (0: none)", unit="bytes", minimum=0)
    controller_interval_s: float = setting(0.5, "autoscaler tick", unit="s", minimum=0.01)
    recycle_max_requests: int = setting(0, "replace a worker after this many calls (0: never)", minimum=0)
    recycle_max_requests_jitter: int = setting(0, "random extra calls per worker, so they do not all go at once", minimum=0)
    recycle_max_rss_bytes: int = setting(0, "replace a worker past this RSS (0: never)", unit="bytes", minimum=0)
    recycle_max_age_s: float = setting(0.0, "replace a worker after this age (0: never)", unit="s", minimum=0)


@dataclass(frozen=True)
class ObserveSection(_Section):
    metrics_port: int = setting(-1, "Prometheus endpoint port (-1: off, 0: any free port)", minimum=-1, maximum=65535)
    metrics_addr: str = setting("127.0.0.1", "Prometheus endpoint address")
    log_format: str = setting("console", "log lines as text or JSON", choices=("console", "json"))
    log_level: str = setting("info", "lowest level logged", choices=("debug", "info", "warning", "error"))


SECTIONS: dict[str, type] = {
    "server": ServerSection, "pool": PoolSection, "lm": LMSection, "state": StateSection, "sessions": SessionSection,
    "resilience": ResilienceSection, "optimize": OptimizeSection, "scaling": ScalingSection, "observe": ObserveSection,
}


@dataclass(frozen=True)
class ServerConfig:
    server: ServerSection = field(default_factory=ServerSection)
    pool: PoolSection = field(default_factory=PoolSection)
    lm: LMSection = field(default_factory=LMSection)
    state: StateSection = field(default_factory=StateSection)
    sessions: SessionSection = field(default_factory=SessionSection)
    resilience: ResilienceSection = field(default_factory=ResilienceSection)
    optimize: OptimizeSection = field(default_factory=OptimizeSection)
    scaling: ScalingSection = field(default_factory=ScalingSection)
    observe: ObserveSection = field(default_factory=ObserveSection)

    def __post_init__(self) -> None:
        problems = front_group_problems(self)
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))


def front_group_problems(config: ServerConfig) -> list[str]:
    """Several front processes share one TCP port and see each other's programs and sessions only through a shared store."""
    if config.server.front_processes == 1:
        return []
    problems = []
    if config.server.listen.startswith("unix:"):
        problems.append("front_processes > 1 needs a TCP listen address (SO_REUSEPORT), not a unix: socket")
    if config.state.url == "memory":
        problems.append("front_processes > 1 needs a state store the fronts share: sqlite (the default) or redis://, not memory")
    return problems


@dataclass(frozen=True)
class Setting:
    """One declared setting, as flags, env, docs and the flat view see it."""

    section: str
    attribute: str
    name: str  # flat name: the flag (--name-with-dashes), the env var (DSPY_POOL_NAME) and the TOML key
    kind: type
    default: Any
    meaning: str
    unit: str
    choices: tuple[str, ...]
    secret: bool
    repeatable: bool

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()


def settings() -> Iterator[Setting]:
    for section_name, section in SECTIONS.items():
        hints = {f.name: f for f in fields(section)}
        for item in fields(section):
            meta = hints[item.name].metadata
            yield Setting(section_name, item.name, meta["flat"] or item.name, type(item.default), item.default, meta["meaning"],
                          meta["unit"], tuple(meta["choices"]), meta["secret"], meta["repeatable"])


_BY_NAME: dict[str, Setting] = {s.name: s for s in settings()}


def check_listen(listen: str) -> str:
    """A problem with a listen address, or "" when it is HOST:PORT (port 0-65535; [v6]:PORT) or unix:PATH.

    grpc itself accepts "127.0.0.1" (and quietly picks port 443) or
    "localhost:99999" (and quietly wraps the port): refuse both here.
    """
    if listen.startswith("unix:"):
        return "" if listen[len("unix:"):].strip("/") else f"listen {listen!r}: unix: needs a socket path"
    host, sep, port = listen.rpartition(":")
    if not sep or not host or (":" in host and not (host.startswith("[") and host.endswith("]"))):
        return f"listen {listen!r} must be HOST:PORT (e.g. 127.0.0.1:50051, [::1]:50051) or unix:PATH"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        return f"listen {listen!r}: port must be a number from 0 to 65535"
    return ""


def _coerce(name: str, raw: Any) -> Any:
    kind = _BY_NAME[name].kind
    if kind is tuple:
        return tuple(raw) if isinstance(raw, (list, tuple)) else tuple(p for p in str(raw).split(",") if p)
    if kind is bool:
        return str(raw).lower() in ("1", "true", "yes", "on")
    if kind is int and (isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer())):
        raise ValueError(f"{name}: {raw!r} is not a whole number")
    try:
        return kind(raw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: cannot read {raw!r} as {kind.__name__}") from None


def build(**values: Any) -> ServerConfig:
    """A config from flat settings (`workers=4, lm="dummy"`); every problem found is reported at once."""
    unknown = sorted(set(values) - set(_BY_NAME))
    if unknown:
        raise ValueError(f"unknown setting(s): {', '.join(unknown)}")
    per_section: dict[str, dict[str, Any]] = {name: {} for name in SECTIONS}
    for name, value in values.items():
        spec = _BY_NAME[name]
        per_section[spec.section][spec.attribute] = value
    built, problems = {}, []
    for name, section in SECTIONS.items():
        try:
            built[name] = section(**per_section[name])
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))
    return ServerConfig(**built)


def flat(config: ServerConfig) -> dict[str, Any]:
    """Every setting by its flat name."""
    return {s.name: getattr(getattr(config, s.section), s.attribute) for s in settings()}


def replace(config: ServerConfig, **values: Any) -> ServerConfig:
    """A copy with some settings changed, by flat name."""
    return build(**{**flat(config), **values})


def _file_values(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """TOML keys: flat (`workers = 2`) or in [section] tables (`[pool] workers = 2`)."""
    values: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name in SECTIONS and isinstance(value, dict):
            for inner_key, inner in value.items():
                in_section = [s for s in _BY_NAME.values() if s.section == name]
                spec = next((s for s in in_section if inner_key.replace("-", "_") in (s.attribute, s.name)), None)
                if spec is None:
                    raise ValueError(f"unknown setting {inner_key!r} in [{name}] of {where}"
                                     + _did_you_mean(inner_key, [s.attribute for s in in_section]))
                values[spec.name] = _coerce(spec.name, inner)
        elif name in _BY_NAME:
            values[name] = _coerce(name, value)
        elif name in SECTIONS:  # `server = 5`: it said "unknown setting 'server'; did you mean 'server'?"
            raise ValueError(f"{key!r} in {where} names a section: write it as a table, [{name}], with its settings "
                             f"under it (not {value!r})")
        else:
            raise ValueError(f"unknown setting {key!r} in {where}" + _did_you_mean(name, [*_BY_NAME, *SECTIONS])
                             + " (a key outside a [section] is the flag's name with underscores: lm_api_key, workers)")
    return values


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def from_sources(profile_values: Mapping[str, Any], file_values: Mapping[str, Any], environ: Mapping[str, str],
                 flags: Mapping[str, Any]) -> ServerConfig:
    profile = _file_values(profile_values, "the profile")
    chosen = _file_values(file_values, "the config file")
    for name, spec in _BY_NAME.items():
        if spec.env in environ:
            chosen[name] = _coerce(name, environ[spec.env])
    for name, raw in flags.items():
        if raw is not None and name in _BY_NAME and not _BY_NAME[name].secret:
            chosen[name] = _coerce(name, raw)
    if "workers" in chosen and not any(bound in chosen for bound in _POOL_BOUNDS):
        # An explicit worker count means that many: a profile's autoscaling bounds must not quietly widen it.
        profile = {name: value for name, value in profile.items() if name not in _POOL_BOUNDS}
    return build(**{**profile, **chosen})


def add_flags(parser: argparse.ArgumentParser, profile: str | None = None, environ: Mapping[str, str] | None = None) -> None:
    """Every setting except the API key as a flag; help shows meaning, unit, choices and the effective default
    (under `profile`, else $DSPY_POOL_PROFILE, else the default profile)."""
    environ = os.environ if environ is None else environ
    profile = profile or environ.get(ENV_PREFIX + "PROFILE") or DEFAULT_PROFILE
    profile_values = _file_values(load_profile(profile), "the profile") if profile in profile_names() else {}
    parser.add_argument("--config", help="TOML file with settings (flat keys or [section] tables)")
    parser.add_argument("--profile", default=None, help=f"named settings: {', '.join(profile_names())} (default {DEFAULT_PROFILE}); env {ENV_PREFIX}PROFILE")
    for spec in settings():
        if spec.secret:
            continue
        help_text = describe(spec, profile, profile_values)
        if spec.repeatable:
            parser.add_argument(spec.flag, dest=spec.name, action="append", default=None, help=help_text)
        else:
            parser.add_argument(spec.flag, dest=spec.name, default=None, help=help_text)


def _shown(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value) if value else "(none)"
    return repr(value) if isinstance(value, str) else str(value)


def describe(spec: Setting, profile: str, profile_values: Mapping[str, Any]) -> str:
    parts = [spec.meaning + (f" [{spec.unit}]" if spec.unit else "")]
    if spec.choices:
        parts.append("choices: " + ", ".join(spec.choices))
    if spec.name in profile_values and profile_values[spec.name] != spec.default:
        parts.append(f"default: {_shown(profile_values[spec.name])} (profile {profile}; built in {_shown(spec.default)})")
    else:
        parts.append(f"default: {_shown(spec.default)}")
    parts.append(f"env {spec.env}")
    return "; ".join(parts).replace("%", "%%")


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    environ = os.environ if environ is None else environ
    profile = getattr(args, "profile", None) or environ.get(ENV_PREFIX + "PROFILE") or DEFAULT_PROFILE
    file_values: dict[str, Any] = {}
    config_path = getattr(args, "config", None) or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        with open(config_path, "rb") as handle:
            try:
                file_values = tomllib.load(handle)
            except tomllib.TOMLDecodeError as exc:  # its message names the line, not the file
                raise ValueError(f"{config_path}: not valid TOML: {exc}") from None
    flags = {name: getattr(args, name, None) for name in _BY_NAME}
    return from_sources(load_profile(profile), file_values, environ, flags)


def worker_bounds(config: ServerConfig) -> tuple[int, int, int]:
    """(initial, min, max) workers: --fixed-workers wins, then --min/--max-workers, then --workers."""
    pool = config.pool
    if pool.fixed_workers:
        return pool.fixed_workers, pool.fixed_workers, pool.fixed_workers
    minimum = pool.min_workers or pool.workers
    maximum = max(pool.max_workers or pool.workers, minimum)
    return min(max(pool.workers, minimum), maximum), minimum, maximum


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_profile(name: str) -> dict[str, Any]:
    path = PROFILES_DIR / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(profile_names())}")
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def public_view(config: ServerConfig) -> dict[str, Any]:
    """The configuration with secrets removed, for logs and status: secret settings say only whether they are set,
    and URLs (an LM endpoint, a Redis URL, MODEL@URL entries) lose their credentials."""
    view = {}
    for name, section in SECTIONS.items():
        values = {key: _masked(value) for key, value in dataclasses.asdict(getattr(config, name)).items()}
        for spec in settings():
            if spec.section == name and spec.secret:
                values[spec.attribute] = "[set]" if values[spec.attribute] else ""
        view[name] = values
    return view


def _masked(value: Any) -> Any:
    if isinstance(value, str):
        return mask_urls_in(value)
    if isinstance(value, (tuple, list)):
        return type(value)(_masked(item) for item in value)
    return value


def secrets_of(config: ServerConfig) -> tuple[str, ...]:
    """What the log redactor scrubs wherever it appears: the LM key and credentials inside configured URLs."""
    urls = (config.lm.api_base, config.state.url, *config.lm.fallback_lms, *config.optimize.optimizer_lms)
    return (config.lm.api_key, *(secret for url in urls for secret in url_secrets(url)))


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def markdown_table() -> str:
    """The README's configuration table, generated from the declarations."""
    balanced = _file_values(load_profile(DEFAULT_PROFILE), "the profile")
    rows = ["| flag | env | file `[section] key` | default | meaning |", "| --- | --- | --- | --- | --- |"]
    for spec in settings():
        flag = "(env or file only)" if spec.secret else f"`{spec.flag}`"
        default = _shown(spec.default)
        if spec.name in balanced and balanced[spec.name] != spec.default:
            default += f" ({_shown(balanced[spec.name])} in profile `balanced`)"
        meaning = spec.meaning + (f" [{spec.unit}]" if spec.unit else "")
        if spec.choices:
            meaning += " (" + " \\| ".join(f"`{choice}`" for choice in spec.choices) + ")"
        rows.append(f"| {flag} | `{spec.env}` | `[{spec.section}] {spec.attribute}` | {_cell(default)} | {meaning if spec.choices else _cell(meaning)} |")
    return "\n".join(rows) + "\n"
