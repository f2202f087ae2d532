"""The gateway application: routes, auth, routing policy, budgets, pricing, the ledger, entry points."""

import sys

# httpx imports its command-line client (click, rich, pygments) when click is installed, as it is
# beside uvicorn; the gateway never uses it, and a cold start should not pay for it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
