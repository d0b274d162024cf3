"""Tagging a worker's output lines with the call that wrote them."""

from __future__ import annotations

import asyncio
import contextvars
import io

from dspy_pool.pool import calltag


def test_lines_outside_a_call_pass_unmarked_and_split_returns_no_fields():
    """No call running: the line is unchanged, and split() finds nothing to lift."""
    assert contextvars.Context().run(calltag.tagged, "hello") == "hello"
    assert calltag.split("hello") == ({}, "hello")


def test_a_line_written_during_a_call_carries_its_request_id_and_program():
    """begin() in a task's context tags its lines; split() recovers the fields and the text; unsafe characters are replaced."""

    def during_call() -> str:
        calltag.begin("req 1", "qa#abc")
        return calltag.tagged("retrieved 3 passages")

    line = contextvars.Context().run(during_call)
    assert calltag.split(line) == ({"request_id": "req_1", "program": "qa#abc"}, "retrieved 3 passages")


def test_tagging_stream_tags_whole_lines_per_task():
    """Concurrent tasks each tag their own complete lines; a partial line waits for its newline."""
    inner = io.StringIO()
    stream = calltag.TaggingStream(inner)

    async def call(request_id: str) -> None:
        calltag.begin(request_id, "p")
        stream.write(f"from {request_id}")
        stream.write("\n")
        await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(call("a"), call("b"))

    asyncio.run(main())
    stream.write("tail")
    assert inner.getvalue().count("\n") == 2
    split = [calltag.split(line) for line in inner.getvalue().splitlines()]
    assert split == [({"request_id": "a", "program": "p"}, "from a"), ({"request_id": "b", "program": "p"}, "from b")]
    stream.flush()
    assert inner.getvalue().endswith("tail")
