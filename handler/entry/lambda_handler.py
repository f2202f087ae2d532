"""The buffered Lambda entry point: Mangum over the same app, built once per execution environment.

Everything is built at import (Lambda's init phase): config parsed, secrets resolved, and on Lambda
connections opened to each model's nearest deployment. Mangum runs with `lifespan="off"` because it
would otherwise run the ASGI lifespan on every invocation. Mangum keeps one event loop for the life
of the environment, so the upstream connections opened by one invocation serve the next. What a request may
never need is left to first use: the front-ends other than Chat Completions and embeddings (the Messages and
Responses APIs, the key routes, the dashboard: `handler.api.route_table.Endpoints`), the adapters of provider types
the config does not name, the API models' validators.

SnapStart: before the snapshot every front-end is imported, the request path primed (handler/entry/priming.py),
and every validator and the router the cold start left to first use built (so a restored environment's first
invocation does no more than a warm one); the upstream connections are closed, their sockets with them (the snapshot
holds no socket and no timer: `Http1Transport.aclose`); after a restore they are opened afresh and the key cache is
emptied (a snapshot can be restored hours after it was taken), the provider keys held in SSM or Secrets Manager are
read again, AWS credentials from a role fetched afresh and `random` seeded anew. The hooks come from the Lambda
runtime's `snapshot_restore_py`, absent elsewhere.
"""

from __future__ import annotations

import gc

# Init allocates what lives as long as the environment: a collection during it finds no garbage and only adds to
# the cold start. Collection resumes when init is done, after `gc.freeze()` below.
gc.disable()

import asyncio  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
from typing import Any  # noqa: E402

# The gateway uses no pydantic plugins; looking for them reads every installed distribution's metadata when the
# first model is built, in the cold start. An operator's own setting wins.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

from handler.api.answer_size import AnswerLimit  # noqa: E402
from handler.api.app import Settling, create_app  # noqa: E402
from handler.entry.adapter import UnreadableEventError, lambda_adapter, unreadable_answer  # noqa: E402
from handler.pipeline.gateway import build_gateway  # noqa: E402
from handler.schemas import build_deferred_models  # noqa: E402
from handler.telemetry.observability import logger  # noqa: E402

gateway = build_gateway()
answer_limit = AnswerLimit()  # Lambda returns at most 6 MB: a larger answer is a 413, never a crash
app = create_app(gateway, answer_limit)


_mangum = lambda_adapter(Settling(app, gateway, answer_limit))
# The loop Mangum runs every invocation on (it takes the thread's current loop, as here).
_loop = asyncio.new_event_loop()
asyncio.set_event_loop(_loop)
ON_LAMBDA = bool(os.environ.get("AWS_LAMBDA_FUNCTION_NAME"))
FLUSH_SECONDS = 2.0  # the most a span export may add to an invocation
# What the flush leaves of the invocation's time: the handler's return and the runtime's posting of the answer (the
# JSON of a 6 MB answer alone took 30-70 ms on the development machine). Lambda kills an invocation at its Timeout,
# the answer with it, already charged.
FLUSH_MARGIN_MS = 250

if ON_LAMBDA and os.environ.get("GATEWAY_WARM", "on") != "off":
    _loop.run_until_complete(gateway.warm())


async def _start() -> None:
    gateway.start()  # settlements an earlier environment spooled under /tmp: re-driven during invocations


_loop.run_until_complete(_start())
gc.freeze()  # what init built lives as long as the environment (see handler/entry/asgi.py)
gc.enable()


def _before_snapshot() -> None:
    from handler.api.route_table import import_front_ends
    from handler.entry.priming import prime, warm_urls

    import_front_ends()  # the cold start leaves them to first use; a snapshot holds them all
    try:
        prime(_loop)
    except Exception:  # noqa: BLE001 - a snapshot without priming is slower to start, not wrong
        logger.warning("SnapStart priming failed; the snapshot is taken unprimed", exc_info=True)
    warm_urls(gateway)
    build_deferred_models()
    app.starlette  # noqa: B018 - the router the cold start leaves to first use (see GatewayApp)
    gc.collect()  # the snapshot keeps no garbage, and what the validators built lives on: frozen with the rest
    gc.freeze()
    _loop.run_until_complete(gateway.upstream.aclose())  # (it returns once their sockets are closed, TLS ones too)


def _after_restore() -> None:
    # Every environment restored from one snapshot holds the same `random` state: the same retry jitter and the same
    # times for the store's periodic sweeps in all of them. Seeded afresh from the OS (as AWS's SnapStart guide
    # asks); ids come from `os.urandom`, which a restore does not repeat.
    random.seed()
    _loop.run_until_complete(gateway.reopen())


try:
    from snapshot_restore_py import register_after_restore, register_before_snapshot
except ImportError:  # not on Lambda's runtime, or SnapStart is off
    pass
else:
    register_before_snapshot(_before_snapshot)
    register_after_restore(_after_restore)


def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Answer one API Gateway event; settlements finish before the environment can be frozen."""
    try:
        response: dict[str, Any] = _mangum(event, context)
    except UnreadableEventError as exc:
        return unreadable_answer(event, exc)
    if gateway.background:  # the app raised before its own drain
        _loop.run_until_complete(gateway.drain())
    if gateway.tracer is not None:
        # Sent before the environment can be frozen, waited for at most FLUSH_SECONDS whatever the collector does,
        # and never into the time the answer needs to leave; what is not sent by then goes with a later export
        # (docs/observability.md: OpenTelemetry on Lambda).
        bound = flush_bound(context)
        if bound > 0:
            gateway.tracer.flush(bound)
    return response


def flush_bound(context: Any) -> float:
    """How long the span flush may wait: FLUSH_SECONDS, and no longer than the invocation's remaining time less
    FLUSH_MARGIN_MS (0 or less: nothing left, no flush). A request's deadline keeps back 1.5 s for its settlement and
    answer (`LAMBDA_MARGIN_MS`), less than FLUSH_SECONDS: an answer that ended near it, followed by a slow collector,
    returned past the function's Timeout, where Lambda killed it, and the client had API Gateway's bare 5xx for an
    answer charged and written to the ledger."""
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:  # (not Lambda's context: a test's, a local runner's)
        return FLUSH_SECONDS
    try:
        return min(FLUSH_SECONDS, (float(remaining()) - FLUSH_MARGIN_MS) / 1000)
    except (TypeError, ValueError):
        return FLUSH_SECONDS
