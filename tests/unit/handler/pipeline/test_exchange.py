"""An exchange's answer headers."""

from __future__ import annotations

from handler.pipeline.pipeline import Controls, Exchange
from handler.ports import KeyRecord


def test_dropped_params_are_listed_as_named_with_anything_unsafe_percent_encoded() -> None:
    """`tools[web_search]` reads as the docs write it; a name from the client's body cannot add a list item (a
    comma) or split the header (CR, LF), and stays Latin-1."""
    key = KeyRecord(id="abcdefghijkm", name="n", secret_hash="h", created_at=0)
    ex = Exchange("req_1", key, "m", Controls(), inbound_dropped=["tools[web_search]", "a,b", "x\r\ny: 1", "é"])
    ex.dropped = ["tools[namespace]"]
    assert ex.headers()["x-gateway-dropped-params"] == (
        "tools[web_search],a%2Cb,x%0D%0Ay%3A%201,%C3%A9,tools[namespace]"
    )
