"""The spend dashboard (its page, assets and one-time sign-in) and the ledger reports it, `/v1/usage` and
`gateway usage` draw.

May import: handler (the core), handler.pipeline."""
