"""Whether the addresses the server is told to listen on are free, asked before any child process starts.

gRPC and the metrics endpoint bind late (after the store, the simulated LM and
the zygote are up), and gRPC's own error names neither the cause nor the flag.
A test bind first turns a taken port into one line that says which address and
which flag, and the test socket stays bound (never listening) until the late bind:
otherwise a child's bind to port 0 (the simulated LM's) can be handed that very port
in between, and the server fails to start on a port that was free. Both sockets set
SO_REUSEADDR, which Linux lets share a port while neither listens; a bind to port 0
never shares one. Another process can still take the port in between with
SO_REUSEADDR; the late bind then fails with the same words (`describe_bind_error`).
"""

from __future__ import annotations

import socket

from dspy_pool.fronts.plan import port_of


def _host_of(listen: str) -> str:
    return listen.rpartition(":")[0].strip("[]") or "0.0.0.0"


def reserve(host: str, port: int, flag: str) -> socket.socket | None:
    """A socket bound to host:port, held until the server's own bind (close it then); OSError naming the address and
    `flag` when a server could not listen there. None for port 0 (any port is fine)."""
    if port == 0:
        return None
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc} ({flag})") from None
    held = socket.socket(family, kind, proto)
    held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC and http.server do: TIME_WAIT is no conflict
    try:
        held.bind(address)
    except OSError as exc:
        held.close()
        raise OSError(describe_bind_error(f"{host}:{port}", exc.strerror or str(exc), flag)) from None
    return held


def reserve_listen(listen: str) -> socket.socket | None:
    """reserve for a --listen address (a unix: socket is not reserved)."""
    if listen.startswith("unix:"):
        return None
    return reserve(_host_of(listen), port_of(listen), "--listen")


def describe_bind_error(address: str, cause: str, flag: str) -> str:
    return f"cannot listen on {address}: {cause} (another server on it? choose another address with {flag})"
