"""Provider adapters, one package per provider type, and what they share; `registry` maps config types to them.

Imports: `handler.ports`, `handler.wire`, `handler.schemas`, `handler.errors` and each other's shared modules here;
never the pipeline or the inbound APIs."""
