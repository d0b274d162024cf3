"""Log set-up: the rate limiter for failure floods, redaction of every event."""

from __future__ import annotations

import io
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
