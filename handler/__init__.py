"""The gateway application. The core lives here: the ports a provider adapter and a store implement
(`ports`), the internal form (`schemas`), the error hierarchy (`errors`), the wire's shared pieces (`wire`), tool
call ids as each provider takes them (`call_ids`), secret redaction (`redaction`) and the config file (`config`).
The rooms hold the rest: `api` (inbound APIs), `pipeline` (a request's path), `telemetry`, `dashboard` and `entry`
(entry points); each says what it may import.

May import: adapters.aws (secret references resolved through the AWS layer); no room of handler."""

import sys

# httpx imports its command-line client (click, rich, pygments) when click is installed, as it is
# beside uvicorn; the gateway never uses it, and a cold start should not pay for it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
