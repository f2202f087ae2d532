"""Instructions per warm Lambda invocation, counted by valgrind's callgrind: a figure the machine's drift cannot move.

    python -m tests.bench.warm_instructions [--invocations 1000] [--warm-up 300] [chat|messages|responses|bare ...]

Timed figures on the development VM move by a tenth between runs of the same code, more than most changes to
the hot path; a count of instructions moves by less than a thousandth. Each route is counted twice in a fresh
interpreter under callgrind (a fixed hash seed, its bytecode compiled beforehand): once after the warm-up
invocations alone, once with `--invocations` more after them; the difference, divided by `--invocations`, is one
warm invocation (as tests/bench/lambda_warm.py makes it: Mangum, the app, auth, admission and settlement on the
embedded store, the upstream answering at once), the store's work included. `bare`: the bare proxy under Mangum.
Instructions are not time (the gateway's larger code runs at fewer instructions per cycle than the bare
proxy's), so this compares versions of the gateway with each other, not the gateway with its targets.

Needs valgrind (`make tools`). Takes about a minute and a half per route on the development VM.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from tests.bench.run import bench_files, instructions, mint_key

WARM_UP = 300
PROGRAM = (
    "import sys; sys.stdout = sys.stderr; from tests.bench.lambda_warm import bare_invoker, gateway_invoker; "
    "once = bare_invoker() if {route!r} == 'bare' else gateway_invoker({route!r}); [once() for _ in range({count})]"
)


def counted(route: str, count: int, env: dict[str, str]) -> int:
    """Instructions of a fresh interpreter that makes `count` invocations of `route`."""
    return instructions(PROGRAM.format(route=route, count=count), env)


def per_invocation(route: str, invocations: int, env: dict[str, str], warm_up: int = WARM_UP) -> float:
    return (counted(route, warm_up + invocations, env) - counted(route, warm_up, env)) / invocations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invocations", type=int, default=1000)
    parser.add_argument("--warm-up", type=int, default=WARM_UP)
    parser.add_argument("routes", nargs="*", default=["chat", "bare"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-warm-ir-") as tmp:
        workdir = Path(tmp)
        env = {**os.environ, **bench_files(workdir, 9), "PYTHONPYCACHEPREFIX": str(workdir)}  # (`instructions`
        # fixes the hash seed and lets the bytecode be written)
        env["BENCH_GATEWAY_KEY"] = mint_key(env)
        rows = {route: per_invocation(route, args.invocations, env, args.warm_up) for route in args.routes}
    print("| route | instructions per warm invocation |\n|---|---|")
    for route, figure in rows.items():
        print(f"| {route} | {figure:,.0f} |")
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
