"""`dspy-pool` client commands: call, register, programs, status, top, session; and for optimization
datasets, optimize, jobs, policy, stats.

    argv --argparse--> handler(args) --one sync gRPC call--> reply --> stdout
                          |                                   |
                          +-- UsageError (exit 2) --+         +-- --json: one JSON object, nothing else
                          +-- grpc.RpcError (1) ----+--> one line on stderr, never a traceback

Each handler is thin: read what the command line names, make the RPC, print. What
the server says goes to stdout (readable, or with --json the message as
json_format.MessageToDict gives it, field names as in the proto); everything about
the call itself (who served it, how long it took, what went wrong) goes to stderr, so
`dspy-pool call qa '{...}' | jq .answer` works.

Exit codes: 0 done; 1 the server said no, or no server answered, or an optimization the
command waited for did not succeed; 2 the command line, or a file it names, is wrong (a spec
or examples file the server refuses as INVALID_ARGUMENT too); 130 interrupted (except `top`,
where Ctrl-C is the way out).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import functools
import json
import math
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from dspy_pool import spec_files, structs
from dspy_pool.v1 import dspy_pool_pb2 as pb
from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

MODES = ("traditional", "optimized", "hybrid", "evaluation")  # ExecuteRequest.mode, ExecutionPolicy.mode
DEFAULT_PORT = 50051
DEFAULT_TARGET = f"127.0.0.1:{DEFAULT_PORT}"
TARGET_ENV = "DSPY_POOL_TARGET"  # the target when --target is not given
# Targets grpc reads by their scheme: a port is theirs to give, or not needed.
_TARGET_SCHEMES = ("unix:", "unix-abstract:", "dns:", "ipv4:", "ipv6:", "vsock:")
DEFAULT_TIMEOUT_S = 30.0
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# Replies are our own server's: a large saved state or a long program list must not fail
# on gRPC's 4 MiB default receive limit.
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]


class UsageError(Exception):
    """The command line, or a file it names, is wrong: exit 2 with this message."""


@dataclasses.dataclass(frozen=True)
class Failure:
    """A gRPC error as the user reads it: `CODE: message (reason: REASON)`."""

    code: str
    message: str
    reason: str = ""
    may_have_run: bool = False

    def __str__(self) -> str:
        notes = [f"reason: {self.reason}"] if self.reason else []
        if self.may_have_run:
            notes.append("it may have run: check before sending it again")
        return f"{self.code}: {self.message}" + (f" ({'; '.join(notes)})" if notes else "")


def describe(error: grpc.RpcError, target: str, timeout_s: float | None = None) -> Failure:
    """What went wrong, from the status code, message and the server's ErrorInfo."""
    code = error.code() if callable(getattr(error, "code", None)) else grpc.StatusCode.UNKNOWN
    message = (error.details() if callable(getattr(error, "details", None)) else None) or ""
    info = _error_info(error)
    if info is None and code == grpc.StatusCode.UNAVAILABLE and _is_connect_failure(message):
        message = f"no server at {target} ({message})"
    elif info is None and code == grpc.StatusCode.UNAVAILABLE and is_server_closed(message):
        message = f"the server at {target} closed the connection (it stopped or restarted)"
    elif info is None and code == grpc.StatusCode.CANCELLED:  # the command never cancels a call it still reads
        message = f"the server at {target} cancelled the call (it stopped or restarted)"
    elif info is None and code == grpc.StatusCode.DEADLINE_EXCEEDED and timeout_s is not None:
        message = f"no reply within {timeout_s:g} s (--timeout)"
    reason = info.reason if info is not None else ""
    may_have_run = info is not None and info.metadata.get("may_have_run") == "true"
    return Failure(code.name, message, reason, may_have_run)


def _error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError, TypeError):  # a status whose details do not match its code
        return None
    for detail in status.details if status is not None else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


