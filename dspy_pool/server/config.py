"""The one typed configuration object, built in one place.

Precedence, lowest to highest: defaults, the named profile
(dspy_pool/profiles/NAME.toml), the config file (TOML), DSPY_POOL_* environment
variables, command-line flags. No other module reads the
environment. The API key comes from DSPY_POOL_LM_API_KEY (or the file) only,
never from a flag, so it never shows in `ps`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from dspy_pool.pool.warmup import WARMUP_MODES

ENV_PREFIX = "DSPY_POOL_"
PROFILES_DIR = pathlib.Path(__file__).resolve().parent.parent / "profiles"
DEFAULT_PROFILE = "balanced"


@dataclass(frozen=True)
class ServerConfig:
    listen: str = "127.0.0.1:50051"
    workers: int = 2
    min_workers: int = 0  # 0: same as workers (no autoscaling unless max_workers is larger)
    max_workers: int = 0  # 0: same as workers
    fixed_workers: int = 0  # operator override: exactly this many, never autoscaled
    warming: str = "parallel"  # parallel, sequential, or staged (min_workers first, the rest in background)
    worker_concurrency: int = 64
    max_queue: int = 1000
    default_deadline_s: float = 30.0
    max_deadline_s: float = 600.0
    lm: str = "sim"
    lm_api_base: str = ""
    lm_api_key: str = field(default="", repr=False)
    lm_num_retries: int = 0
    lm_cache_entries: int = 0
    lm_timeout_s: float = 0.0
    lm_max_tokens: int = 0
    lm_temperature: float = 0.0
    sim_latency: str = "fixed:20"
    programs: tuple[str, ...] = ()
    max_sessions: int = 10000
    session_ttl_s: float = 3600.0
    session_max_turns: int = 50
    max_message_bytes: int = 4 * 1024 * 1024
    max_input_depth: int = 32
    max_programs: int = 1000
    drain_grace_s: float = 10.0
    boot_timeout_s: float = 60.0
    crash_loop_threshold: int = 5
    hang_timeout_s: float = 10.0
    breaker_window: int = 100
    breaker_minimum_calls: int = 20
    breaker_failure_rate: float = 0.5
    breaker_wait_s: float = 5.0
    retry_max_attempts: int = 3
    result_cache_entries: int = 10000
    result_cache_ttl_s: float = 3600.0
    default_fallback: tuple[str, ...] = ()
    fallback_lms: tuple[str, ...] = ()  # "MODEL" or "MODEL@API_BASE": the only LMs a fallback may name
    session_max_in_flight: int = 0  # 0: no per-session limit
    fallback_concurrency: int = 256
    target_queue_wait_s: float = 0.1
    target_load_per_worker: float = 0.7
    upscale_cooldown_s: float = 2.0
    upscale_step_max: int = 4
    downscale_window_s: float = 60.0
    downscale_utilisation: float = 0.3
    downscale_step_fraction: float = 0.5
    warmup: str = "calls"  # before a new worker takes traffic: off, build (programs), calls (build + warmup_inputs)
    warmup_timeout_s: float = 10.0
    memory_budget_bytes: int = 0
    controller_interval_s: float = 0.5
    recycle_max_requests: int = 0
    recycle_max_requests_jitter: int = 0
    recycle_max_rss_bytes: int = 0
    recycle_max_age_s: float = 0.0
    metrics_port: int = -1  # -1: no Prometheus endpoint; 0: any free port
    metrics_addr: str = "127.0.0.1"
    log_format: str = "console"
    log_level: str = "info"

    def __post_init__(self) -> None:
        problems = []
        if self.workers < 1:
            problems.append("workers must be >= 1")
        if self.min_workers < 0 or self.max_workers < 0 or (self.max_workers and self.max_workers < self.min_workers):
            problems.append("need 0 <= min_workers <= max_workers")
        if self.worker_concurrency < 1:
            problems.append("worker_concurrency must be >= 1")
        if self.max_queue < 0:
            problems.append("max_queue must be >= 0")
        if self.default_deadline_s <= 0:
            problems.append("default_deadline_s must be > 0")
        if not self.lm:
            problems.append("lm must be set (sim, dummy or a model id such as openai/gpt-4o-mini)")
        for entry in self.fallback_lms:
            if not entry.split("@", 1)[0]:
                problems.append(f"fallback_lms entry {entry!r} needs a model before '@'")
        if self.warming not in ("parallel", "sequential", "staged"):
            problems.append("warming must be parallel, sequential or staged")
        if self.warmup not in WARMUP_MODES:
            problems.append(f"warmup must be one of {', '.join(WARMUP_MODES)}")
        if not self.warmup_timeout_s > 0:
            problems.append("warmup_timeout_s must be > 0")
        if self.log_format not in ("console", "json"):
            problems.append("log_format must be console or json")
        listen_problem = check_listen(self.listen)
        if listen_problem:
            problems.append(listen_problem)
        if self.result_cache_entries < 1 or not self.result_cache_ttl_s > 0:
            problems.append("result_cache_entries must be >= 1 and result_cache_ttl_s > 0")
        if not 0 <= self.metrics_port <= 65535 and self.metrics_port != -1:
            problems.append(f"metrics_port must be -1 (off), 0 (any free port) or 1-65535, not {self.metrics_port}")
        if problems:
            raise ValueError("invalid configuration: " + "; ".join(problems))


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


_FIELDS = {f.name: f for f in fields(ServerConfig)}


def _coerce(name: str, raw: Any) -> Any:
    kind = type(getattr(ServerConfig(), name))
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


def from_sources(file_values: Mapping[str, Any], environ: Mapping[str, str], flags: Mapping[str, Any]) -> ServerConfig:
    values: dict[str, Any] = {}
    for key, raw in file_values.items():
        name = key.replace("-", "_")
        if name not in _FIELDS:
            raise ValueError(f"unknown setting {key!r} in the config file")
        values[name] = _coerce(name, raw)
    for name in _FIELDS:
        env_name = ENV_PREFIX + name.upper()
        if env_name in environ:
            values[name] = _coerce(name, environ[env_name])
    for name, raw in flags.items():
        if raw is not None and name in _FIELDS:
            values[name] = _coerce(name, raw)
    return ServerConfig(**values)


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Every setting except the API key as a flag; defaults stay None so precedence works."""
    parser.add_argument("--config", help="TOML file with settings (keys as in ServerConfig)")
    parser.add_argument("--profile", default=None, help=f"named settings: {', '.join(profile_names())} (default {DEFAULT_PROFILE}); env {ENV_PREFIX}PROFILE")
    for f in fields(ServerConfig):
        if f.name == "lm_api_key":
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name == "programs":
            parser.add_argument(flag, action="append", help="operator module to import in the zygote (repeatable)")
        else:
            parser.add_argument(flag, default=None, help=f"default: {f.default!r}; env {ENV_PREFIX}{f.name.upper()}")


