"""The inbound APIs: the Starlette app, the route table, OpenAPI, and each front-end (Chat Completions, Messages,
Responses, keys) parsing its API into the internal form and rendering answers back in it.

May import: handler (the core), handler.pipeline, handler.telemetry, handler.dashboard."""
