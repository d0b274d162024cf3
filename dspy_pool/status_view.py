"""PoolStatus -> a rich renderable: what `dspy-pool status` prints and `dspy-pool top` redraws.

Pure: a message in, tables out; no I/O, no clock but the one `top` shows as its title.
"""

from __future__ import annotations

import datetime

from rich.console import Group
from rich.table import Table
from rich.text import Text

from dspy_pool.v1 import dspy_pool_pb2 as pb

_MIB = 1024 * 1024


def render(status: pb.PoolStatus, target: str, live: bool = False) -> Group:
    """The summary, the workers, and (when there are any) breakers and quarantined programs."""
    parts = [_title(status, target, live), summary(status), Text(""), workers_table(status)]
    if status.breakers:
        parts += [Text(""), breakers_table(status)]
    if status.quarantined_programs:
        parts += [Text(""), Text("quarantined: " + ", ".join(status.quarantined_programs), style="bold red")]
    if status.state_store_problem:
        parts += [Text(""), Text("state store: " + status.state_store_problem, style="bold red")]
    return Group(*parts)


def _title(status: pb.PoolStatus, target: str, live: bool) -> Text:
    serving = Text("SERVING", style="bold green") if status.serving else Text("NOT SERVING", style="bold red")
    title = Text.assemble(f"dspy-pool at {target}: ", serving, f", up {duration(status.uptime_s)}")
    if live:
        title.append(f"   {datetime.datetime.now().strftime('%H:%M:%S')}  (Ctrl-C to quit)", style="dim")
    return title


def summary(status: pb.PoolStatus) -> Table:
    config = status.config
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("health", f"{status.health_score:.2f}   {status.calls_per_s:.1f} calls/s   lm {config.lm or '-'}")
    grid.add_row("queue", f"{status.queue_depth} of {config.max_queue}   wait p95 {status.queue_wait_p95_ms:.1f} ms"
                          f"   in flight {status.in_flight}")
    grid.add_row("calls", f"{status.completed} completed   {status.failed} failed   {status.rejected} rejected"
                          f"   {status.retries} retries   {status.fallbacks_served} fallbacks")
    grid.add_row("workers", f"{len(status.workers)} (bounds {config.min_workers}-{config.max_workers}, "
                            f"{config.worker_concurrency} calls each)   {status.workers_warming} warming"
                            f"   {status.worker_restarts} restarts   {status.recycled_workers} recycled"
                            f"   cpu {status.worker_cpu_percent:.0f}%")
    grid.add_row("sessions", f"{status.sessions}   {status.sessions_evicted} evicted   {status.sessions_refused} refused")
    grid.add_row("programs", f"{status.programs}   warm-up {status.warmup_calls} calls, {status.warmup_failures} failed")
    if status.fronts:
        grid.add_row("fronts", "   ".join(_front_cell(front) for front in status.fronts))
    return grid


def _front_cell(front: pb.FrontStatus) -> str:
    state = "serving" if front.serving else "NOT serving"
    return f"{front.index}{'*' if front.answered else ''} pid {front.pid} {state}, {front.in_flight} in flight"


def workers_table(status: pb.PoolStatus) -> Table:
    table = Table(title="workers", title_justify="left", box=None, header_style="bold")
    columns = (("front",) if status.fronts else ()) + ("id", "pid", "state", "in flight", "served", "failed", "RSS MiB", "uptime")
    for column in columns:
        table.add_column(column, justify="left" if column == "state" else "right")
    for worker in sorted(status.workers, key=lambda w: (w.front, w.id)):
        front = (str(worker.front),) if status.fronts else ()
        table.add_row(*front, str(worker.id), str(worker.pid), Text(worker.state, style=_STATE_STYLE.get(worker.state, "")),
                      str(worker.in_flight), str(worker.served), str(worker.failed),
                      f"{worker.rss_bytes / _MIB:.1f}", duration(worker.uptime_s))
    return table


_STATE_STYLE = {"ready": "green", "starting": "yellow", "warming": "yellow", "draining": "magenta", "stopped": "red"}
_BREAKER_STYLE = {"closed": "green", "half_open": "yellow", "open": "bold red"}


def breakers_table(status: pb.PoolStatus) -> Table:
    table = Table(title="breakers", title_justify="left", box=None, header_style="bold")
    for column in ("program", "lm endpoint", "state", "failure rate", "calls", "opened"):
        table.add_column(column, justify="right" if column in ("failure rate", "calls", "opened") else "left")
    for breaker in status.breakers:
        rate = "-" if breaker.failure_rate < 0 else f"{breaker.failure_rate:.0%}"
        table.add_row(breaker.program, breaker.lm_endpoint or "-", Text(breaker.state, style=_BREAKER_STYLE.get(breaker.state, "")),
                      rate, str(breaker.calls_in_window), str(breaker.opened_total))
    return table


def duration(seconds: float) -> str:
    """12s, 4m05s, 3h07m, 2d04h: short enough for a table column."""
    seconds = int(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
