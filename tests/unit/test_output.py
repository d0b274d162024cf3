"""Worker output reaches the log scrubbed of the operator's key (dspy_pool.pool.output)."""

from structlog.testing import capture_logs

from dspy_pool import redact
from dspy_pool.pool.output import WorkerOutputLog

KEY = "unit-operator-key-Zq81xPw"  # shaped like no provider key: only the configured secret catches it


def test_a_printed_key_is_scrubbed_before_it_is_logged():
    """A line carrying the key is logged with the key masked, whole or cut to length."""
    output = WorkerOutputLog(worker_id=1, pid=10, stream="stdout", redactor=redact.Redactor(KEY))
    with capture_logs() as logs:
        output.data_received(f"debug: key {KEY}\n".encode() + b"x" * 1990 + KEY.encode() + b"\n")
    assert [e["event"] for e in logs] == ["worker_output", "worker_output"]
    assert KEY[:10] not in str(logs)  # scrubbed before the cut, so no prefix survives at the boundary
    assert "[redacted]" in logs[0]["line"] and logs[1]["line"].endswith("[redacted]")


def test_keys_handed_to_the_zygote_are_scrubbed_by_default():
    """Without an explicit redactor, output is scrubbed of every key this process gave a zygote."""
    redact.remember(KEY)
    output = WorkerOutputLog(worker_id=2, pid=11, stream="stderr")
    with capture_logs() as logs:
        output.data_received(f"{KEY}\n".encode())
        output.eof_received()
    assert logs[0]["line"] == redact.MASK
