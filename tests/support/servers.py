"""Real HTTP servers on loopback for functional tests: uvicorn in a background thread.

A port chosen free (`free_port`) and bound later by a server is a window in which another test process, server or
outgoing connection can take it: the server then fails "address already in use", or worse, the test talks to the
other one. So a server that can take a socket is handed one already bound and listening (`listening_socket`:
`ServerThread`, moto's `DynamoServer`), `gateway serve` is told `--port 0` and says where it listens, and one that
can only be told a port (the Prometheus binary, `observability.metrics_port`) is started again on another when
it says the port was taken (`on_a_free_port`). A port that must refuse connections is held bound (`refusing_port`).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import uvicorn

Started = TypeVar("Started")
ATTEMPTS = 5  # starts on another port before a server that keeps finding its port taken is a failure
ADDRESS_IN_USE = ("address already in use", "errno 98")  # how a server says so (Linux's EADDRINUSE), lowercased
_refusing: list[socket.socket] = []  # the sockets `refusing_port` holds, for the process's life


def free_port() -> int:
    """A loopback port free now, for a server that can only be told a port: start that one with `on_a_free_port`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening_socket(port: int = 0) -> socket.socket:
    """A socket bound to 127.0.0.1:`port` (0: a free one, which is then this socket's) and listening, for a server
    to serve on: no other can take the port between its choice and the server's start."""
    # (Made as TCP by name, not `socket.create_server`'s protocol 0: asyncio sets TCP_NODELAY only on a connection
    # whose socket says IPPROTO_TCP, and a connection accepted on a protocol-0 socket says 0, so its answers waited
    # on Nagle's algorithm and the delayed ACK, 40 ms a request: tests/bench/timeline.py served 23 requests a second.)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def refusing_port() -> int:
    """A loopback port that refuses connections at once: bound, never listening, and held for the process's life, so
    that no server another test starts can take it and answer."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    _refusing.append(sock)
    port: int = sock.getsockname()[1]
    return port


class PortTaken(Exception):
    """A server could not listen on the port it was told: another took it after `free_port` chose it."""


def said_port_taken(log: str) -> bool:
    """Whether a server's log says it could not bind its port."""
    lowered = log.lower()
    return any(words in lowered for words in ADDRESS_IN_USE)


def on_a_free_port(start: Callable[[int], Started], attempts: int = ATTEMPTS) -> Started:
    """What `start` returns, given a free port: started again on another where it raises `PortTaken`."""
    for _ in range(attempts - 1):
        try:
            return start(free_port())
        except PortTaken:
            continue
    return start(free_port())


class ServerThread:
    """Runs an ASGI app under uvicorn on 127.0.0.1 until `stop()`."""

    def __init__(
        self,
        app: Any,
        port: int | None = None,
        cleanup: Callable[[], Awaitable[None]] | None = None,
        keep_alive_s: float = 75,
        http: str = "auto",
    ) -> None:
        self.cleanup = cleanup
        self.listener = listening_socket(port or 0)  # (the server's from its start: `listening_socket`)
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="error",
            lifespan="off",
            ws="none",
            access_log=False,
            proxy_headers=False,  # as `gateway serve`: the app alone decides whom to trust
            # By default longer than any pause a test client's pool sees: a server closing an idle keep-alive
            # connection just as a client reuses it is then a race of the harness, not of the gateway. A test
            # of that very case (an upstream that closes idle connections) passes its own.
            timeout_keep_alive=keep_alive_s,
            http=http,
        )
        self.server = uvicorn.Server(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.serve(sockets=[self.listener]))
        if self.cleanup is not None:
            self.loop.run_until_complete(self.cleanup())
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("test server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        self.listener.close()  # (uvicorn closed it where it served; here where it never started)


class SocketServer:
    """A TCP server on loopback in threads of its own, so it runs while a test blocks its event loop: each
    connection goes to `serve` on its own thread (which closes it); `connections` counts them."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self.serve = serve
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return  # the listener was closed
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self.listener.close()
