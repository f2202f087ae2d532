"""Real HTTP servers on loopback for functional tests: uvicorn in a background thread."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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
        self.port = port or free_port()
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
        self.loop.run_until_complete(self.server.serve())
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
        self.thread.join(timeout=10)


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
