"""structlog set-up: one call, at start-up, from the CLI (tests use capture_logs).

Every event passes a redaction step last before rendering, so a key that
reaches any log line (a library's message, an exception) is masked; JSON logs
render exceptions as text fields so tracebacks survive.
"""

from __future__ import annotations

import logging
import sys

import structlog

from dspy_pool.redact import Redactor


def _redacting(redactor: Redactor):
    def redact(_logger, _method, event_dict):
        return {key: redactor.scrub(value) if isinstance(value, str) else value for key, value in event_dict.items()}

    return redact


def configure(log_format: str = "console", level: str = "info", secrets: tuple[str, ...] = ()) -> None:
    level_number = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    json_output = log_format == "json"
    renderer = structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer(colors=False)
    processors = [
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
