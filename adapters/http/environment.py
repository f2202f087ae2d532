"""What the process environment says about outbound HTTP, read as httpx reads it with `trust_env=True`.

Proxies: `HTTP_PROXY`, `HTTPS_PROXY`, `ALL_PROXY` and `NO_PROXY` (either case; the lower-case name wins,
as urllib's `getproxies` reads them), matched against a URL by httpx's own rules: the most specific
pattern first, `NO_PROXY=*` turns every proxy off, `example.com` also covers its subdomains, `.example.com`
only them, and an IP address or `localhost` only itself. The patterns come from httpx's own helpers
(`httpx._utils`), so the two clients of the process route a URL the same way.

Trust: `SSL_CERT_FILE`, else `SSL_CERT_DIR`, else certifi's CA bundle (`httpx.create_ssl_context`).
"""

from __future__ import annotations

import base64
import ssl
import urllib.parse
from typing import Final

import httpx
from httpx._utils import URLPattern, get_environment_proxies

from handler.records import Value


class Proxy(Value):
    """A forward proxy: where it listens, and the `Proxy-Authorization` its URL's user info asks for."""

    __slots__ = ("host", "port", "authorization")

    def __init__(self, host: str, port: int, authorization: bytes | None) -> None:
        self.host: Final = host
        self.port: Final = port
        self.authorization: Final = authorization

    @classmethod
    def of(cls, url: str) -> Proxy:
        parsed = httpx.URL(url)
        if parsed.scheme != "http":
            # (A TLS connection to the proxy would put the upstream's TLS inside another: not supported.)
            raise httpx.UnsupportedProtocol(f"proxy URLs must start with http://, not {parsed.scheme}://")
        authorization = None
        if parsed.userinfo:
            user, _, password = parsed.userinfo.decode("ascii").partition(":")
            credentials = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
            authorization = b"Basic " + base64.b64encode(credentials)
        return cls(parsed.host, parsed.port or 80, authorization)


class ProxyRules:
    """The environment's proxy for each URL (None: connect directly)."""

    def __init__(self, mounts: dict[str, str | None]) -> None:
        self.rules = sorted(((URLPattern(p), proxy) for p, proxy in mounts.items()), key=lambda rule: rule[0].priority)
        self._proxies = {url: Proxy.of(url) for url in {proxy for _, proxy in self.rules if proxy}}

    @classmethod
    def from_environment(cls) -> ProxyRules:
        return cls(get_environment_proxies())

    def proxy_for(self, url: httpx.URL) -> Proxy | None:
        for pattern, proxy in self.rules:
            if pattern.matches(url):
                return self._proxies[proxy] if proxy else None
        return None


def tls_context() -> ssl.SSLContext:
    """The CA roots httpx trusts: `SSL_CERT_FILE`, else `SSL_CERT_DIR`, else certifi's bundle."""
    return httpx.create_ssl_context(trust_env=True)
