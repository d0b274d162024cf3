"""structlog set-up: one call, at start-up, from the CLI (tests use capture_logs).

Every event passes a redaction step last before rendering, so a key that
reaches any log line (a library's message, an exception) is masked; JSON logs
render exceptions as text fields so tracebacks survive.

The call being served (request id, program) is bound with `bind_call` and
`reset_call`: one context variable set per call, merged into an event only when
a line is actually written (structlog's bind_contextvars costs every call a
variable per key and a dict of tokens, about 1 us, for lines rarely written).
"""

from __future__ import annotations

import contextvars
import logging
import sys

import structlog

from dspy_pool.redact import Redactor


def _redacting(redactor: Redactor):
    def redact(_logger, _method, event_dict):
        return {key: redactor.scrub(value) if isinstance(value, str) else value for key, value in event_dict.items()}

    return redact


_CALL: contextvars.ContextVar[tuple[str, str] | None] = contextvars.ContextVar("dspy_pool_log_call", default=None)


def bind_call(request_id: str, program: str) -> contextvars.Token:
    """Every line logged until `reset_call(token)` in this context (and tasks it starts) carries request_id and program."""
    return _CALL.set((request_id, program))


def reset_call(token: contextvars.Token) -> None:
    _CALL.reset(token)


def without_call() -> contextvars.Context:
    """The current context with no call bound (everything else bound stays: a front's index, say).

    For work a call sets off that outlives it or is not its own (a deadline timer, a cancel's grace
    timer, a worker's respawn): scheduled in the call's context, its lines would carry the call's request_id.
    """
    context = contextvars.copy_context()
    context.run(_CALL.set, None)
    return context


def merge_call(_logger, _method, event_dict):
    """The bound call's fields, under what the event itself says (as merge_contextvars does)."""
    call = _CALL.get()
    if call is None:
        return event_dict
    return {"request_id": call[0], "program": call[1], **event_dict}


def configure(log_format: str = "console", level: str = "info", secrets: tuple[str, ...] = ()) -> None:
    level_number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    json_output = log_format == "json"
    renderer = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    processors = [
        merge_call,  # first, so the call's fields follow the bound contextvars' (front) as they did when bound with them
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso"),
    ]
    if json_output:
        processors.append(structlog.processors.format_exc_info)  # exc_info -> an "exception" text field
    processors += [_redacting(Redactor(*secrets)), renderer]
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(level_number),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )


class RateLimiter:
    """At most `burst` log lines per key in each `interval_s`; the rest are counted, and the next line says how many.

    For failures that arrive in floods (a provider outage fails every call):
    the first few are logged at warning with their message, then one line
    per interval carries the count of the ones left out. `now` is passed in.
    """

    def __init__(self, burst: int = 5, interval_s: float = 10.0) -> None:
        self.burst = burst
        self.interval_s = interval_s
        self._windows: dict[str, tuple[float, int, int]] = {}  # key -> (window start, logged, suppressed)

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """(log this one?, how many were left out since the last line logged for `key`)."""
        start, logged, suppressed = self._windows.get(key, (now, 0, 0))
        if now - start >= self.interval_s:
            start, logged = now, 0
        if logged >= self.burst:
            self._windows[key] = (start, logged, suppressed + 1)
            return False, 0
        self._windows[key] = (start, logged + 1, 0)
        return True, suppressed
