"""LeanLM: DSPy's LM for OpenAI-compatible chat completions, on one lean HTTP/1.1 pool.

    adapter ──acall(messages, **options)──> LeanLM            (a dspy.BaseLM subclass: DSPy's custom-LM hook)
        body = {"model", "messages", options}                 built directly, orjson-encoded
        cache? ─hit─> the stored response
        _Pool.post(body) ─> one HTTP/1.1 exchange             the pool of the running event loop, created on first use
            retries (num_retries) of what DSPy retries, after retry_after or 2**attempt seconds, as DSPy does
        2xx ─> _Response (OpenAI shape) ─> BaseLM._process_lm_response: outputs, usage (track_usage), history
        else ─> DSPy's typed error (http_error): 401/403 LMAuthError, 429 LMRateLimitError(retry_after), 5xx
                LMServerError, 400 context window ContextWindowExceededError, read timeout LMTimeoutError,
                connect/reset LMTransportError; failures.classify maps each as it maps DSPy's own engines' errors

Why not dspy.LM: for an OpenAI-compatible endpoint, DSPy's native engine converts every call to an lm15
Request and back, hops to a thread twice per call and prices the response from its metadata map; LiteLLM
costs more still. The request here is the adapter's messages plus options, sent as they are (what LiteLLM
sends), and the answer is read straight from the response. bench/lm_client.py measures all three.

acall and __call__ are LeanLM's own (BaseLM's pre-3.4 shape: forward, then _process_lm_response, under
DSPy's callbacks): DSPy 3.4's BaseLM.acall runs a forward()-style subclass through two thread hops
(prepare, pricing) and a deprecation warning per call, which doubled a sequential Predict call's client
CPU here (659 against 301 us; 337 against 263 at 64 in flight). DSPy 3.5 drops the forward()/aforward()
contract: LeanLM then moves to an engine (complete(Request) -> Response) or keeps these two methods.

JSON is orjson (already a DSPy dependency): about 7 us less per call than the stdlib for a small prompt,
more for long few-shot prompts.

HTTP: a small HTTP/1.1 client on asyncio.Protocol (Content-Length, chunked and close-delimited bodies,
keep-alive, TLS), chosen by measurement over httpx, aiohttp and lm15's transport (bench/lm_client.py,
"http_clients"): for the sim LM at 0 ms it costs a third to a quarter of aiohttp's CPU per request,
and it gives exact control of what cancellation and timeouts do to a connection.

Connections never cross fork: a pool belongs to one event loop and is created on the first call made on
that loop, so an LM built in the zygote holds none; an at-fork hook drops any a parent held anyway.
All calls on one loop share its pool (up to max_connections, then they queue). Sync calls (`lm(...)`,
`forward`, modules run on threads) go through one background loop per process, and so share its pool;
they never borrow the worker's own loop, which may be waiting on them.

Cancellation and timeouts: a cancelled call aborts its connection at once (the server sees it close; the
connection is never reused); `timeout` bounds the wait for each byte of the answer (as lm15 and LiteLLM
read it) and, capped at 10 s, the connect.

Not carried: streaming (`dspy.streamify` gets the whole answer at once), HTTP proxies (lms' auto
selection leaves an endpoint behind a proxy to DSPy's engines), explicit lm15 Request calls.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import json
import os
import ssl
import threading
import time
import weakref
import zlib
from collections import deque
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import dspy
import orjson
from dspy.utils.callback import with_callbacks

__all__ = ["LeanLM", "Route", "http_error", "resolve_endpoint", "route"]

DEFAULT_MAX_CONNECTIONS = 100
DEFAULT_READ_TIMEOUT_S = 600.0  # lm15's default: a long generation is not a failure
DEFAULT_CONNECT_TIMEOUT_S = 10.0
_OPENAI_BASE = "https://api.openai.com/v1"
_USER_AGENT = "dspy-pool-lean/1"
_MAX_HEAD_BYTES = 64 * 1024
_MAX_BODY_BYTES = 64 * 1024 * 1024
_CACHE_ID = "dspy_pool.lean_lm.chat"
# Options that configure the client, or DSPy's own bookkeeping: never part of the request body.
_NOT_SENT = frozenset({
    "api_key", "api_base", "base_url", "headers", "extra_headers", "timeout", "api_version", "azure_ad_token_provider",
    "organization", "project", "extra_query", "custom_llm_provider", "cache", "rollout_id", "num_retries",
    "num_generations", "prompt_cache",
    "stream", "stream_options",  # the answer is read whole (streaming is a later issue)
})
_IGNORED_CACHE_KEYS = ["api_key", "api_base", "base_url"]
# Client settings dspy.LM takes and LeanLM does not carry: refused, never silently dropped.
_REFUSED = frozenset({"headers", "extra_headers", "api_version", "azure_ad_token_provider", "organization", "project",
                      "extra_query", "custom_llm_provider", "base_url"})


# --- errors ----------------------------------------------------------------------------------------------


class _ReadTimeout(TimeoutError):
    """The request was sent, and no byte of the answer came for `timeout` seconds."""


class _Disconnected(ConnectionError):
    """The connection ended before a whole response arrived."""


class _ConnectFailed(ConnectionError):
    """No connection (refused, unresolvable, TLS, or no connect in time): nothing was sent."""


class _BadResponse(ConnectionError):
    """The bytes that came back are not an HTTP/1.1 response we can read."""


def _retry_after_s(headers: dict[str, str]) -> float | None:
    """Retry-After (seconds or an HTTP date) or retry-after-ms, as a finite number of seconds >= 0."""
    value = headers.get("retry-after")
    if value:
        try:
            seconds = float(value)
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                when = None
            seconds = when.timestamp() - time.time() if when is not None else None
        if seconds is not None and seconds == seconds and seconds != float("inf"):
            return max(0.0, seconds)
    value = headers.get("retry-after-ms")
    if value:
        try:
            return max(0.0, float(value) / 1000.0)
        except ValueError:
            pass
    return None


def _error_fields(body: bytes) -> tuple[str, str, str]:
    """(message, code, type) from an OpenAI-shaped error body, or from a top-level one (vLLM, some proxies)."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return body.decode("utf-8", "replace").strip()[:500], "", ""
    if not isinstance(data, dict):
        return str(data)[:500], "", ""
    error = data.get("error", data)
    if not isinstance(error, dict):
        return str(error)[:500], "", ""
    message = error.get("message") or error.get("detail") or ""
    return str(message)[:2000], str(error.get("code") or ""), str(error.get("type") or "")


