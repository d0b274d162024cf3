"""Whether the addresses the server is told to listen on are free, asked before any child process starts.

gRPC and the metrics endpoint bind late (after the store, the simulated LM and
the zygote are up), and gRPC's own error names neither the cause nor the flag.
A test bind first turns a taken port into one line that says which address and
which flag. The port can still be taken in between; the late bind then fails as
before, with the same words (`describe_bind_error`).
"""

from __future__ import annotations

import socket

from dspy_pool.fronts.plan import port_of


def _host_of(listen: str) -> str:
    return listen.rpartition(":")[0].strip("[]") or "0.0.0.0"


def check_free(host: str, port: int, flag: str) -> None:
    """OSError naming the address and `flag` when a server could not listen on host:port (port 0: any is fine)."""
    if port == 0:
        return
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc} ({flag})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC and http.server do: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as exc:
            raise OSError(describe_bind_error(f"{host}:{port}", exc.strerror or str(exc), flag)) from None


def check_listen_free(listen: str) -> None:
    """check_free for a --listen address (a unix: socket is not checked)."""
    if not listen.startswith("unix:"):
        check_free(_host_of(listen), port_of(listen), "--listen")


def describe_bind_error(address: str, cause: str, flag: str) -> str:
    return f"cannot listen on {address}: {cause} (another server on it? choose another address with {flag})"
