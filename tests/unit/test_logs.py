"""Log set-up: the rate limiter for failure floods, redaction of every event."""

from __future__ import annotations

import json

import structlog

from dspy_pool import logs


def test_rate_limiter_logs_a_burst_then_counts_the_rest():
    """Past `burst` lines in a window the rest are left out; the first line of the next window says how many."""
    limiter = logs.RateLimiter(burst=2, interval_s=10.0)
    decisions = [limiter.allow("lm_timeout", now) for now in (0.0, 1.0, 2.0, 3.0, 4.0)]
    assert decisions == [(True, 0), (True, 0), (False, 0), (False, 0), (False, 0)]
    assert limiter.allow("lm_timeout", 10.5) == (True, 3)
    assert limiter.allow("lm_rate_limited", 10.5) == (True, 0)  # keys are independent


def test_json_logs_keep_tracebacks_and_mask_the_key(capsys):
    """With log_format json an exception's traceback is a field of the line, and the configured key never shows."""
    logs.configure("json", "info", secrets=("sk-test-SECRETKEY123",))
    try:
        log = structlog.get_logger("test")
        try:
            raise RuntimeError("provider said: bad key sk-test-SECRETKEY123")
        except RuntimeError:
            log.exception("call_failed", detail="key sk-test-SECRETKEY123")
        line = json.loads(capsys.readouterr().err.strip().splitlines()[-1])
    finally:
        structlog.reset_defaults()
    assert "Traceback" in line["exception"] and "RuntimeError" in line["exception"]
    assert "SECRETKEY123" not in json.dumps(line)


def test_bound_call_fields_reach_lines_written_during_the_call(capsys):
    """request_id and program bound with bind_call appear on every line until reset_call, and on none after."""
    logs.configure("json", "info")
    try:
        structlog.contextvars.bind_contextvars(front=1)
        log = structlog.get_logger("test")
        token = logs.bind_call("req-1", "qa")
        log.info("during", program="own")  # the event's own value wins
        log.info("during_plain")
        logs.reset_call(token)
        log.info("after")
        lines = [json.loads(line) for line in capsys.readouterr().err.strip().splitlines()[-3:]]
    finally:
        structlog.contextvars.clear_contextvars()
        structlog.reset_defaults()
    assert (lines[0]["request_id"], lines[0]["program"], lines[0]["front"]) == ("req-1", "own", 1)
    assert (lines[1]["request_id"], lines[1]["program"]) == ("req-1", "qa")
    assert "request_id" not in lines[2] and "program" not in lines[2]
