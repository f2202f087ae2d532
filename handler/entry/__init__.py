"""The entry points: `gateway` (the CLI), uvicorn's app and its protocol (`gateway serve`, the Lambda Web
Adapter), and the buffered Lambda handler (Mangum).

May import: anything in handler and adapters."""
