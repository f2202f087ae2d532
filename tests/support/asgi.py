"""An HTTP scope as a server gives the app, for driving the gateway's ASGI app in-process."""

from __future__ import annotations

from typing import Any


def post_scope(path: str, headers: list[tuple[bytes, bytes]], client: tuple[str, int]) -> dict[str, Any]:
    """A `POST path` over HTTP/1.1 from `client` to 127.0.0.1:8080."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": client,
        "server": ("127.0.0.1", 8080),
    }
