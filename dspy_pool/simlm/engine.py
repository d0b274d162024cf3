"""The simulated LM in process, with no HTTP: DSPy's custom-engine seam.

`--lm dummy` uses it to measure the pool's own overhead: a DSPy program
runs its adapter (prompt formatting, parsing) exactly as with a real LM,
and the engine answers from `answer.complete` without a socket. The engine
contract (dspy.clients.engines.base) is one canonical dspy.lm15.Request in,
one Response out; DSPy keeps retries, caching and history on its side.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import dspy
from dspy.lm15 import (
    Message,
    Request,
    Response,
    StreamDeltaEvent,
    TextDelta,
    TextPart,
    Usage,
    response_to_events,
)

from dspy_pool.simlm.answer import complete, count_tokens, stream_pieces

DUMMY_MODEL = "dummy/sim"


def request_messages(request: Request) -> list[dict]:
    """OpenAI-style message dicts from a canonical Request (system first)."""
    messages = []
    if request.system is not None:
        system = request.system if isinstance(request.system, str) else "".join(p.text for p in request.system)
        messages.append({"role": "system", "content": system})
    messages.extend({"role": m.role, "content": m.text or ""} for m in request.messages)
    return messages


def answer_request(request: Request) -> Response:
    """The simulated answer to one Request, with word-based usage."""
    messages = request_messages(request)
    text = complete(messages, request.config.response_format)
    prompt_tokens = sum(count_tokens(m["content"]) for m in messages)
    return Response(
        id=None,
        model="sim",
        message=Message.assistant([TextPart(text)]),
        finish_reason="stop",
        usage=Usage(input_tokens=prompt_tokens, output_tokens=count_tokens(text)),
    )


def word_events(response: Response) -> Iterator:
    """The response as stream events with one text delta per word, as a real model streams."""
    for event in response_to_events(response):
        delta = getattr(event, "delta", None)
        if isinstance(delta, TextDelta) and not delta.logprobs:
            for piece in stream_pieces(delta.text):
                yield StreamDeltaEvent(delta=TextDelta(text=piece, part_index=delta.part_index))
        else:
            yield event


class SimEngine:
    """Sync engine: answers at once; stateless, so one instance serves all threads."""

    def complete(self, request: Request) -> Response:
        return answer_request(request)

    def stream(self, request: Request) -> Iterator:
        return word_events(answer_request(request))

    def close(self) -> None:
        pass


class AsyncSimEngine:
    """Async engine: the same answer without a thread hop (it never blocks)."""

    def __init__(self, sync: SimEngine | None = None) -> None:
        self.sync = sync or SimEngine()

    async def complete(self, request: Request) -> Response:
        return self.sync.complete(request)

    async def stream(self, request: Request) -> AsyncIterator:
        for event in self.sync.stream(request):
            yield event

    async def aclose(self) -> None:
        pass


def make_dummy_lm() -> dspy.LM:
    """A dspy.LM answered in process by the simulator; DSPy's cache off so every call runs."""
    sync = SimEngine()
    return dspy.LM(DUMMY_MODEL, engine=sync, async_engine=AsyncSimEngine(sync), cache=False)