def http_error(status: int, body: bytes, headers: dict[str, str], *, model: str, provider: str) -> dspy.LMError:
    """DSPy's typed error for a non-2xx answer, read the way DSPy's OpenAI engine reads it."""
    message, code, kind = _error_fields(body)
    message = message or f"HTTP {status}"
    lowered = message.lower()
    meta = {"model": model, "provider": provider, "status": status, "provider_code": code or kind or None,
            "request_id": headers.get("x-request-id") or headers.get("request-id")}
    if code == "context_length_exceeded" or (status in (400, 413) and "maximum context length" in lowered):
        return dspy.ContextWindowExceededError(message=message, **meta)
    if code == "model_not_found" or (status == 404 and "model" in lowered):
        return dspy.LMUnsupportedModelError(message, **meta)
    if status == 402 or "insufficient_quota" in (code, kind):
        return dspy.LMBillingError(message, **meta)
    if status in (401, 403) or code == "invalid_api_key" or kind == "authentication_error":
        return dspy.LMAuthError(message, **meta)
    if status == 429 or code == "rate_limit_exceeded" or kind == "rate_limit_error":
        return dspy.LMRateLimitError(message, retry_after=_retry_after_s(headers), **meta)
    if status in (408, 504):
        return dspy.LMTimeoutError(message, **meta)
    if status in (400, 404, 409, 413, 422):
        return dspy.LMInvalidRequestError(message, **meta)
    if status >= 500:
        return dspy.LMServerError(message, retry_after=_retry_after_s(headers), **meta)
    return dspy.LMProviderError(message, **meta)


