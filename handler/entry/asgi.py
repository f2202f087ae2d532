"""The ASGI app for uvicorn (`gateway serve`, and the streaming function behind the Lambda Web Adapter).

Built at import from the environment (GATEWAY_CONFIG, GATEWAY_STORE, AWS_REGION/GATEWAY_REGION).
"""

from __future__ import annotations

import gc

gc.disable()  # until start-up is done: everything it builds lives as long as the process (see below)

from pydantic import BaseModel  # noqa: E402

from handler.api.app import create_app  # noqa: E402
from handler.pipeline.gateway import build_gateway  # noqa: E402


def build_models() -> None:
    """Build the validators of every model of the gateway's own now, at start-up: the API models' are left
    to their first use (for Lambda's cold start, see handler/schemas.py), where a server's first requests
    would wait for them."""
    pending: list[type[BaseModel]] = [BaseModel]
    while pending:
        for model in pending.pop().__subclasses__():
            if model.__module__.startswith(("handler.", "adapters.")) and not model.__pydantic_complete__:
                model.model_rebuild()
            pending.append(model)


gateway = build_gateway()
app = create_app(gateway)
build_models()
# Everything built so far lives for the whole process: out of the collector's sight, a full collection
# walks only what requests allocate (shorter pauses, a shorter tail).
gc.freeze()
gc.enable()
