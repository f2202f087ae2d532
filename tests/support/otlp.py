"""A real OTLP/HTTP trace receiver for tests: decodes each `ExportTraceServiceRequest` with
opentelemetry-proto's own classes, as a collector would, and keeps the spans and the raw bodies."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.servers import ServerThread


@dataclass
class ReceivedSpan:
    """One decoded span, its attributes as plain values, and its resource's."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any]


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


@dataclass
class OtlpReceiver:
    """`POST /v1/traces` on a real socket; `delay_s` makes it a slow collector."""

    delay_s: float = 0.0
    spans: list[ReceivedSpan] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    server: ServerThread | None = None

    async def _traces(self, request: Request) -> Response:
        body = await request.body()
        self.headers.append(dict(request.headers))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if request.headers.get("content-type") != "application/x-protobuf":
            return Response(b"", status_code=415)
        export = ExportTraceServiceRequest.FromString(body)
        MessageToDict(export)  # the whole message is well-formed, not just the fields read below
        self.bodies.append(body)
        for resource_spans in export.resource_spans:
            resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            start_ns=span.start_time_unix_nano,
                            end_ns=span.end_time_unix_nano,
                            attributes={kv.key: _value(kv.value) for kv in span.attributes},
                            status_code=span.status.code,
                            resource=resource,
                        )
                    )
        return Response(
            ExportTraceServiceResponse().SerializeToString(), media_type="application/x-protobuf", status_code=200
        )

    def start(self) -> OtlpReceiver:
        app = Starlette(routes=[Route("/v1/traces", self._traces, methods=["POST"])])
        self.server = ServerThread(app).start()
        return self

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    def request_spans(self, request_id: str, timeout_s: float = 5.0) -> list[ReceivedSpan]:
        """The spans of one request (its root, by `gateway.request_id`, then its children), once they came."""
        deadline = time.monotonic() + timeout_s
        while True:
            roots = [s for s in self.spans if s.attributes.get("gateway.request_id") == request_id]
            if roots:
                root = roots[0]
                children = [s for s in self.spans if s.parent_span_id == root.span_id]
                return [root, *children]
            if time.monotonic() > deadline:
                raise AssertionError(f"no span for {request_id} reached the receiver")
            time.sleep(0.02)