# DSPy retries these (dspy.utils.exceptions.is_retryable_lm_error), after retry_after or 2**attempt seconds.
_RETRYABLE = (dspy.LMRateLimitError, dspy.LMTimeoutError, dspy.LMServerError, dspy.LMTransportError)


def _retry_delay_s(error: BaseException, attempt: int) -> float:
    hint = getattr(error, "retry_after", None)
    if isinstance(hint, (int, float)) and 0 <= hint < float("inf"):
        return float(hint)
    return float(min(2 ** min(attempt, 6), 60))


# --- HTTP/1.1 on asyncio.Protocol ----------------------------------------------------------------------


class _Reply(NamedTuple):
    status: int
    headers: dict[str, str]  # names lowercased; a repeated header keeps its last value
    body: bytes
    keep_alive: bool


class _Endpoint(NamedTuple):
    host: str
    port: int
    path: str  # the chat-completions path
    tls: bool
    authority: str  # the Host header


def _endpoint(url: str) -> _Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"api_base must be an http:// or https:// URL, not {url!r}")
    tls = parts.scheme == "https"
    port = parts.port or (443 if tls else 80)
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    authority = shown if port == (443 if tls else 80) else f"{shown}:{port}"
    path = parts.path.rstrip("/") + "/chat/completions"
    return _Endpoint(host, port, path + (f"?{parts.query}" if parts.query else ""), tls, authority)


