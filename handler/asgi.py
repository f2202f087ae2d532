"""The ASGI app for uvicorn (`gateway serve`, and the streaming function behind the Lambda Web Adapter).

Built at import from the environment (GATEWAY_CONFIG, GATEWAY_STORE, AWS_REGION/GATEWAY_REGION).
"""

from __future__ import annotations

import gc

from handler.app import create_app
from handler.gateway import build_gateway

gateway = build_gateway()
app = create_app(gateway)
# Everything built so far lives for the whole process: out of the collector's sight, a full collection
# walks only what requests allocate (shorter pauses, a shorter tail).
gc.freeze()
