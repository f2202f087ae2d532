"""Telemetry: the request log line and CloudWatch metrics (Powertools), Prometheus' `/metrics` figures, and
OpenTelemetry spans over OTLP.

May import: handler (the core), adapters.otlp."""
