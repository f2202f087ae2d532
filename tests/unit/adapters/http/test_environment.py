"""Proxies and CA roots from the environment, as httpx takes them: a local forward proxy counts the tunnels
and requests it carried; an HTTPS upstream's self-signed CA is trusted through SSL_CERT_FILE."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from adapters.http.environment import ProxyRules
from adapters.http.http1 import Http1Transport
from handler.config import TimeoutConfig
from handler.errors import UpstreamError
from handler.pipeline.upstream import UpstreamClient
from handler.ports import UpstreamRequest
from tests.support.tls import self_signed
from tests.unit.adapters.http.test_http1 import OK, answering, read_all, scripted, send

pytestmark = pytest.mark.both_loops
PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY", "SSL_CERT_FILE", "SSL_CERT_DIR")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@dataclass
class ForwardProxy:
    """What the proxy carried: CONNECT tunnels, and the request heads it forwarded in absolute form."""

    refuse: bool = False
    hang_up: bool = False  # a CONNECT is closed unanswered
    tunnels: list[bytes] = field(default_factory=list)
    forwarded: list[bytes] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].split(b" ", 2)
            if method == b"CONNECT":
                self.tunnels.append(head)
                if self.hang_up:
                    return
                if self.refuse:
                    writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                    return
                host, port = target.decode().rsplit(":", 1)
                host = host.removeprefix("[").removesuffix("]")  # (an IPv6 literal's brackets)
                upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                self.forwarded.append(head)
                origin = httpx.URL(target.decode())
                upstream_reader, upstream_writer = await asyncio.open_connection(origin.host, origin.port)
                upstream_writer.write(head)
            await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        with suppress(ConnectionError, RuntimeError):
            writer.close()


@asynccontextmanager
async def forward_proxy(refuse: bool = False, hang_up: bool = False) -> AsyncIterator[tuple[ForwardProxy, str]]:
    proxy = ForwardProxy(refuse, hang_up)
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    try:
        yield proxy, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def test_https_through_a_connect_tunnel_trusting_ssl_cert_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certificate = self_signed(tmp_path)
    async with (
        scripted(answering(OK, OK, OK), tls=certificate.server_context()) as (upstream, url),
        forward_proxy() as (proxy, proxy_url),
    ):
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate.cert))
        client = UpstreamClient(TimeoutConfig(connect=2))
        for _ in range(3):
            answer = await client.send(UpstreamRequest("POST", f"{url}/v1/chat", None, b"{}"))
            assert answer.status == 200 and await answer.read() == b'{"ok":true}'
        await client.aclose()
    port = url.rsplit(":", 1)[1]
    assert proxy.tunnels == [f"CONNECT localhost:{port} HTTP/1.1\r\nHost: localhost:{port}\r\n\r\n".encode()]
    assert upstream.connections == 1  # the tunnel is a pooled connection like any other


async def test_without_ssl_cert_file_a_self_signed_upstream_is_refused(tmp_path: Path) -> None:
    certificate = self_signed(tmp_path)
    async with scripted(answering(OK), tls=certificate.server_context()) as (_, url):
        client = UpstreamClient(TimeoutConfig(connect=2))
        with pytest.raises(UpstreamError, match="refused the connection") as failure:
            await client.send(UpstreamRequest("POST", url, None, b"{}"))
        assert "CERTIFICATE_VERIFY_FAILED" in str(failure.value.__cause__)
        await client.aclose()


async def test_ssl_cert_dir_is_trusted_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    certificate = self_signed(tmp_path)
    directory = tmp_path / "certs"
    directory.mkdir()
    # A CA directory holds certificates under their subject hash, as `openssl rehash` names them.
    digest = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(certificate.cert)], capture_output=True, text=True, check=True
    ).stdout.strip()
    (directory / f"{digest}.0").write_bytes(certificate.cert.read_bytes())
    monkeypatch.setenv("SSL_CERT_DIR", str(directory))
    async with scripted(answering(OK), tls=certificate.server_context()) as (_, url):
        transport = Http1Transport()
        assert await read_all(await send(transport, url)) == b'{"ok":true}'
        await transport.aclose()


async def test_plain_http_goes_to_the_proxy_in_absolute_form_with_its_credentials(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with scripted(answering(OK, OK)) as (upstream, url), forward_proxy() as (proxy, proxy_url):
        monkeypatch.setenv("HTTP_PROXY", proxy_url.replace("http://", "http://user:p%40ss@"))
        transport = Http1Transport()
        for _ in range(2):
            assert await read_all(await send(transport, f"{url}/v1/x?a=1")) == b'{"ok":true}'
        await transport.aclose()
    assert len(proxy.forwarded) == 1 and upstream.connections == 1  # one connection, kept alive
    lines = proxy.forwarded[0].split(b"\r\n")
    assert lines[0] == f"POST {url}/v1/x?a=1 HTTP/1.1".encode()
    assert b"Proxy-Authorization: Basic dXNlcjpwQHNz" in lines  # user:p@ss


async def test_an_ipv6_upstream_is_asked_for_in_brackets_through_a_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """RFC 3986 (3.2.2): an IPv6 literal's authority is in brackets. The host as `httpx.URL` gives it has none, and a
    plain HTTP request through the proxy went to `http://::1:PORT/...`, which no proxy reads as an address and port;
    the CONNECT for an HTTPS one was `CONNECT ::1:443` (found by review)."""
    async with scripted(answering(OK), host="::1") as (upstream, url), forward_proxy() as (proxy, proxy_url):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        transport = Http1Transport()
        assert await read_all(await send(transport, f"{url}/v1/x")) == b'{"ok":true}'
        await transport.aclose()
    assert url.startswith("http://[::1]:") and upstream.connections == 1
    assert proxy.forwarded[0].split(b"\r\n")[0] == f"POST {url}/v1/x HTTP/1.1".encode()
    async with forward_proxy(refuse=True) as (proxy, proxy_url):
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
        transport = Http1Transport()
        with pytest.raises(httpx.ProxyError):
            await send(transport, "https://[::1]/v1/x")
        await transport.aclose()
    assert proxy.tunnels == [b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n\r\n"]


async def test_no_proxy_hosts_are_reached_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    async with scripted(answering(OK)) as (upstream, url), forward_proxy() as (proxy, proxy_url):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        monkeypatch.setenv("no_proxy", "example.com, 127.0.0.1")
        transport = Http1Transport()
        assert await read_all(await send(transport, url)) == b'{"ok":true}'
        await transport.aclose()
    assert proxy.forwarded == [] and upstream.connections == 1


async def test_a_refused_tunnel_is_an_upstream_error(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The attempt failed as unreachable (failed over), and says the kind of failure only, as a refused or timed-out
    connection does: its message, the client's 502's, named the operator's proxy (`upstream unreachable (ProxyError:
    the proxy 127.0.0.1:PORT refused the tunnel: 407)`). Where it went is in the log."""
    async with forward_proxy(refuse=True) as (proxy, proxy_url):
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
        client = UpstreamClient(TimeoutConfig(connect=2))
        with pytest.raises(UpstreamError) as failure:
            await client.send(UpstreamRequest("POST", "https://api.example.test/v1/chat", None, b"{}"))
        assert "refused the tunnel: 407" in str(failure.value.__cause__)
        await client.aclose()
    assert len(proxy.tunnels) == 1
    assert (failure.value.message, failure.value.retryable) == ("upstream unreachable (ProxyError)", True)
    proxy_address = proxy_url.removeprefix("http://")
    logged = [getattr(record, "reason", "") for record in caplog.records if record.message == "upstream unreachable"]
    assert logged == [f"the proxy {proxy_address} refused the tunnel: 407"]


