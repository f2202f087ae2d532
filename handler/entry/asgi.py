"""The ASGI app for uvicorn (`gateway serve`, and the streaming function behind the Lambda Web Adapter).

Built at import from the environment (GATEWAY_CONFIG, GATEWAY_STORE, AWS_REGION/GATEWAY_REGION).
"""

from __future__ import annotations

import gc

gc.disable()  # until start-up is done: everything it builds lives as long as the process (see below)

from handler.api.app import serving_app  # noqa: E402
from handler.api.route_table import import_front_ends  # noqa: E402
from handler.pipeline.gateway import build_gateway  # noqa: E402
from handler.schemas import build_deferred_models  # noqa: E402

gateway = build_gateway()
app = serving_app(gateway)
import_front_ends()  # where a server's first requests would wait for them...
build_deferred_models()  # ...and for their validators
# Everything built so far lives for the whole process: out of the collector's sight, a full collection
# walks only what requests allocate (shorter pauses, a shorter tail).
gc.freeze()
gc.enable()
