"""The simulated LM as an OpenAI-compatible HTTP/1.1 server on asyncio streams.

Data flow per connection (one task each, no threads):
  read head -> read body (Content-Length or chunked) -> route
  chat completion: decide(faults) -> sleep(latency) -> answer.complete -> write
  then loop for the next request while the connection is keep-alive.

Hand-written rather than aiohttp or http.server: the server must carry
thousands of concurrent keep-alive connections on one loop with a small
per-request cost, and inject failures at the socket level (hang, drop)
that frameworks hide. Faults are swapped live through /admin/faults;
/admin/stats counts what was served. Nothing is logged per request.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import structlog

from dspy_pool.simlm.answer import complete, count_tokens, message_text, stream_pieces
from dspy_pool.simlm.faults import REFUSALS, FaultConfig, Outcome, decide, sample_latency_s

log = structlog.get_logger(__name__)

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 32 * 1024 * 1024
MALFORMED_TEXT = "I am a simulated model, and today I ignore your output format entirely."
_REASONS = {
    200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
    413: "Payload Too Large", 429: "Too Many Requests", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented",
}


class HttpError(Exception):
    """A request we answer with an error status and then close the connection."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    version: str
    headers: dict[str, str]
    body: bytes = b""

    @property
    def keep_alive(self) -> bool:
        """HTTP/1.1 stays open unless told to close; HTTP/1.0 only if asked."""
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


# --- pure HTTP framing ----------------------------------------------------


