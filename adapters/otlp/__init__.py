"""OpenTelemetry trace export over OTLP/HTTP (protobuf), with no OpenTelemetry SDK at run time."""
