"""OTLP's trace protobuf (`ExportTraceServiceRequest`), written by hand.

Only the messages and fields a span export needs, from opentelemetry-proto's `trace/v1/trace.proto`,
`common/v1/common.proto` and `resource/v1/resource.proto`. Writing them here keeps `protobuf` and the
generated modules (a heavy import) out of the gateway's cold start; the tests
decode what this writes with opentelemetry-proto's own classes.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

AttributeValue = str | bool | int | float | Sequence[str]
Attributes = Sequence[tuple[str, AttributeValue]]

# Span.SpanKind and Status.StatusCode
KIND_INTERNAL, KIND_SERVER, KIND_CLIENT = 1, 2, 3
STATUS_UNSET, STATUS_OK, STATUS_ERROR = 0, 1, 2

_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5
_fixed64 = struct.Struct("<Q").pack
_double = struct.Struct("<d").pack
_fixed32 = struct.Struct("<I").pack


@dataclass(slots=True)  # (not frozen: a frozen dataclass's __init__ is slower, once per span)
class SpanData:
    """One finished span, as the gateway recorded it (times in nanoseconds since the epoch)."""

    trace_id: bytes  # 16 bytes
    span_id: bytes  # 8 bytes
    parent_span_id: bytes  # 8 bytes, or empty for a root
    name: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: Attributes
    status: int = STATUS_UNSET
    status_message: str = ""


_SMALL = tuple(bytes((n,)) for n in range(0x80))  # one-byte varints, built once


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _SMALL[value]
    value &= 0xFFFFFFFFFFFFFFFF  # int64 negatives go out as ten bytes, as protobuf writes them
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _tag(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _message(field: int, payload: bytes) -> bytes:
    return _tag(field, _LENGTH) + _varint(len(payload)) + payload


def _string(field: int, text: str) -> bytes:
    return _message(field, text.encode("utf-8", "replace")) if text else b""


_STRING_VALUE, _BOOL_VALUE, _INT_VALUE, _DOUBLE_VALUE = (
    _tag(1, _LENGTH),
    _tag(2, _VARINT),
    _tag(3, _VARINT),
    _tag(4, _FIXED64),
)
_KEY_VALUE_VALUE = _tag(2, _LENGTH)


def any_value(value: AttributeValue) -> bytes:
    """An `AnyValue`: string 1, bool 2, int 3, double 4, array 5."""
    if isinstance(value, str):
        data = value.encode("utf-8", "replace")
        return _STRING_VALUE + _varint(len(data)) + data
    if isinstance(value, bool):
        return _BOOL_VALUE + _SMALL[value]
    if isinstance(value, int):
        return _INT_VALUE + _varint(value)
    if isinstance(value, float):
        return _DOUBLE_VALUE + _double(value)
    return _message(5, b"".join(_message(1, any_value(item)) for item in value))


@functools.lru_cache(maxsize=4096)
def _key(key: str) -> bytes:
    """A `KeyValue`'s key field and its value's tag; the same few dozen names recur in every span."""
    return _string(1, key) + _KEY_VALUE_VALUE


def key_values(field: int, attributes: Attributes) -> bytes:
    """Repeated `KeyValue` (key 1, value 2) under `field`. The most common case, a short string, is written
    inline: the exporter encodes every attribute of every span, and this is where its time goes."""
    tag = _tag(field, _LENGTH)
    parts: list[bytes] = []
    append = parts.append
    for key, value in attributes:
        prefix = _key(key)
        if value.__class__ is str:
            data = value.encode("utf-8", "replace")
            size = len(data)
            if size < 126:
                pair = prefix + bytes((size + 2, 0x0A, size)) + data
                append(tag + _varint(len(pair)) + pair)
                continue
            encoded = _STRING_VALUE + _varint(size) + data
        else:
            encoded = any_value(value)
        pair = prefix + _varint(len(encoded)) + encoded
        append(tag + _varint(len(pair)) + pair)
    return b"".join(parts)


def span(data: SpanData) -> bytes:
    """A `Span` message."""
    parts = [
        _message(1, data.trace_id),
        _message(2, data.span_id),
        _message(4, data.parent_span_id) if data.parent_span_id else b"",
        _string(5, data.name),
        _tag(6, _VARINT) + _varint(data.kind),
        _tag(7, _FIXED64) + _fixed64(data.start_ns),
        _tag(8, _FIXED64) + _fixed64(max(data.end_ns, data.start_ns)),
        key_values(9, data.attributes),
    ]
    if data.status != STATUS_UNSET:
        parts.append(_message(15, _string(2, data.status_message) + _tag(3, _VARINT) + _varint(data.status)))
    parts.append(_tag(16, _FIXED32) + _fixed32(0x01))  # W3C trace flags: sampled
    return b"".join(parts)


def export_request(resource: Attributes, scope_name: str, scope_version: str, spans: Iterable[bytes]) -> bytes:
    """An `ExportTraceServiceRequest` with one resource and one instrumentation scope; `spans` as `span` wrote
    them."""
    scope = _string(1, scope_name) + _string(2, scope_version)
    scope_spans = _message(1, scope) + b"".join(_message(2, s) for s in spans)
    resource_spans = _message(1, key_values(1, resource)) + _message(2, scope_spans)
    return _message(1, resource_spans)
