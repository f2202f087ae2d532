"""The request pipeline: keys and scopes, routing, admission and settlement of budgets and limits, pricing,
the upstream client, native pass-through, and the `Gateway` every request runs on (built once per process).

May import: handler (the core), handler.telemetry, adapters (the composition root picks provider adapters and
the store)."""