def _is_connect_failure(message: str) -> bool:
    # The transport's own UNAVAILABLE (nothing listening, no such socket file, no such host);
    # a server that is up says UNAVAILABLE with an ErrorInfo (draining, no healthy worker).
    lowered = message.lower()
    # Not a bare "connect": "Connection reset" is a server that went away under a call (is_server_closed).
    return any(word in lowered for word in ("connect to", "connect failed", "connection refused", "no such file",
                                            "resolution", "resolving", "unreachable"))


# grpc-core's words for a connection the server ended under an open call: its shutdown
# ("Cancelling all calls"), its exit ("Socket closed", "Connection reset"), a GOAWAY.
_SERVER_CLOSED_WORDS = ("cancelling all calls", "socket closed", "connection reset", "goaway", "broken pipe",
                        "end of tcp stream", "connection aborted")


def ended_by_server(error: grpc.RpcError) -> bool:
    """A call the server's side ended without a status of its own: it stopped, restarted or lost the connection."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    if code == grpc.StatusCode.UNAVAILABLE:
        return is_server_closed((error.details() if callable(getattr(error, "details", None)) else None) or "")
    return code == grpc.StatusCode.CANCELLED and _error_info(error) is None


def is_server_closed(message: str) -> bool:
    """The transport's UNAVAILABLE for a call the server's side closed (checked after connect failures)."""
    lowered = message.lower()
    return any(words in lowered for words in _SERVER_CLOSED_WORDS)


# -- the command line -----------------------------------------------------------------------


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the client commands on `dspy-pool`'s subcommands."""
    common = _common_options()
    call = commands.add_parser("call", parents=[common], help="run a program once and print its outputs",
                               description="Run a program once. Inputs: a JSON object argument, - for a JSON "
                                           "object on stdin, or --inputs-file (JSON or YAML).")
    call.add_argument("program")
    call.add_argument("inputs", nargs="?", help='JSON object, e.g. \'{"question": "What is DSPy?"}\', or - for stdin')
    call.add_argument("--inputs-file", metavar="FILE", help="inputs as a JSON or YAML file")
    call.add_argument("--version", type=_non_negative_int, default=0, help="program version (default: latest)")
    call.add_argument("--session", default="", metavar="ID", help="append this call to a session's history")
    call.add_argument("--request-id", default="", help="echoed back and logged (default: generated)")
    call.add_argument("--mode", choices=MODES, default="",
                      help="override the program's execution policy for this call (ignored with --version)")
    call.add_argument("--max-optimization-wait-ms", type=_non_negative_int, default=0, metavar="MS",
                      help="optimized mode while the first optimization runs: wait this long for its version")
    call.set_defaults(handler=_guarded(_call), default_timeout=None)  # the server's default deadline applies

    register = commands.add_parser("register", parents=[common], help="register programs from spec files",
                                   description="Register programs from YAML, TOML or JSON files: one spec, a list "
                                               "of specs, or {programs: [...]}, with ProgramSpec's field names.")
    register.add_argument("files", nargs="+", metavar="FILE", help="spec file (.yaml, .yml, .toml, .json), or - for YAML/JSON on stdin")
    register.set_defaults(handler=_guarded(_register))

    _add_programs(commands, common)
    status = commands.add_parser("status", parents=[common], help="print the pool's status")
    status.set_defaults(handler=_guarded(_status))
    top = commands.add_parser("top", parents=[common], help="watch the pool's status live (Ctrl-C to quit)")
    top.add_argument("--interval", type=_positive_float, default=1.0, metavar="S", help="seconds between refreshes")
    top.add_argument("--once", action="store_true", help="print one snapshot and exit")
    top.set_defaults(handler=_guarded(_top))
    _add_session(commands, common)
    from dspy_pool import optimize_cli  # it builds on this module's plumbing

    optimize_cli.add_commands(commands, common)


