"""The test servers come up though another process takes the port `free_port` chose before they bind it (another
test process's server, an outgoing connection): they were told that port and failed "address already in use", a
flaky failure of whichever test started them (tests/support/servers.py)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from tests.bench import ab
from tests.functional import test_prometheus_scrape
from tests.support import dynamo, serve, servers

# Where a chosen port was looked up before the fix, each module by its own name: each is made to find it taken.
CHOOSERS = (servers, dynamo, serve, test_prometheus_scrape, ab)
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def taken(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], list[int]]]:
    """`taken(count)`: the next `count` ports `free_port` chooses are listened on by another socket as soon as they
    are chosen (the ports, as they are); those after are free."""
    squatters: list[socket.socket] = []
    chosen: list[int] = []
    choose = servers.free_port

    def take(count: int) -> list[int]:
        def chosen_then_taken() -> int:
            port = choose()
            if len(chosen) < count:
                chosen.append(port)
                squatters.append(socket.create_server(("127.0.0.1", port)))
            return port

        for module in CHOOSERS:
            monkeypatch.setattr(module, "free_port", chosen_then_taken, raising=False)
        return chosen

    yield take
    for squatter in squatters:
        squatter.close()


async def hello(request: object) -> PlainTextResponse:
    return PlainTextResponse("hello")


def test_a_server_thread_serves_on_a_port_no_other_can_take(taken: Callable[[int], list[int]]) -> None:
    squatted = taken(100)
    server = servers.ServerThread(Starlette(routes=[Route("/", hello)])).start()
    try:
        assert httpx.get(server.url).text == "hello"
    finally:
        server.stop()
    assert server.port not in squatted


def test_the_dynamodb_server_serves_on_a_port_no_other_can_take(taken: Callable[[int], list[int]]) -> None:
    squatted = taken(100)
    server = dynamo.DynamoServer().start()
    try:
        assert server.client().list_tables()["TableNames"] == []
    finally:
        server.stop()
    assert server.port not in squatted


def test_gateway_serve_listens_on_a_port_no_other_can_take(taken: Callable[[int], list[int]], tmp_path: Path) -> None:
    squatted = taken(100)
    with serve.gateway_serve("http://127.0.0.1:9", tmp_path, {}) as served:
        assert httpx.get(f"{served.url}/health").status_code == 200
    assert httpx.URL(served.url).port not in squatted


def test_the_benchmarks_gateway_serves_on_a_port_no_other_can_take(
    taken: Callable[[int], list[int]], tmp_path: Path
) -> None:
    squatted = taken(100)
    with ExitStack() as stack:
        url, _, _ = ab.serve_checkout(stack, ROOT, tmp_path, dict(os.environ))
        assert httpx.get(url.replace("/v1/chat/completions", "/health")).status_code == 200
    assert httpx.URL(url).port not in squatted


def test_prometheus_starts_again_on_another_port_where_its_port_was_taken(
    taken: Callable[[int], list[int]], tmp_path: Path
) -> None:
    """The Prometheus binary takes only a port to listen on: where another took it, it says so and ends, and is
    started again on another; the server that answers is checked to be this one."""
    squatted = taken(1)
    job = {"job_name": "nothing", "static_configs": [{"targets": ["127.0.0.1:9"]}]}
    with test_prometheus_scrape.prometheus_server(job, tmp_path) as url:
        assert httpx.get(f"{url}/-/ready").status_code == 200
    assert len(squatted) == 1 and httpx.URL(url).port != squatted[0]


async def test_a_connection_accepted_on_a_test_servers_socket_sends_without_delay() -> None:
    # `listening_socket` made its socket as protocol 0 (`socket.create_server`): asyncio sets TCP_NODELAY only where a
    # socket says IPPROTO_TCP, so each answer of a server on it waited on Nagle's algorithm, 40 ms a request.
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            sock = transport.get_extra_info("socket")
            accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    with servers.listening_socket() as listener:
        server = await asyncio.get_running_loop().create_server(Probe, sock=listener)
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname())
            try:
                assert await asyncio.wait_for(accepted, 5) != 0
            finally:
                writer.close()