class _Connection(asyncio.Protocol):
    """One keep-alive connection carrying one exchange at a time; parses the response as bytes arrive."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = False  # holds one of the pool's `open` slots (set once create_connection hands it over)
        self._buffer = bytearray()
        self._waiter: asyncio.Future | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timeout = 0.0
        self._last_byte = 0.0
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: dict[str, str] = {}
        self._keep_alive = True
        self._mode = ""  # "", "length", "chunked" or "close" once the head is read
        self._length = 0
        self._chunks: list[bytes] = []

    # -- the exchange --
    def send(self, payload: bytes, timeout: float) -> asyncio.Future:
        """Write one request; the future resolves to its _Reply or fails with a _ReadTimeout/_Disconnected/_BadResponse."""
        self._waiter = waiter = self.loop.create_future()
        self._timeout = timeout
        self._last_byte = self.loop.time()
        self._timer = self.loop.call_at(self._last_byte + timeout, self._on_timer)
        self.transport.write(payload)
        return waiter

    def abort(self) -> None:
        """Drop the connection now, mid-exchange or not: the server sees it close, and it is never reused."""
        self._stop_timer()
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _on_timer(self) -> None:
        self._timer = None
        waiting = self.loop.time() - self._last_byte
        if waiting < self._timeout:  # bytes came meanwhile: wait for the rest of the gap
            self._timer = self.loop.call_at(self._last_byte + self._timeout, self._on_timer)
            return
        self._fail(_ReadTimeout(f"no response byte for {self._timeout:g} s"))

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _fail(self, error: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _finish(self, body: bytes) -> None:
        self._stop_timer()
        waiter, self._waiter = self._waiter, None
        encoding = self._headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            try:
                if encoding not in ("gzip", "deflate"):
                    raise zlib.error("not gzip or deflate")
                body = zlib.decompress(body, 47)  # 32 + 15: a gzip or zlib header, detected
            except zlib.error as exc:
                self._waiter = waiter
                self._fail(_BadResponse(f"unreadable Content-Encoding {encoding!r}: {exc}"))
                return
        reply = _Reply(self._status, self._headers, body, self._keep_alive and not self._buffer)
        self._reset()
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    # -- asyncio.Protocol --
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # bytes nobody asked for: this connection cannot be trusted with the next request
            self.abort()
            return
        self._last_byte = self.loop.time()
        self._buffer += data
        try:
            self._parse()
        except _BadResponse as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        if self._waiter is not None and self._mode == "close":
            body, self._keep_alive = bytes(self._buffer), False
            self._buffer.clear()
            self._finish(body)
        return False  # let the transport close

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._stop_timer()
        if self._waiter is not None:
            error = _Disconnected("server closed the connection before the whole response was sent")
            error.__cause__ = exc
            self._fail(error)
        self.pool._lost(self)

    # -- parsing --
    def _parse(self) -> None:
        buffer = self._buffer
        while self._status == 0:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD_BYTES:
                    raise _BadResponse("response head too large")
                return
            head = bytes(buffer[:end]).decode("latin-1")
            del buffer[:end + 4]
            self._read_head(head)
        if self._mode == "length":
            if len(buffer) >= self._length:
                body = bytes(buffer[:self._length])
                del buffer[:self._length]
                self._finish(body)
        elif self._mode == "chunked":
            self._read_chunks()
        elif len(buffer) > _MAX_BODY_BYTES:
            raise _BadResponse("response body too large")

    def _read_head(self, head: str) -> None:
        lines = head.split("\r\n")
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1.") or not status_line[1].isdigit():
            raise _BadResponse(f"bad status line {lines[0][:100]!r}")
        status = int(status_line[1])
        if 100 <= status < 200:
            return  # an interim response (100 Continue): the real one follows
        headers = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        connection = headers.get("connection", "").lower()
        self._keep_alive = ("keep-alive" in connection) if status_line[0] == "HTTP/1.0" else ("close" not in connection)
        self._status, self._headers = status, headers
        if status in (204, 304):
            self._mode, self._length = "length", 0
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            self._mode = "chunked"
        elif "content-length" in headers:
            length = headers["content-length"]
            if not length.isdigit() or int(length) > _MAX_BODY_BYTES:
                raise _BadResponse(f"bad Content-Length {length[:40]!r}")
            self._mode, self._length = "length", int(length)
        else:
            self._mode, self._keep_alive = "close", False

    def _read_chunks(self) -> None:
        buffer = self._buffer
        while True:
            if self._length < 0:  # the last chunk was read: trailers until a blank line
                end = buffer.find(b"\r\n")
                if end < 0:
                    return
                del buffer[:end + 2]
                if end == 0:
                    self._finish(b"".join(self._chunks))
                    return
                continue
            line_end = buffer.find(b"\r\n")
            if line_end < 0:
                if len(buffer) > 1024:
                    raise _BadResponse("bad chunk size line")
                return
            try:
                size = int(bytes(buffer[:line_end]).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadResponse("bad chunk size") from None
            if size == 0:
                del buffer[:line_end + 2]
                self._length = -1
                continue
            if len(buffer) < line_end + 2 + size + 2:
                if size > _MAX_BODY_BYTES:
                    raise _BadResponse("response body too large")
                return
            start = line_end + 2
            self._chunks.append(bytes(buffer[start:start + size]))
            if buffer[start + size:start + size + 2] != b"\r\n":
                raise _BadResponse("chunk not followed by CRLF")
            del buffer[:start + size + 2]


class _Pool:
    """Keep-alive connections to one endpoint for one event loop; at most `max_connections` open at once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, endpoint: _Endpoint, max_connections: int,
                 connect_timeout: float, ssl_context: ssl.SSLContext | None) -> None:
        self.loop = loop
        self.endpoint = endpoint
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.ssl_context = ssl_context
        self.open = 0  # connecting or connected
        self.idle: list[_Connection] = []
        self.waiters: deque[asyncio.Future] = deque()
        self.closed = False
        self.connections_made = 0

    async def post(self, payload: bytes, timeout: float) -> _Reply:
        connection = await self._acquire(timeout)
        try:
            reply = await connection.send(payload, timeout)
        except BaseException:
            connection.abort()  # cancelled, timed out or broken: the request ends here and the socket with it
            raise
        if reply.keep_alive and not connection.closed and not self.closed:
            self._release(connection)
        else:
            connection.close()
        return reply

    async def _acquire(self, timeout: float) -> _Connection:
        deadline = None
        while True:
            while self.idle:
                connection = self.idle.pop()  # the most recently used: the least likely to have gone stale
                if not connection.closed and not connection.transport.is_closing():
                    return connection
            if self.open < self.max_connections:
                self.open += 1
                try:
                    return await self._connect()
                except BaseException:
                    self.open -= 1
                    self._wake()
                    raise
            # Every connection is busy: wait for one to be handed over (or for a slot, None, to connect in).
            deadline = deadline or self.loop.time() + timeout
            waiter = self.loop.create_future()
            self.waiters.append(waiter)
            handle = self.loop.call_at(deadline, _expire, waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    handed = waiter.result()  # handed over, then cancelled: pass it on
                    self._release(handed) if handed is not None else self._wake()
                raise
            finally:
                handle.cancel()
                try:
                    self.waiters.remove(waiter)
                except ValueError:
                    pass
            if handed is not None and not handed.closed:
                return handed

    async def _connect(self) -> _Connection:
        endpoint = self.endpoint
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, connection = await self.loop.create_connection(
                    lambda: _Connection(self), endpoint.host, endpoint.port, ssl=self.ssl_context,
                    server_hostname=endpoint.host if self.ssl_context is not None else None,
                )
        except TimeoutError:
            # `from None`: a connect that timed out sent nothing; no TimeoutError may sit in the cause chain.
            raise _ConnectFailed(f"no connection to {endpoint.authority} within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise _ConnectFailed(f"cannot connect to {endpoint.authority}: {exc}") from None
        if connection.closed:  # closed between connect and now: the slot goes back with the error
            raise _ConnectFailed(f"connection to {endpoint.authority} closed as it opened")
        connection.counted = True
        self.connections_made += 1
        return connection

    def _release(self, connection: _Connection) -> None:
        """A connection free for the next exchange: straight to the longest waiter, else idle."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return
        self.idle.append(connection)

    def _wake(self) -> None:
        """A slot came free (a connection closed, or a connect failed): the longest waiter may connect."""
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _lost(self, connection: _Connection) -> None:
        if connection.counted:
            connection.counted = False
            self.open -= 1
        try:
            self.idle.remove(connection)
        except ValueError:
            pass
        self._wake()

    def close(self) -> None:
        """Close the idle connections now and each busy one when its exchange ends."""
        self.closed = True
        idle, self.idle = self.idle, []
        for connection in idle:
            connection.close()


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(_ConnectFailed("no free connection in the pool in time"))


class _Clients:
    """An LM's pools, one per event loop; shared by the LM's copies, dropped in a forked child."""

    def __init__(self, endpoint: _Endpoint, max_connections: int, connect_timeout: float) -> None:
        self.endpoint = endpoint
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self.pools: dict[asyncio.AbstractEventLoop, _Pool] = {}
        self.ssl_context: ssl.SSLContext | None = None
        _ALL_CLIENTS.add(self)

    def pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        pool = self.pools.get(loop)
        if pool is None or pool.closed:
            for old in [old for old in self.pools if old.is_closed()]:
                del self.pools[old]
            pool = self.pools[loop] = _Pool(loop, self.endpoint, self.max_connections, self.connect_timeout, self.tls())
        return pool

    def tls(self) -> ssl.SSLContext | None:
        if self.endpoint.tls and self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()  # system CAs; SSL_CERT_FILE/SSL_CERT_DIR apply
        return self.ssl_context

    def forget(self) -> None:
        self.pools = {}


_ALL_CLIENTS: weakref.WeakSet[_Clients] = weakref.WeakSet()


class _SyncBridge:
    """One background event loop per process for sync callers, started on the first sync call."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._running_loop()).result()

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="lean-lm-sync", daemon=True).start()
                self._loop = loop
            return self._loop

    def forget(self) -> None:
        """In a forked child: the thread did not survive fork, and its loop is not ours to use."""
        self._lock = threading.Lock()
        self._loop = None


_BRIDGE = _SyncBridge()


def _after_fork_in_child() -> None:
    for clients in list(_ALL_CLIENTS):
        clients.forget()
    _BRIDGE.forget()


os.register_at_fork(after_in_child=_after_fork_in_child)


# --- the LM --------------------------------------------------------------------------------------------


class Route(NamedTuple):
    """Where DSPy's own engines would send `model`: its provider, its wire name, the OpenAI dialect or not."""

    provider: str
    wire_model: str
    openai_chat: bool  # DSPy speaks the OpenAI chat-completions dialect to this provider
    hosted: bool  # a cloud host with its own URLs and auth (Azure, Bedrock): never lean's
    base_url: str
    env_keys: tuple[str, ...]


def route(model: str) -> Route | None:
    """DSPy's reading of a model id (`openai/x`, `hosted_vllm/x`, ...), or None where it has none."""
    try:
        from dspy._vendor.lm15.registry import lookup
        from dspy.clients.engines.lm15_engine import LM15Engine
        from dspy.lm15 import RouterConfig

        resolution = LM15Engine(RouterConfig(env={}), model_type="chat").resolve(model)
        definition = lookup(resolution.provider)
    except Exception:  # a model DSPy's native engine cannot route, or another DSPy layout
        return None
    if definition is None:
        return None
    return Route(resolution.provider, resolution.model, definition.dialect == "openai-chat", bool(definition.hosted),
                 definition.access.base_url or "", tuple(definition.access.env_keys))


def resolve_endpoint(model: str, api_base: str | None, api_key: str | None) -> tuple[str, str, str, str]:
    """(provider, wire model, base URL, key) for `model`, as DSPy's engines would resolve them.

    Without api_base or api_key, DSPy's provider table fills them in: https://api.openai.com/v1 and
    OPENAI_API_KEY for `openai/...`, the local default port for `hosted_vllm/...`, and so on.
    """
    found = route(model)
    if found is None:
        prefix, sep, rest = model.partition("/")
        found = Route(prefix if sep else "openai", rest if sep else model, True, False, "", ("OPENAI_API_KEY",) if not sep or prefix == "openai" else ())
    key = api_key or next((os.environ[name] for name in found.env_keys if os.environ.get(name)), "")
    return found.provider, found.wire_model, (api_base or found.base_url or _OPENAI_BASE).rstrip("/"), key


class _Response(dict):
    """The provider's JSON object, readable by key and by attribute (BaseLM reads `response.model`, `.usage`)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def _json_default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


class LeanLM(dspy.BaseLM):
    """An OpenAI-compatible chat-completions LM: one pooled HTTP/1.1 client per event loop, DSPy's typed errors."""

    def __init__(
        self,
        model: str,
        *,
        api_base: str | None = None,
        api_key: str | None = None,
        timeout: float | None = None,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        temperature: float | None = None,
        max_tokens: int | None = None,
        cache: bool = False,
        num_retries: int = 0,
        callbacks: list | None = None,
        model_type: str = "chat",
        **kwargs: Any,
    ) -> None:
        if model_type != "chat":
            raise ValueError("LeanLM speaks chat completions only (model_type='chat')")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a number of seconds > 0, not {timeout!r}")
        if isinstance(num_retries, bool) or not isinstance(num_retries, int) or num_retries < 0:
            raise ValueError("num_retries must be a nonnegative integer")
        refused = sorted(name for name, value in kwargs.items() if name in _REFUSED and value is not None)
        if refused:
            raise ValueError(f"LeanLM does not carry {refused}; use dspy.LM (--lm-engine lm15 or litellm)")
        self.provider_name, self.wire_model, base, key = resolve_endpoint(model, api_base, api_key)
        if any(char in text for text in (base, key) for char in "\r\n"):
            raise ValueError("api_base and api_key cannot contain line breaks")
        # Client settings stay in kwargs where dspy.LM keeps them (code that reads lm.kwargs sees the same);
        # _body never sends them.
        given = {"api_key": api_key, "api_base": api_base, "timeout": timeout}
        kwargs = {**kwargs, **{name: value for name, value in given.items() if value}}
        super().__init__(model, model_type="chat", temperature=temperature, max_tokens=max_tokens, cache=cache,
                         callbacks=callbacks, num_retries=num_retries, **kwargs)
        self.api_base = base
        self.timeout = timeout
        self._read_timeout = timeout or DEFAULT_READ_TIMEOUT_S
        endpoint = _endpoint(base)
        head = [f"POST {endpoint.path} HTTP/1.1", f"Host: {endpoint.authority}", f"User-Agent: {_USER_AGENT}",
                "Accept: application/json", "Accept-Encoding: identity", "Content-Type: application/json"]
        if key:
            head.append(f"Authorization: Bearer {key}")
        self._head = ("\r\n".join(head) + "\r\n").encode("latin-1")
        connect_timeout = min(DEFAULT_CONNECT_TIMEOUT_S, timeout) if timeout else DEFAULT_CONNECT_TIMEOUT_S
        self._clients = _Clients(endpoint, max(1, int(max_connections)), connect_timeout)
        self._capabilities: Any = None

    def _get_initial_kwargs(self, *, temperature, max_tokens, **kwargs) -> dict[str, Any]:
        initial = super()._get_initial_kwargs(temperature=temperature, max_tokens=max_tokens, **kwargs)
        from dspy.clients.lm import _is_openai_reasoning_model

        if self.model.startswith("openai/") and _is_openai_reasoning_model(self.model):
            initial["max_completion_tokens"] = initial.pop("max_tokens")  # what dspy.LM sends these models
        return initial

    # -- what adapters ask of an LM: the same answers DSPy's native engine gives for this model --
    def _capability_values(self) -> Any:
        if self._capabilities is None:
            self._capabilities = _capabilities_for(self.model, self.api_base)
        return self._capabilities

    @property
    def supports_function_calling(self) -> bool:
        return self._capability_values().function_calling

    @property
    def supports_reasoning(self) -> bool:
        return self._capability_values().reasoning

    @property
    def supports_response_schema(self) -> bool:
        return self._capability_values().response_schema

    @property
    def supported_params(self) -> set[str]:
        return set(self._capability_values().params)

    def warm(self) -> None:
        """Work a first call would do, done before fork (the zygote): capabilities, the TLS context. No socket."""
        self._capability_values()
        self._clients.tls()

    # -- calls --
    @with_callbacks
    async def acall(self, prompt: Any = None, *, messages: list[dict] | None = None, **kwargs: Any) -> list:
        messages = self._messages(prompt, messages)
        response = await self.aforward(messages=messages, **kwargs)
        return self._process_lm_response(response, prompt, messages, **kwargs)

    @with_callbacks
    def __call__(self, prompt: Any = None, *, messages: list[dict] | None = None, **kwargs: Any) -> list:
        messages = self._messages(prompt, messages)
        response = self.forward(messages=messages, **kwargs)
        return self._process_lm_response(response, prompt, messages, **kwargs)

    def forward(self, prompt: Any = None, messages: list[dict] | None = None, **kwargs: Any) -> _Response:
        """The OpenAI-shaped response, for a sync caller: sent from the process's background loop."""
        return _BRIDGE.run(self.aforward(prompt=prompt, messages=messages, **kwargs))

    async def aforward(self, prompt: Any = None, messages: list[dict] | None = None, **kwargs: Any) -> _Response:
        """The OpenAI-shaped response to one chat completion; DSPy's typed errors for every failure."""
        body = self._body(self._messages(prompt, messages), kwargs)
        cache_key = None
        if kwargs.get("cache", self.cache):
            cache_key = {"_fn_identifier": _CACHE_ID, **body, "rollout_id": kwargs.get("rollout_id", self.kwargs.get("rollout_id"))}
            hit = dspy.cache.get(cache_key, _IGNORED_CACHE_KEYS)
            if hit is not None:
                response = _Response(hit)
                response["usage"], response["cache_hit"] = {}, True  # no call made: no usage to report
                return response
        payload = self._encode(body)
        pool = self._clients.pool()
        attempt = 0
        while True:
            try:
                response = await self._exchange(pool, payload)
                break
            except _RETRYABLE as error:
                if attempt >= self.num_retries:
                    raise
                await asyncio.sleep(_retry_delay_s(error, attempt))
                attempt += 1
        if cache_key is not None:
            dspy.cache.put(cache_key, dict(response), _IGNORED_CACHE_KEYS)
        return response

    async def aclose(self) -> None:
        """Close this loop's pool (its idle connections now, busy ones as their exchange ends)."""
        pool = self._clients.pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            pool.close()

    def pool_stats(self) -> dict[str, int]:
        """The running loop's pool: connections open, idle and made so far (tests, benches)."""
        pool = self._clients.pools.get(asyncio.get_running_loop())
        if pool is None:
            return {"open": 0, "idle": 0, "connections_made": 0}
        return {"open": pool.open, "idle": len(pool.idle), "connections_made": pool.connections_made}

    # -- internals --
    @staticmethod
    def _messages(prompt: Any, messages: list[dict] | None) -> list[dict]:
        if messages:
            return messages
        if prompt is None or not isinstance(prompt, str):
            raise dspy.LMUnsupportedFeatureError("LeanLM takes a prompt string or OpenAI-style messages; "
                                                 "explicit lm15 Requests need dspy.LM", features=["request"])
        return [{"role": "user", "content": prompt}]

    def _body(self, messages: list[dict], kwargs: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.wire_model, "messages": messages}
        for source in (self.kwargs, kwargs):
            for key, value in source.items():
                if key not in _NOT_SENT:
                    body[key] = value
        for key in [key for key, value in body.items() if value is None]:
            del body[key]
        response_format = body.get("response_format")
        if isinstance(response_format, type):
            body["response_format"] = _schema_format(response_format)
        return body

    @staticmethod
    def _encode(body: dict[str, Any]) -> bytes:
        try:
            return orjson.dumps(body, default=_json_default)
        except orjson.JSONEncodeError as exc:
            if "surrogates" in str(exc):
                raise ValueError("messages contain text that is not valid Unicode (a lone surrogate), which no provider "
                                 "can receive; repair the text first, e.g. text.encode('utf-8', 'replace').decode('utf-8')") from None
            # What orjson refuses and json takes: non-string keys, integers past 64 bits.
            return json.dumps(body, ensure_ascii=False, default=_json_default).encode()

    async def _exchange(self, pool: _Pool, payload: bytes) -> _Response:
        request = self._head + b"Content-Length: %d\r\n\r\n" % len(payload) + payload
        try:
            reply = await pool.post(request, self._read_timeout)
        except _ReadTimeout as exc:
            raise dspy.LMTimeoutError(f"no answer within {self._read_timeout:g} s of the last byte received ({exc})",
                                      model=self.model, provider=self.provider_name) from exc
        except (_ConnectFailed, _Disconnected, _BadResponse) as exc:
            raise dspy.LMTransportError(str(exc), model=self.model, provider=self.provider_name) from exc
        if not 200 <= reply.status < 300:
            raise http_error(reply.status, reply.body, reply.headers, model=self.model, provider=self.provider_name)
        try:
            data = orjson.loads(reply.body)
        except orjson.JSONDecodeError:
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise dspy.LMProviderError(f"HTTP {reply.status} answer is not a chat completion: {reply.body[:200]!r}",
                                       model=self.model, provider=self.provider_name, status=reply.status)
        response = _Response(data)
        response.setdefault("model", self.wire_model)
        if any(isinstance(choice, dict) and isinstance(choice.get("message"), dict) and choice["message"].get("tool_calls")
               for choice in data["choices"]):
            from dspy.clients.call_result import attributes

            response["choices"] = attributes(data["choices"])  # tool calls read by attribute too, as DSPy's engines give them
        return response


@functools.lru_cache(maxsize=64)
def _capabilities_for(model: str, api_base: str) -> Any:
    """What DSPy's native engine says this model supports, so adapters ask LeanLM what they would ask dspy.LM.

    Cached per process: computed in the zygote (prewarm), inherited by every worker.
    """
    from dspy.clients.capabilities import Capabilities, capabilities

    try:
        return capabilities(dspy.LM(model, api_base=api_base, api_key="-", engine="lm15", cache=False))
    except Exception:  # a model DSPy's native engine cannot route: claim nothing
        return Capabilities()


def _schema_format(model_type: type) -> Any:
    """A pydantic model as response_format: the strict JSON schema DSPy's native engine sends for it."""
    try:
        import pydantic

        if issubclass(model_type, pydantic.BaseModel):
            from dspy.clients.legacy_requests import _strict_json_schema

            return {"type": "json_schema", "json_schema": {
                "name": model_type.__name__, "schema": _strict_json_schema(model_type.model_json_schema()), "strict": True,
            }}
    except ImportError:
        pass
    return model_type