def add_target_option(parser: argparse.ArgumentParser) -> None:
    """--target on `parser`. Unset, it leaves no attribute (SUPPRESS): a subcommand's --target must not overwrite
    one given before the subcommand, and `_guarded` fills in $DSPY_POOL_TARGET or the default."""
    parser.add_argument("--target", type=target_address, default=argparse.SUPPRESS,
                        help=f"server address: HOST[:PORT] (port {DEFAULT_PORT} if left out) or unix:PATH "
                             f"(default: ${TARGET_ENV}, else {DEFAULT_TARGET})")


def target_address(text: str) -> str:
    """A target as grpc takes it: a host without a port gets :50051 (grpc would try 443); unix: and other
    grpc schemes stay as given."""
    text = text.strip()
    if not text:
        raise argparse.ArgumentTypeError("the target is empty: give HOST[:PORT] or unix:PATH")
    if text.startswith(_TARGET_SCHEMES):
        return text
    if text.startswith("["):  # [IPv6] or [IPv6]:PORT
        return text if "]:" in text else f"{text}:{DEFAULT_PORT}"
    if text.count(":") > 1:  # a bare IPv6 address
        return f"[{text}]:{DEFAULT_PORT}"
    return text if ":" in text else f"{text}:{DEFAULT_PORT}"


def default_target(environ=os.environ) -> str:
    """$DSPY_POOL_TARGET (a port added as for --target), else 127.0.0.1:50051."""
    configured = environ.get(TARGET_ENV, "").strip()
    return target_address(configured) if configured else DEFAULT_TARGET


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    add_target_option(common)
    common.add_argument("--timeout", type=_positive_float, default=None, metavar="S",
                        help=f"seconds to wait for the reply (call: the server's default deadline; others: {DEFAULT_TIMEOUT_S:g})")
    common.add_argument("--json", action="store_true", help="print the reply as one JSON object")
    common.set_defaults(default_timeout=DEFAULT_TIMEOUT_S)
    return common


