"""Outbound HTTP: the process's own HTTP/1.1 client (`http1`) and what the environment says about
proxies and trusted CAs (`environment`). Infrastructure for the provider adapters, the stores and the
application's upstream client (handler/pipeline/upstream.py), importing nothing from the application.
"""

from __future__ import annotations

import functools

import httpx

URL_CACHE_SIZE = 512
USER_AGENT = "llm-edge-gateway/0.1"
# What every request says of an answer's content coding: none but the body as it is (RFC 9110 12.5.3: a request that
# says nothing accepts any coding, which the client does not decode: a gzip answer would be read as a body that is
# not JSON). Sent by `http1.request_head` where a request does not give it; a SigV4-signed one gives it, to be signed.
ACCEPT_ENCODING = "accept-encoding"
IDENTITY = "identity"


@functools.lru_cache(maxsize=URL_CACHE_SIZE)
def parsed_url(url: str) -> httpx.URL:
    """`url` parsed, once per upstream address (an `httpx.URL` is immutable, so one serves every request;
    parsing one costs more than the rest of building a request)."""
    return httpx.URL(url)
