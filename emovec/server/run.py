"""Running the app with uvicorn: the listening socket, the address announced once the app has
started, and a graceful shutdown (SIGTERM or Ctrl-C: no new connections, requests in flight
answered, then the batching stops)."""

from __future__ import annotations

import math
import socket
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI

from emovec.server.options import DRAIN_TIMEOUT

__all__ = ["address_of", "listening_socket", "make_server", "serve"]


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0: a free port).

    Raises:
        OSError: If the address is taken or cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def address_of(sock: socket.socket) -> str:
    """The base URL a bound socket serves, e.g. ``http://127.0.0.1:8000``."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``started`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, started: Callable[[], None] | None) -> None:
        super().__init__(config)
        self._on_started = started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self._on_started is not None and not self.should_exit:
            self._on_started()


def make_server(
    app: FastAPI,
    *,
    log_level: str = "info",
    drain_timeout: float | None = DRAIN_TIMEOUT,
    started: Callable[[], None] | None = None,
) -> uvicorn.Server:
    """A uvicorn server for ``app``; run it with ``server.run(sockets=[sock])`` (in a thread
    too: set ``server.should_exit = True`` to stop it as SIGTERM would).

    Args:
        app: The app (:func:`emovec.server.create_app`).
        log_level: uvicorn's log level.
        drain_timeout: Seconds a shutdown waits for requests in flight before it cancels
            them (``None``: as long as they take).
        started: Called once the server accepts connections.
    """
    config = uvicorn.Config(
        app,
        log_level=log_level,
        lifespan="on",
        timeout_graceful_shutdown=None if drain_timeout is None else math.ceil(drain_timeout),
    )
    return _Server(config, started)


def serve(
    app: FastAPI,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    log_level: str = "info",
    drain_timeout: float | None = DRAIN_TIMEOUT,
) -> bool:
    """Serve ``app`` until SIGTERM or Ctrl-C, printing the address once it listens.

    Returns:
        Whether the server started (if not, uvicorn has logged why).

    Raises:
        OSError: If ``host``:``port`` cannot be bound.
    """
    sock = listening_socket(host, port)
    address = address_of(sock)

    def announce() -> None:
        print(f"emovec serve: listening on {address}", flush=True)

    server = make_server(app, log_level=log_level, drain_timeout=drain_timeout, started=announce)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return bool(server.started)