def _add_programs(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    programs = commands.add_parser("programs", help="list, show, export or delete registered programs")
    verbs = programs.add_subparsers(dest="verb", required=True)
    listing = verbs.add_parser("list", parents=[common], help="the latest version of each program")
    listing.add_argument("--all-versions", action="store_true", help="every version")
    listing.set_defaults(handler=_guarded(_programs_list))
    export = verbs.add_parser("export", parents=[common],
                              help="write the registry as a spec file (for git; `register` and --programs-file read it back)")
    export.add_argument("--all-versions", action="store_true", help="every version, oldest first (default: the latest of each)")
    export.add_argument("--format", choices=("yaml", "json", "toml"), default="yaml")
    export.add_argument("--output", "-o", default="-", help="file to write (default: stdout)")
    export.set_defaults(handler=_guarded(_programs_export))
    for verb, handler, what in (("get", _programs_get, "show a program's spec (as YAML)"),
                                ("delete", _programs_delete, "delete a program: every version, or one with --version")):
        parser = verbs.add_parser(verb, parents=[common], help=what)
        parser.add_argument("name")
        parser.add_argument("--version", type=_non_negative_int, default=0,
                            help="version (default: latest for get, every version for delete)")
        parser.set_defaults(handler=_guarded(handler))


def _add_session(commands: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    session = commands.add_parser("session", help="show or close a session")
    verbs = session.add_subparsers(dest="verb", required=True)
    for verb, handler, what in (("get", _session_get, "print a session's turns"), ("close", _session_close, "close a session")):
        parser = verbs.add_parser(verb, parents=[common], help=what)
        parser.add_argument("session_id", metavar="ID")
        parser.set_defaults(handler=_guarded(handler))


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _guarded(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """The handler, with every expected failure turned into one stderr line and an exit code."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        if getattr(args, "target", None) is None:  # no --target before or after the subcommand
            args.target = default_target()
        try:
            return handler(args)
        except UsageError as exc:
            return _fail(str(exc), EXIT_USAGE)
        except spec_files.SpecFileError as exc:
            return _fail(str(exc), EXIT_USAGE)
        except grpc.RpcError as exc:
            return _fail(str(describe(exc, args.target, _timeout(args))), EXIT_ERROR)
        except KeyboardInterrupt:
            return EXIT_INTERRUPTED
        except BrokenPipeError:
            _silence_stdout()  # `dspy-pool programs list | head`: the reader left; not an error to report
            return EXIT_ERROR
        except Exception as exc:  # a user sees one line, whatever broke; a traceback is for our tests
            return _fail(f"unexpected {type(exc).__name__}: {exc}", EXIT_ERROR)

    return run


def _fail(message: str, code: int) -> int:
    print(f"dspy-pool: {message}", file=sys.stderr)
    return code


def _silence_stdout() -> None:
    # Python flushes stdout again at exit; point it at /dev/null so that flush cannot fail.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _timeout(args: argparse.Namespace) -> float | None:
    """--timeout, else the command's own default (None for call: the server's deadline applies)."""
    return args.timeout if args.timeout is not None else args.default_timeout


@contextlib.contextmanager
def _stub(args: argparse.Namespace) -> Iterator[pb_grpc.DSPyPoolStub]:
    with grpc.insecure_channel(args.target, options=_CHANNEL_OPTIONS) as channel:
        yield pb_grpc.DSPyPoolStub(channel)


# -- output ---------------------------------------------------------------------------------


def to_dict(message: Message) -> dict:
    """A reply as --json prints it: proto field names, fields at their defaults included."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def _print_json(value: dict | Message) -> None:
    print(json.dumps(to_dict(value) if isinstance(value, Message) else value, indent=2, ensure_ascii=False))


# Piped or redirected, rich would fit tables into 80 columns, cutting cells (`chain_of_thou…`) and
# wrapping rows, so `programs list | grep` misses; a row per line instead, however long.
_PIPED_WIDTH = 10_000


def _console():
    from rich.console import Console  # only the commands that draw tables pay for rich

    console = Console(file=sys.stdout, highlight=False)
    if not console.is_terminal:
        console.width = _PIPED_WIDTH
    return console


def _when(timestamp) -> str:
    if not timestamp.seconds and not timestamp.nanos:
        return "-"
    return timestamp.ToDatetime(tzinfo=datetime.timezone.utc).astimezone().strftime("%Y-%m-%d %H:%M:%S")


# -- call -----------------------------------------------------------------------------------


def _call(args: argparse.Namespace) -> int:
    request = pb.ExecuteRequest(program=args.program, version=args.version, session_id=args.session,
                                request_id=args.request_id, mode=args.mode,
                                max_optimization_wait_ms=args.max_optimization_wait_ms)
    _fill_struct(request.inputs, read_inputs(args.inputs, args.inputs_file, sys.stdin), "inputs")
    with _stub(args) as stub:
        response = stub.Execute(request, timeout=_timeout(args))
    if args.json:
        _print_json({**to_dict(response), "outputs": structs.struct_to_dict(response.outputs)})
        return EXIT_OK
    print(json.dumps(structs.struct_to_dict(response.outputs), indent=2, ensure_ascii=False))
    print(call_summary(response), file=sys.stderr)
    if response.HasField("evaluation"):
        print(evaluation_summary(response.evaluation), file=sys.stderr)
    return EXIT_OK


def read_inputs(inline: str | None, path: str | None, stdin) -> dict:
    """A call's inputs: the JSON argument, `-` (JSON on stdin), or a JSON/YAML file; {} if none."""
    if inline is not None and path is not None:
        raise UsageError("give the inputs once: as a JSON argument, - for stdin, or --inputs-file")
    if path is not None:
        value = _read_inputs_file(path)
    elif inline == "-":
        value = _parse_json(stdin.read(), "inputs on stdin")
    elif inline is not None:
        value = _parse_json(inline, "inputs")
    else:
        value = {}
    if not isinstance(value, dict):
        raise UsageError(f"inputs must be a JSON object of field names to values, got {type(value).__name__}")
    return value


def _read_inputs_file(path: str) -> Any:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if Path(path).suffix.lower() == ".json":
        return _parse_json(text, path)
    import yaml

    try:
        return yaml.safe_load(text)  # YAML reads JSON too
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None


def _parse_json(text: str, what: str) -> Any:
    def not_a_number(name: str) -> Any:  # json.loads takes NaN and Infinity, which JSON has not
        raise UsageError(f"{what}: {name} is not a JSON number; a Struct holds finite numbers only")

    try:
        return json.loads(text, parse_constant=not_a_number)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{what}: invalid JSON: {exc}") from None


def _exact(value: Any, where: str) -> None:
    """Refuse what a Struct would carry changed: integers past 2^53 (rounded) and NaN or infinities (a YAML file's)."""
    if isinstance(value, dict):
        for key, item in value.items():
            _exact(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _exact(item, f"{where}[{index}]")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > structs.MAX_EXACT_INT:
        raise UsageError(f"{where}: {value} cannot travel exactly as a Struct number (a double): send it as a string")
    elif isinstance(value, float) and not math.isfinite(value):
        raise UsageError(f"{where}: {value} is not a finite number")


def _fill_struct(struct, value: dict, what: str) -> None:
    _exact(value, what)
    try:
        json_format.ParseDict(value, struct)
    except json_format.ParseError as exc:  # a YAML date, say: not a JSON value
        raise UsageError(f"{what}: {exc}") from None


def call_summary(response: pb.ExecuteResponse) -> str:
    """One line about who answered and how fast: version, worker, served_by, latency."""
    parts = [f"{response.program} version {response.program_version}",
             f"worker {response.worker.id} (pid {response.worker.pid})" if response.worker.pid else "no worker",
             f"served_by {response.served_by or 'primary'}" + (f" ({response.fallback_reason})" if response.fallback_reason else ""),
             f"{response.timings.total_ms:.1f} ms (queue {response.timings.queue_wait_ms:.1f} ms)"]
    if response.execution_mode:
        parts.insert(3, f"mode {response.execution_mode}")
    if response.session_id:
        note = " (new)" if response.session_started else ""
        lost = f", earlier one {response.session_lost}" if response.session_lost else ""
        parts.append(f"session {response.session_id}{note}{lost}")
    parts.append(f"request {response.request_id}")
    return ", ".join(parts)


def evaluation_summary(arm: pb.EvaluationArm) -> str:
    """Evaluation mode's other version, on one line: its outputs (or error), latency and dev score."""
    score = f", dev score {arm.score:.3f}" if arm.score else ""
    if arm.error:
        return f"evaluation: version {arm.version} failed in {arm.latency_ms:.1f} ms{score}: {arm.error}"
    outputs = json.dumps(structs.struct_to_dict(arm.outputs), ensure_ascii=False)
    return f"evaluation: version {arm.version} answered in {arm.latency_ms:.1f} ms{score}: {outputs}"


# -- register -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One spec to register, and where it came from, for error messages."""

    spec: pb.ProgramSpec
    source: str
    index: int
    count: int


def _register(args: argparse.Namespace) -> int:
    entries = [entry for path in args.files for entry in _spec_entries(path)]  # all files checked before any RPC
    registered: list[pb.Program] = []
    with _stub(args) as stub:
        for entry in entries:
            try:
                program = stub.RegisterProgram(pb.RegisterProgramRequest(spec=entry.spec), timeout=_timeout(args))
            except grpc.RpcError as exc:
                failure = describe(exc, args.target, _timeout(args))
                return _fail(_register_failure(entry, failure, registered), refused_file_exit(failure))
            registered.append(program)
            if not args.json:
                print(_registered_line(program))
    if args.json:
        _print_json({"programs": [to_dict(program) for program in registered]})
    return EXIT_OK


def refused_file_exit(failure: Failure) -> int:
    """A spec or examples file the server refuses (INVALID_ARGUMENT) is a bad file, as when the client finds the
    fault: exit 2; anything else the server says is exit 1."""
    return EXIT_USAGE if failure.code == grpc.StatusCode.INVALID_ARGUMENT.name else EXIT_ERROR


def _spec_entries(path: str) -> list[_Entry]:
    specs = spec_files.parse_specs(sys.stdin.read(), "yaml", "<stdin>") if path == "-" else spec_files.load_specs(path)
    if not specs:
        raise UsageError(f"{path}: no programs in the file")
    source = "<stdin>" if path == "-" else path
    return [_Entry(spec, source, index, len(specs)) for index, spec in enumerate(specs)]


def _register_failure(entry: _Entry, failure: Failure, registered: list[pb.Program]) -> str:
    where = f'registering "{entry.spec.name}" ({entry.source}, entry {entry.index + 1} of {entry.count})'
    line = f"{failure.code}: {where}: {failure.message}" + (f" (reason: {failure.reason})" if failure.reason else "")
    if registered:
        line += "; registered before it: " + ", ".join(f"{p.spec.name} v{p.version}" for p in registered)
    return line


def _registered_line(program: pb.Program) -> str:
    what = "new version" if program.created else "unchanged: same content"
    return f"registered {program.spec.name} version {program.version} ({what})"


# -- programs -------------------------------------------------------------------------------


def _programs_list(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        reply = pb.ListProgramsResponse(programs=_all_programs(stub, args))
    if args.json:
        _print_json(reply)
    elif not reply.programs:
        print("no programs registered")
    else:
        _console().print(programs_table(reply.programs))
    return EXIT_OK


def all_pages(method, request, field: str, timeout_s: float | None) -> list:
    """Every item of a paged listing (ListPrograms, ListDatasets: a page stops at 1,000 items or 2 MiB)."""
    items = []
    while True:
        reply = method(request, timeout=timeout_s)
        items.extend(getattr(reply, field))
        if not reply.next_page_token:
            return items
        request.page_token = reply.next_page_token


def _all_programs(stub, args: argparse.Namespace) -> list[pb.Program]:
    return all_pages(stub.ListPrograms, pb.ListProgramsRequest(all_versions=args.all_versions), "programs", _timeout(args))


def programs_table(programs):
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("name", "version", "module", "signature", "created", "hash"):
        table.add_column(column, justify="right" if column == "version" else "left")
    for program in programs:
        table.add_row(program.spec.name, str(program.version), program.spec.module or "predict", _signature(program),
                      _when(program.created_at), program.content_hash[:12])
    return table


def _signature(program: pb.Program) -> str:
    if program.spec.signature:
        return program.spec.signature
    return f"{', '.join(program.input_names)} -> {', '.join(program.output_names)}"


def _programs_get(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        program = stub.GetProgram(pb.GetProgramRequest(name=args.name, version=args.version), timeout=_timeout(args))
    if args.json:
        _print_json(program)
        return EXIT_OK
    # A YAML comment and then a spec file: `programs get qa > qa.yaml` is ready for `register`.
    print(f"# {program.spec.name} version {program.version}, created {_when(program.created_at)}, "
          f"content {program.content_hash[:12]}")
    print(spec_files.dump_specs([program.spec], "yaml"), end="")
    return EXIT_OK


def _programs_export(args: argparse.Namespace) -> int:
    """The registry in the spec-file format: registering the file into an empty server gives the same versions."""
    with _stub(args) as stub:
        reply = pb.ListProgramsResponse(programs=_all_programs(stub, args))
    text = spec_files.dump_specs([program.spec for program in reply.programs], args.format)
    if args.output == "-":
        print(text, end="")
    else:
        with open(args.output, "w", encoding="utf-8") as handle:
            handle.write(text)
        print(f"wrote {len(reply.programs)} program{'s' if len(reply.programs) != 1 else ''} to {args.output}", file=sys.stderr)
    return EXIT_OK


def _programs_delete(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        reply = stub.DeleteProgram(pb.DeleteProgramRequest(name=args.name, version=args.version), timeout=_timeout(args))
    if args.json:
        _print_json(reply)
    else:
        versions = ", ".join(str(v) for v in reply.deleted_versions) or "none"
        print(f"deleted {args.name} version{'s' if len(reply.deleted_versions) != 1 else ''} {versions}")
    return EXIT_OK


# -- status and top -------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        status = stub.GetPoolStatus(pb.GetPoolStatusRequest(), timeout=_timeout(args))
    _print_snapshot(status, args)
    return EXIT_OK


def _top(args: argparse.Namespace) -> int:
    request = pb.WatchPoolStatusRequest(interval_s=args.interval)
    with _stub(args) as stub:
        # --once is one reply, so it has a deadline; the live view runs until Ctrl-C.
        stream = stub.WatchPoolStatus(request, timeout=_timeout(args) if args.once else None)
        try:
            if args.json:  # one object per line, for a reader that follows the stream (--once: its first line)
                for status in stream:
                    print(json.dumps(to_dict(status), ensure_ascii=False), flush=True)
                    if args.once:
                        break
            elif args.once:
                _print_snapshot(next(stream), args)
            else:
                _live(stream, args.target)
        except KeyboardInterrupt:
            return EXIT_OK
        finally:
            stream.cancel()
    return EXIT_OK


def _print_snapshot(status: pb.PoolStatus, args: argparse.Namespace) -> None:
    if args.json:
        _print_json(status)
    else:
        from dspy_pool import status_view

        _console().print(status_view.render(status, args.target))


def _live(stream, target: str) -> None:
    from rich.live import Live

    from dspy_pool import status_view

    console = _console()
    if not console.is_terminal:
        # Piped or logged: Live would show only the last frame, at exit; print each in turn.
        for status in stream:
            console.print(status_view.render(status, target, live=True), "")
        return
    # Redrawn when a snapshot arrives, not on a timer: the server sets the pace.
    with Live(console=console, auto_refresh=False, screen=False, transient=False) as live:
        for status in stream:
            live.update(status_view.render(status, target, live=True), refresh=True)


# -- sessions -------------------------------------------------------------------------------


def _session_get(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        session = stub.GetSession(pb.GetSessionRequest(session_id=args.session_id), timeout=_timeout(args))
    if args.json:
        _print_json(session)
        return EXIT_OK
    print(f"session {session.session_id}: {len(session.turns)} turn{'s' if len(session.turns) != 1 else ''}, "
          f"created {_when(session.created_at)}, last used {_when(session.last_used_at)}, "
          f"preferred worker {session.preferred_worker}")
    for number, turn in enumerate(session.turns, 1):
        print(f"#{number} {turn.program}")
        print(f"  inputs:  {json.dumps(structs.struct_to_dict(turn.inputs), ensure_ascii=False)}")
        print(f"  outputs: {json.dumps(structs.struct_to_dict(turn.outputs), ensure_ascii=False)}")
    return EXIT_OK


def _session_close(args: argparse.Namespace) -> int:
    with _stub(args) as stub:
        reply = stub.CloseSession(pb.CloseSessionRequest(session_id=args.session_id), timeout=_timeout(args))
    if args.json:
        _print_json(reply)
    else:
        print(f"closed session {args.session_id} ({reply.turns} turn{'s' if reply.turns != 1 else ''})")
    return EXIT_OK


# -- for `dspy-pool serve` ------------------------------------------------------------------


def serving_hint(listen: str, port: int, demo: bool) -> str:
    """The command to try next, once a server listening on `listen` (bound to `port`) serves."""
    target = client_target(listen, port)
    option = "" if target == DEFAULT_TARGET else f" --target {target}"
    if demo:
        return f"""try: dspy-pool call demo_qa '{{"question": "What is DSPy?"}}'{option}"""
    return f"try: dspy-pool register SPEC.yaml{option} && dspy-pool status{option}"


def client_target(listen: str, port: int) -> str:
    """Where a client on this machine reaches a server listening on `listen`: the bound port
    for port 0, loopback for a wildcard address."""
    if listen.startswith("unix:"):
        return listen
    host = listen.rpartition(":")[0]
    host = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
    return f"{host}:{port}"
