"""`observability.otlp`, the config file's section for trace export (docs/observability.md): a module of its own,
imported only where a config has the section (`handler.config.parse_config`) or traces are exported
(handler/telemetry/tracing.py). Made in handler/config.py, its class cost every Lambda cold start 3 million
instructions (callgrind), though most configs leave the section out.
"""

# No `from __future__ import annotations`, as in handler/config.py: pydantic would evaluate each field's annotation
# from its string when the class is made.
from pydantic import BaseModel, ConfigDict, Field, field_validator

from handler.config import http_url


class OtlpConfig(BaseModel):
    """`observability.otlp`: OpenTelemetry trace export over OTLP/HTTP (docs/observability.md). A field left
    out here takes the standard `OTEL_*` environment variable's value; without an endpoint from either, no
    traces are exported."""

    model_config = ConfigDict(extra="forbid", defer_build=True)  # (as the config's other sections)

    endpoint: str | None = Field(default=None, description="base URL; traces go to ENDPOINT/v1/traces")
    traces_endpoint: str | None = Field(default=None, description="the full traces URL, used as given")
    # Values may be references (`env:NAME`, `ssm:/path`, `secretsmanager:NAME`), like provider keys.
    headers: dict[str, str] | None = None
    service_name: str | None = Field(default=None, min_length=1)
    resource_attributes: dict[str, str] | None = None
    # Prompts and answers go out (redacted of secrets) only when this is on.
    capture_content: bool = False
    timeout_ms: int | None = Field(default=None, gt=0)
    queue_size: int = Field(default=2048, ge=1, le=1_000_000)
    # The bytes of captured content (prompts, answers) queued spans may hold: past it, new spans are dropped.
    queue_bytes: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024, le=4 * 1024 * 1024 * 1024)
    batch_size: int = Field(default=512, ge=1, le=100_000)
    schedule_delay_ms: int = Field(default=1000, ge=1, le=600_000)
    enabled: bool = True

    @field_validator("endpoint", "traces_endpoint")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return None if value is None else http_url(value)