async def test_a_tunnel_the_proxy_closes_unanswered_never_reached_the_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """The proxy hung up on its CONNECT, not the origin on the request: unreachable, charged nothing."""
    async with forward_proxy(hang_up=True) as (proxy, proxy_url):
        monkeypatch.setenv("HTTPS_PROXY", proxy_url)
        client = UpstreamClient(TimeoutConfig(connect=2))
        with pytest.raises(UpstreamError) as failure:
            await client.send(UpstreamRequest("POST", "https://api.example.test/v1/chat", None, b"{}"))
        assert (failure.value.outcome, failure.value.billable) == ("connect_error", False)
        await client.aclose()
    assert len(proxy.tunnels) == 1


async def test_trust_env_off_ignores_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    async with scripted(answering(OK)) as (_, url), forward_proxy() as (proxy, proxy_url):
        monkeypatch.setenv("HTTP_PROXY", proxy_url)
        transport = Http1Transport(trust_env=False)
        assert await read_all(await send(transport, url)) == b'{"ok":true}'
        await transport.aclose()
    assert proxy.forwarded == []


@pytest.mark.parametrize(
    ("no_proxy", "url", "proxied"),
    [
        ("", "https://api.openai.com/v1", True),
        ("*", "https://api.openai.com/v1", False),
        ("openai.com", "https://api.openai.com/v1", False),
        ("openai.com", "https://openai.com/v1", False),
        ("openai.com", "https://notopenai.com/v1", True),
        (".openai.com", "https://openai.com/v1", True),
        ("localhost,10.0.0.1", "http://localhost:8080/", False),
        ("localhost,10.0.0.1", "http://10.0.0.1/", False),
        ("localhost,10.0.0.1", "http://10.0.0.2/", True),
        ("http://plain.test", "http://plain.test/", False),
        ("http://plain.test", "https://plain.test/", True),
    ],
)
def test_proxy_choice_is_httpx_s(monkeypatch: pytest.MonkeyPatch, no_proxy: str, url: str, proxied: bool) -> None:
    monkeypatch.setenv("ALL_PROXY", "http://proxy.test:3128")
    monkeypatch.setenv("NO_PROXY", no_proxy)
    chosen = ProxyRules.from_environment().proxy_for(httpx.URL(url))
    assert (chosen is not None) == proxied
    # httpx's own client, given the same environment, decides the same.
    with httpx.Client(trust_env=True) as client:
        assert (client._transport_for_url(httpx.URL(url)) is not client._transport) == proxied
