"""`dspy-pool` command line: serve, sim-lm, probe, and the client commands (client_cli.py)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys

from dspy_pool import client_cli, logs
from dspy_pool.server import config as config_module

DEMO_PROGRAM = {"name": "demo_qa", "signature": "question -> answer", "module": "chain_of_thought"}


def _serve(args: argparse.Namespace) -> int:
    try:
        config = config_module.load(args)
        from dspy_pool.server.app import serve, validate

        validate(config)  # before the sim LM or the zygote exists
        if config.state.programs_file:
            from dspy_pool.spec_files import load_specs

            load_specs(config.state.programs_file)  # a bad file names the file, the entry and the field
    except (ValueError, OSError) as exc:
        print(f"dspy-pool: {exc}", file=sys.stderr)
        return 2
    logs.configure(config.observe.log_format, config.observe.log_level, secrets=config_module.secrets_of(config))

    async def run() -> None:
        demos: list[asyncio.Future] = []
        def on_serving(port: int) -> None:
            # The next thing a new user can type, with no other tool installed.
            print(client_cli.serving_hint(config.server.listen, port, args.demo), flush=True)
            if args.demo:
                demos.append(asyncio.ensure_future(_demo_call(client_cli.client_target(config.server.listen, port))))

        if config.server.front_processes > 1:
            from dspy_pool.fronts.supervisor import serve_group

            await serve_group(config, on_serving)
        else:
            await serve(config, lambda app: on_serving(app.port))
        for demo in demos:
            demo.cancel()

    try:
        run_loop(run())
    except Exception as exc:
        print(f"dspy-pool: failed: {exc}", file=sys.stderr)
        return 1
    return 0


def run_loop(coro) -> None:
    try:
        import uvloop

        uvloop.run(coro)
    except ImportError:
        asyncio.run(coro)


async def _demo_call(target: str) -> None:
    """Register a program and make one call over gRPC: the quick start's proof."""
    import grpc

    from dspy_pool.v1 import dspy_pool_pb2 as pb
    from dspy_pool.v1 import dspy_pool_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.DSPyPoolStub(channel)
        await stub.RegisterProgram(pb.RegisterProgramRequest(spec=pb.ProgramSpec(**DEMO_PROGRAM)), timeout=30)
        request = pb.ExecuteRequest(program="demo_qa")
        request.inputs.update({"question": "What is a zygote process?"})
        response = await stub.Execute(request, timeout=30)
        from google.protobuf import json_format

        # Proto field names (program_version), as every --json output and the README show them.
        demo = json_format.MessageToDict(response, preserving_proto_field_name=True)
        print("demo call:", json.dumps(demo, indent=2, ensure_ascii=False), flush=True)


def _probe(args: argparse.Namespace) -> int:
    """Exit 0 when the health service says SERVING (Docker HEALTHCHECK, k8s exec probes)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    target = getattr(args, "target", None) or client_cli.default_target()  # given before or after `probe`, or the default
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
    except grpc.RpcError as exc:
        print(f"not serving: {exc.code().name}", file=sys.stderr)
        return 1
    serving = reply.status == health_pb2.HealthCheckResponse.SERVING
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
    return 0 if serving else 1


def _sim_lm(argv: list[str]) -> int:
    from dspy_pool.simlm.server import main

    return main(argv)


def _profile_in(argv: list[str]) -> str | None:
    """The --profile on the command line, so `serve --profile X --help` shows X's defaults."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--profile")
    return pre.parse_known_args(argv)[0].profile


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sim-lm"]:
        return _sim_lm(argv[1:])
    parser = argparse.ArgumentParser(prog="dspy-pool", description="Serve DSPy programs over gRPC from a prewarmed worker pool.")
    client_cli.add_target_option(parser)  # before the subcommand, for every client command (or after it)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server")
    config_module.add_flags(serve, profile=_profile_in(argv))
    serve.add_argument("--demo", action="store_true", help="once serving, register a demo program and print one call")
    serve.set_defaults(handler=_serve)
    commands.add_parser("sim-lm", help="run the simulated OpenAI-compatible LM (see `dspy-pool sim-lm --help`)")
    probe = commands.add_parser("probe", help="exit 0 if the server's health service says SERVING",
                                description="Ask the server's gRPC health service; exit 0 and print SERVING when it "
                                            "serves, else exit 1 (for Docker HEALTHCHECK and Kubernetes exec probes).")
    client_cli.add_target_option(probe)
    probe.add_argument("--service", default="",
                       help='the health service name to ask: "" (default) for the whole server, or dspy_pool.v1.DSPyPool')
    probe.add_argument("--timeout", type=client_cli._positive_float, default=3.0, metavar="S",
                       help="seconds to wait for the answer (default %(default)s)")
    probe.set_defaults(handler=_probe)
    client_cli.add_commands(commands)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