def parse_head(head: bytes) -> HttpRequest:
    """Request line and headers (names lowercased) from the bytes before the blank line."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes any byte
        raise HttpError(400, "undecodable request head") from None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, f"bad request line {lines[0][:100]!r}")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, f"bad header line {line[:100]!r}")
        headers[name.lower()] = value.strip()
    return HttpRequest(method, target.split("?", 1)[0], version, headers)


def response_bytes(
    status: int,
    body: bytes,
    *,
    keep_alive: bool,
    content_type: str = "application/json",
    extra_headers: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """One complete HTTP/1.1 response with a Content-Length body."""
    lines = [
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: keep-alive" if keep_alive else "Connection: close",
        *(f"{k}: {v}" for k, v in extra_headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def error_body(message: str, kind: str, code: str | None = None) -> bytes:
    """The OpenAI error shape, which OpenAI-compatible clients know how to read."""
    return json_bytes({"error": {"message": message, "type": kind, "param": None, "code": code}})


# --- pure OpenAI shapes -----------------------------------------------------


def completion_body(request_id: str, model: str, text: str, prompt_tokens: int, n: int, created: int) -> dict:
    """A chat.completion object with n identical choices."""
    completion_tokens = count_tokens(text)
    return {
        "id": request_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": "simlm",
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None, "finish_reason": "stop"}
            for i in range(n)
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens * n,
            "total_tokens": prompt_tokens + completion_tokens * n,
        },
    }


def stream_body(body: dict, include_usage: bool) -> bytes:
    """The same completion as server-sent events: a delta per word, a stop chunk, [DONE]."""
    base = {k: body[k] for k in ("id", "created", "model", "system_fingerprint")} | {"object": "chat.completion.chunk"}
    events = []
    for choice in body["choices"]:
        index = choice["index"]
        pieces = stream_pieces(choice["message"]["content"]) or [""]
        for i, piece in enumerate(pieces):
            delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
            events.append(base | {"choices": [{"index": index, "delta": delta, "finish_reason": None}]})
        events.append(base | {"choices": [{"index": index, "delta": {}, "finish_reason": "stop"}]})
    if include_usage:
        events.append(base | {"choices": [], "usage": body["usage"]})
    lines = [b"data: " + json_bytes(e) + b"\n\n" for e in events]
    return b"".join(lines) + b"data: [DONE]\n\n"


def parse_chat_request(body: bytes) -> dict:
    """The JSON body of a chat completion, checked enough to answer it."""
    try:
        payload = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HttpError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise HttpError(400, "body must be a JSON object")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise HttpError(400, "'messages' must be a non-empty list of objects")
    n = payload.get("n") or 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise HttpError(400, "'n' must be an integer between 1 and 128")
    return payload


# --- I/O ------------------------------------------------------------------


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """The next request on a connection, or None at a clean end of stream."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HttpError(400, "connection closed inside a request head") from None
        return None
    except asyncio.LimitOverrunError:
        raise HttpError(431, "request head too large") from None
    request = parse_head(head[:-4])
    request.body = await read_body(reader, request.headers)
    return request


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return await read_chunked(reader)
    length_text = headers.get("content-length")
    if length_text is None:
        return b""
    if not length_text.isdigit():
        raise HttpError(400, f"bad Content-Length {length_text[:40]!r}")
    length = int(length_text)
    if length > MAX_BODY_BYTES:
        raise HttpError(413, f"body of {length} bytes exceeds {MAX_BODY_BYTES}")
    return await reader.readexactly(length) if length else b""


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body; chunk extensions and trailers are read and dropped."""
    chunks, total = [], 0
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise HttpError(400, "bad chunk size") from None
        if size == 0:
            break
        total += size
        if total > MAX_BODY_BYTES:
            raise HttpError(413, f"chunked body exceeds {MAX_BODY_BYTES} bytes")
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpError(400, "chunk not followed by CRLF")
    while (await reader.readuntil(b"\r\n")) != b"\r\n":
        pass
    return b"".join(chunks)


async def wait_for_eof(reader: asyncio.StreamReader) -> None:
    """Swallow input until the client closes: a hung request only ends with its connection."""
    while await reader.read(65536):
        pass


class SimLMServer:
    """An OpenAI-compatible simulated LM; start() binds, stop() ends every connection."""

    def __init__(self, faults: FaultConfig | None = None, host: str = "127.0.0.1", port: int = 0, seed: int = 0):
        self.faults = faults or FaultConfig()
        self.host = host
        self.port = port
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()
        self._served = 0
        self._outcomes: Counter[str] = Counter()
        self._bad_requests = 0
        self._connections_total = 0
        self._routes = {
            "/v1/chat/completions": {"POST": self._chat},
            "/chat/completions": {"POST": self._chat},
            "/v1/models": {"GET": self._models},
            "/models": {"GET": self._models},
            "/health": {"GET": self._health},
            "/admin/faults": {"GET": self._get_faults, "POST": self._post_faults},
            "/admin/stats": {"GET": self._get_stats},
            "/admin/stats/reset": {"POST": self._reset_stats},
        }

    async def start(self) -> int:
        """Bind and listen; returns the bound port (useful with port 0)."""
        if self._server is None:
            self._server = await asyncio.start_server(
                self._on_connection, self.host, self.port, backlog=4096, limit=MAX_HEAD_BYTES
            )
            self.port = self._server.sockets[0].getsockname()[1]
            log.info("simlm_listening", host=self.host, port=self.port, faults=self.faults.to_dict())
        return self.port

    async def stop(self) -> None:
        """Close the listener and every connection, hung ones included; idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        log.info("simlm_stopped", port=self.port, requests=self._served)

    def stats(self) -> dict[str, Any]:
        """Counts since the last reset: chat requests total and by outcome, plus connections."""
        return {
            "requests": self._served,
            "by_outcome": {o.value: self._outcomes.get(o.value, 0) for o in Outcome},
            "bad_requests": self._bad_requests,
            "open_connections": len(self._tasks),
            "connections_total": self._connections_total,
        }

    def set_faults(self, patch: dict[str, Any]) -> FaultConfig:
        """Merge a partial config into the live one; ValueError leaves it unchanged."""
        self.faults = self.faults.merged(patch)
        log.info("simlm_faults_changed", faults=self.faults.to_dict())
        return self.faults

    # --- connections ---

    async def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._server is None:  # accepted while stop() was closing the listener
            writer.close()
            return
        task = asyncio.current_task()
        self._tasks.add(task)
        self._connections_total += 1
        try:
            await self._serve_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away mid-request; nothing to answer
        except asyncio.CancelledError:
            pass  # stop(): the connection ends with the server
        except Exception:
            log.exception("simlm_connection_failed")
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _serve_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                request = await read_request(reader)
            except HttpError as exc:
                self._bad_requests += 1
                writer.write(response_bytes(exc.status, error_body(str(exc), "invalid_request_error"), keep_alive=False))
                return
            if request is None:
                return
            if request.headers.get("expect", "").lower() == "100-continue":
                writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            if not await self._dispatch(request, reader, writer):
                return
            if writer.transport.get_write_buffer_size() > 256 * 1024:
                await writer.drain()

    async def _dispatch(self, request: HttpRequest, reader, writer) -> bool:
        """Answer one request; False means close the connection."""
        methods = self._routes.get(request.path)
        keep_alive = request.keep_alive
        if methods is None or request.method not in methods:
            status = 404 if methods is None else 405
            message = f"no route for {request.method} {request.path}"
            writer.write(response_bytes(status, error_body(message, "invalid_request_error"), keep_alive=keep_alive))
            return keep_alive
        return await methods[request.method](request, reader, writer)

    def _write_json(self, writer, status: int, obj: Any, keep_alive: bool) -> bool:
        writer.write(response_bytes(status, json_bytes(obj), keep_alive=keep_alive))
        return keep_alive

    # --- routes ---

    async def _chat(self, request: HttpRequest, reader, writer) -> bool:
        keep_alive = request.keep_alive
        try:
            payload = parse_chat_request(request.body)
        except HttpError as exc:
            self._bad_requests += 1
            writer.write(response_bytes(exc.status, error_body(str(exc), "invalid_request_error"), keep_alive=keep_alive))
            return keep_alive
        config = self.faults
        outcome = decide(config, self._rng)
        self._served += 1
        self._outcomes[outcome.value] += 1
        if outcome is Outcome.HANG:
            await wait_for_eof(reader)
            return False
        delay = sample_latency_s(config, self._rng)
        if delay > 0:
            await asyncio.sleep(delay)
        if outcome is Outcome.DISCONNECT:
            writer.transport.abort()
            return False
        if outcome is Outcome.ERROR_500:
            body = error_body("simulated server error", "server_error", "simulated_error")
            writer.write(response_bytes(500, body, keep_alive=keep_alive))
            return keep_alive
        if outcome is Outcome.RATE_LIMIT_429:
            body = error_body("simulated rate limit", "rate_limit_error", "rate_limit_exceeded")
            retry = (("Retry-After", str(config.retry_after_s)),)
            writer.write(response_bytes(429, body, keep_alive=keep_alive, extra_headers=retry))
            return keep_alive
        refusal = REFUSALS.get(outcome)
        if refusal is not None:
            body = error_body(refusal.message, refusal.type, refusal.code)
            writer.write(response_bytes(refusal.status, body, keep_alive=keep_alive))
            return keep_alive
        writer.write(self._completion(payload, outcome, keep_alive))
        return keep_alive

    def _completion(self, payload: dict, outcome: Outcome, keep_alive: bool) -> bytes:
        messages = payload["messages"]
        if outcome is Outcome.MALFORMED:
            text = MALFORMED_TEXT
        else:
            response_format = payload.get("response_format")
            text = complete(messages, response_format if isinstance(response_format, dict) else None)
        prompt_tokens = sum(count_tokens(message_text(m)) for m in messages)
        model = payload.get("model") if isinstance(payload.get("model"), str) else "sim"
        body = completion_body(f"chatcmpl-sim-{self._served}", model, text, prompt_tokens, payload.get("n") or 1,
                               int(time.time()))
        if payload.get("stream") is True:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            return response_bytes(200, stream_body(body, include_usage), keep_alive=keep_alive,
                                  content_type="text/event-stream")
        return response_bytes(200, json_bytes(body), keep_alive=keep_alive)

    async def _models(self, request: HttpRequest, reader, writer) -> bool:
        models = {"object": "list", "data": [{"id": "sim", "object": "model", "created": 0, "owned_by": "simlm"}]}
        return self._write_json(writer, 200, models, request.keep_alive)

    async def _health(self, request: HttpRequest, reader, writer) -> bool:
        return self._write_json(writer, 200, {"status": "ok"}, request.keep_alive)

    async def _get_faults(self, request: HttpRequest, reader, writer) -> bool:
        return self._write_json(writer, 200, self.faults.to_dict(), request.keep_alive)

    async def _post_faults(self, request: HttpRequest, reader, writer) -> bool:
        try:
            patch = json.loads(request.body or b"{}")
            config = self.set_faults(patch)
        except (json.JSONDecodeError, UnicodeDecodeError, ValueError, TypeError) as exc:
            body = error_body(f"bad fault config: {exc}", "invalid_request_error")
            writer.write(response_bytes(400, body, keep_alive=request.keep_alive))
            return request.keep_alive
        return self._write_json(writer, 200, config.to_dict(), request.keep_alive)

    async def _get_stats(self, request: HttpRequest, reader, writer) -> bool:
        return self._write_json(writer, 200, self.stats(), request.keep_alive)

    async def _reset_stats(self, request: HttpRequest, reader, writer) -> bool:
        self._served, self._bad_requests, self._connections_total = 0, 0, len(self._tasks)
        self._outcomes.clear()
        return self._write_json(writer, 200, self.stats(), request.keep_alive)


