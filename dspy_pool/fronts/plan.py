"""What each of N front processes is told: a pure function of the operator's configuration.

    config (front_processes=N, workers W, metrics port M) ──> front_config(config, i, port) for i in 0..N-1

Every front listens on the same TCP port (SO_REUSEPORT: the kernel spreads new
connections over them) and runs its own zygote and its share of the workers:
ceil(W / N) each, for the initial, minimum and maximum counts alike, so the
group never has fewer workers than asked. The operator's metrics port belongs
to the front supervisor, which serves every front's metrics with a `front`
label; each front exposes its own on a loopback port the supervisor scrapes.
"""

from __future__ import annotations

import math

from dspy_pool.server import config as config_module
from dspy_pool.server.config import ServerConfig

__all__ = ["share", "front_config", "listen_with_port", "port_of"]


def share(total: int, count: int) -> int:
    """One front's share of `total` workers: rounded up, and never 0 where the total was not."""
    return 0 if total == 0 else max(1, math.ceil(total / count))


def port_of(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def listen_with_port(listen: str, port: int) -> str:
    return f"{listen.rpartition(':')[0]}:{port}"


def front_config(config: ServerConfig, port: int) -> ServerConfig:
    """The configuration one front process runs: its share of the workers, the group's port, a private metrics port."""
    pool, count = config.pool, config.server.front_processes
    return config_module.replace(
        config,
        front_processes=1,
        listen=listen_with_port(config.server.listen, port),
        workers=share(pool.workers, count),
        min_workers=share(pool.min_workers, count),
        max_workers=share(pool.max_workers, count),
        fixed_workers=share(pool.fixed_workers, count),
        metrics_port=-1 if config.observe.metrics_port < 0 else 0,
        metrics_addr="127.0.0.1",
    )