def load(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServerConfig:
    environ = os.environ if environ is None else environ
    profile = getattr(args, "profile", None) or environ.get(ENV_PREFIX + "PROFILE") or DEFAULT_PROFILE
    file_values: dict[str, Any] = load_profile(profile)
    config_path = args.config or environ.get(ENV_PREFIX + "CONFIG")
    if config_path:
        with open(config_path, "rb") as handle:
            file_values.update(tomllib.load(handle))
    flags = {name: getattr(args, name, None) for name in _FIELDS}
    return from_sources(file_values, environ, flags)


def worker_bounds(config: ServerConfig) -> tuple[int, int, int]:
    """(initial, min, max) workers: --fixed-workers wins, then --min/--max-workers, then --workers."""
    if config.fixed_workers:
        return config.fixed_workers, config.fixed_workers, config.fixed_workers
    minimum = config.min_workers or config.workers
    maximum = max(config.max_workers or config.workers, minimum)
    return min(max(config.workers, minimum), maximum), minimum, maximum


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.toml"))


def load_profile(name: str) -> dict[str, Any]:
    path = PROFILES_DIR / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(profile_names())}")
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def public_view(config: ServerConfig) -> dict[str, Any]:
    """The configuration with secrets removed, for logs and status."""
    view = dataclasses.asdict(config)
    view["lm_api_key"] = "[set]" if config.lm_api_key else ""
    return view
