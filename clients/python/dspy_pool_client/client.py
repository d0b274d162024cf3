"""The synchronous client: typed helpers over the generated stub, deadlines, retries, typed errors.

Every call has a deadline: `timeout=` on the call, else the client's
`default_timeout`. The deadline covers all attempts together; a retry is only
made when its backoff still fits before the deadline.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Mapping, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from . import convert
from ._gen import dspy_pool_pb2 as pb
from ._gen import dspy_pool_pb2_grpc as pb_grpc
from .convert import Fallback, Field, PoolStatus, ProgramInfo, Result, SessionInfo
from .errors import DSPyPoolError, NotFound, client_deadline_error, from_rpc_error
from .retry import RetryPolicy

SERVICE_NAME = "dspy_pool.v1.DSPyPool"
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
)


def new_session_id() -> str:
    return f"py-{uuid.uuid4().hex}"


class Client:
    """Blocking client for a dspy-pool server.

    >>> with Client("127.0.0.1:50051") as client:
    ...     client.register_program("qa", "question -> answer")
    ...     client.execute("qa", {"question": "What is DSPy?"}).outputs["answer"]
    """

    def __init__(self, target: str, *, default_timeout: float = 30.0, retries: RetryPolicy | None = None,
                 metadata: Sequence[tuple[str, str]] = (), options: Sequence[tuple[str, Any]] = DEFAULT_CHANNEL_OPTIONS,
                 channel: grpc.Channel | None = None) -> None:
        if default_timeout <= 0:
            raise ValueError("default_timeout must be > 0: every call has a deadline")
        self.target = target
        self.default_timeout = default_timeout
        self.retries = retries if retries is not None else RetryPolicy()
        self._metadata = tuple(metadata)
        self._owns_channel = channel is None
        self._channel = channel if channel is not None else grpc.insecure_channel(target, options=list(options))
        self._stub = pb_grpc.DSPyPoolStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # -- plumbing -----------------------------------------------------------
    def _invoke(self, method, request, timeout: float | None, *, retry: bool = True):
        budget = self.default_timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise client_deadline_error(f"deadline of {budget:.3f}s passed before attempt {attempt}")
            try:
                return method(request, timeout=remaining, metadata=self._metadata)
            except grpc.RpcError as exc:
                error, cause = from_rpc_error(exc), exc
            delay = self.retries.delay_s(attempt, error) if retry else None
            if delay is None:
                raise error from cause
            if time.monotonic() + delay >= deadline:
                raise client_deadline_error(f"no time left for attempt {attempt + 1} within {budget:.3f}s", error) from cause
            time.sleep(delay)

    def close(self) -> None:
        if self._owns_channel:
            self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    # -- programs -----------------------------------------------------------
    def register_program(self, name: str, signature: str = "", module: str = "predict", *, instructions: str = "",
                         demos: list[Mapping[str, Any]] | None = None, fallback: Fallback | Mapping[str, Any] | None = None,
                         input_fields: list[Field] | None = None, output_fields: list[Field] | None = None,
                         state_json: str = "", module_options: Mapping[str, Any] | None = None, description: str = "",
                         warmup_inputs: list[Mapping[str, Any]] | None = None, timeout: float | None = None) -> ProgramInfo:
        spec = convert.program_spec(name, signature, module, instructions=instructions, demos=demos, fallback=fallback,
                                    input_fields=input_fields, output_fields=output_fields, state_json=state_json,
                                    module_options=module_options, description=description,
                                    warmup_inputs=warmup_inputs)
        return ProgramInfo.from_proto(self._invoke(self._stub.RegisterProgram, pb.RegisterProgramRequest(spec=spec), timeout))

    def get_program(self, name: str, version: int = 0, *, timeout: float | None = None) -> ProgramInfo:
        return ProgramInfo.from_proto(self._invoke(self._stub.GetProgram, pb.GetProgramRequest(name=name, version=version), timeout))

    def list_programs(self, all_versions: bool = False, *, timeout: float | None = None) -> list[ProgramInfo]:
        reply = self._invoke(self._stub.ListPrograms, pb.ListProgramsRequest(all_versions=all_versions), timeout)
        return [ProgramInfo.from_proto(p) for p in reply.programs]

    def delete_program(self, name: str, version: int = 0, *, timeout: float | None = None) -> list[int]:
        reply = self._invoke(self._stub.DeleteProgram, pb.DeleteProgramRequest(name=name, version=version), timeout)
        return list(reply.deleted_versions)

    # -- execute ------------------------------------------------------------
    def execute(self, program: str, inputs: Mapping[str, Any] | None = None, *, version: int = 0,
                session_id: str | None = None, timeout: float | None = None, request_id: str | None = None) -> Result:
        request = convert.execute_request(program, inputs, version, session_id, request_id)
        return Result.from_proto(self._invoke(self._stub.Execute, request, timeout))

    # -- sessions -----------------------------------------------------------
    def session(self, session_id: str | None = None) -> "Session":
        """A conversation: `with client.session() as s: s.execute(...)`; closed on exit."""
        return Session(self, session_id or new_session_id())

    def get_session(self, session_id: str, *, timeout: float | None = None) -> SessionInfo:
        return SessionInfo.from_proto(self._invoke(self._stub.GetSession, pb.GetSessionRequest(session_id=session_id), timeout))

    def close_session(self, session_id: str, *, timeout: float | None = None) -> int:
        """Close a session; returns how many turns it held. NotFound when unknown."""
        return self._invoke(self._stub.CloseSession, pb.CloseSessionRequest(session_id=session_id), timeout).turns

    # -- status -------------------------------------------------------------
    def pool_status(self, *, timeout: float | None = None) -> PoolStatus:
        return PoolStatus.from_proto(self._invoke(self._stub.GetPoolStatus, pb.GetPoolStatusRequest(), timeout))

    def health(self, service: str = "", *, timeout: float | None = None) -> str:
        """The health service's answer: "SERVING", "NOT_SERVING", "SERVICE_UNKNOWN" or "UNKNOWN"."""
        reply = self._invoke(self._health.Check, health_pb2.HealthCheckRequest(service=service), timeout, retry=False)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

    @property
    def stub(self) -> pb_grpc.DSPyPoolStub:
        """The raw generated stub, for anything the helpers do not cover."""
        return self._stub


class Session:
    """Calls that share one session_id (and so its history); closes the session on exit."""

    def __init__(self, client: Client, session_id: str) -> None:
        self.client = client
        self.session_id = session_id
        self.closed = False

    def execute(self, program: str, inputs: Mapping[str, Any] | None = None, *, version: int = 0,
                timeout: float | None = None, request_id: str | None = None) -> Result:
        return self.client.execute(program, inputs, version=version, session_id=self.session_id, timeout=timeout, request_id=request_id)

    def history(self, *, timeout: float | None = None) -> SessionInfo:
        return self.client.get_session(self.session_id, timeout=timeout)

    def close(self, *, timeout: float | None = None) -> int:
        """Close on the server; 0 when the server never saw the session (no call was made)."""
        if self.closed:
            return 0
        self.closed = True
        try:
            return self.client.close_session(self.session_id, timeout=timeout)
        except NotFound:
            return 0

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.close()
        except DSPyPoolError:
            if exc_type is None:
                raise  # do not hide the caller's own exception behind a failed close