# --- process entry point ------------------------------------------------------


def parse_listen(text: str) -> tuple[str, int]:
    """'host:port' (IPv6 hosts in brackets) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:  # a bind wraps a larger number round to another port
        raise ValueError(f"--listen must be HOST:PORT with a port of 0..65535, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


# --X-rate flag -> (FaultConfig field, what the sim does with that share of chat completions)
FAULT_FLAGS = (
    ("error-rate", "error_rate", "answer 500 (a server error)"),
    ("rate-limit-rate", "rate_limit_rate", "answer 429 with Retry-After (a rate limit)"),
    ("hang-rate", "hang_rate", "never answer (the client's timeout must end them)"),
    ("malformed-rate", "malformed_rate", "answer 200 with text that ignores the output format"),
    ("disconnect-rate", "disconnect_rate", "close the connection without an answer"),
    ("auth-error-rate", "auth_error_rate", "answer 401 (the API key refused)"),
    ("bad-request-rate", "bad_request_rate", "answer 400 (a request the provider refuses)"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dspy-pool sim-lm",
        description="Run the simulated OpenAI-compatible LM (POST /v1/chat/completions; faults settable at run time "
                    "through /admin/faults). Fault rates are shares of requests, 0..1, summing to at most 1.")
    parser.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT; port 0 picks a free one (default %(default)s)")
    parser.add_argument("--latency", default="fixed:0",
                        help="per-request delay in ms: fixed:MS, uniform:LO:HI, lognormal:MEDIAN:SIGMA or exp:MEAN (default %(default)s)")
    for flag, _field, what in FAULT_FLAGS:
        parser.add_argument(f"--{flag}", type=float, default=0.0, metavar="P", help=f"share of requests to {what} (default 0)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the random draws (faults, latency): the same seed, the same sequence (default 0)")
    parser.add_argument("--no-uvloop", action="store_true", help="use the stock asyncio loop")
    # Internal: the server that runs the sim (--lm sim) passes its pid so the sim dies with it.
    parser.add_argument("--parent-pid", type=int, default=0, help=argparse.SUPPRESS)
    return parser


def fault_config(args: argparse.Namespace) -> FaultConfig:
    """The parsed command line's faults; ValueError for a bad rate or latency."""
    return FaultConfig(latency=args.latency, **{field: getattr(args, field) for _flag, field, _what in FAULT_FLAGS})


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM or SIGINT (SUPERVISED_STOP_SIGNAL when run with --parent-pid); prints 'SIMLM_LISTENING <port>' once bound."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.parent_pid:
        from dspy_pool.lifeline import die_with_parent

        die_with_parent(args.parent_pid)
    try:
        host, port = parse_listen(args.listen)
        faults = fault_config(args)
    except ValueError as exc:
        parser.error(str(exc))
    # stdout carries only the SIMLM_LISTENING line; logs go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    _raise_fd_limit()
    server = SimLMServer(faults, host=host, port=port, seed=args.seed)
    _run(_serve_until_signal(server, supervised=bool(args.parent_pid)), use_uvloop=not args.no_uvloop)
    return 0


def _raise_fd_limit() -> None:
    """Thousands of keep-alive connections need more descriptors than the usual soft limit of 1024."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if hard == resource.RLIM_INFINITY or soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    except (ImportError, ValueError, OSError):
        pass


# Run by a supervisor (--parent-pid: the server's `--lm sim`), SIGTERM or Ctrl-C sent to
# the whole process group (`timeout`, `kill -- -PGID`, systemd) is the supervisor's to
# handle: it drains, its workers still calling us, and then stops us with this signal.
# We die with it anyway (PR_SET_PDEATHSIG).
SUPERVISED_STOP_SIGNAL = signal.SIGUSR1


async def _serve_until_signal(server: SimLMServer, supervised: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, (lambda: None) if supervised else stop.set)
    if supervised:
        loop.add_signal_handler(SUPERVISED_STOP_SIGNAL, stop.set)
    port = await server.start()
    print(f"SIMLM_LISTENING {port}", flush=True)
    await stop.wait()
    await server.stop()


def _run(coro, use_uvloop: bool) -> None:
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(coro)
            return
    asyncio.run(coro)
