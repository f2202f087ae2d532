"""Instructions per warm Lambda invocation, counted by valgrind's callgrind: a figure the machine's drift cannot move.

    python -m tests.bench.warm_instructions [--invocations 1000] [--warm-up 300] [chat|messages|responses|bare ...]

Timed figures on the development VM move by a tenth between runs of the same code, more than most changes to
the hot path; a count of instructions moves by less than a thousandth. Each route is counted twice in a fresh
interpreter under callgrind (a fixed hash seed, its bytecode compiled beforehand): once after the warm-up
invocations alone, once with `--invocations` more after them; the difference, divided by `--invocations`, is one
warm invocation (as tests/bench/lambda_warm.py makes it: Mangum, the app, auth, admission and settlement on the
embedded store, the upstream answering at once), the store's work for each request included (its admission from
a slice, its settlement's commit). Not counted: what the store does once in seconds of traffic rather than per
request (a slice's grant, the sweeper), kept out of the counted window by a clock that moves a microsecond at
each reading (`steady_clock`), and the checkpoint thread's copies of the write-ahead log, held off (`NO_CHECKPOINTS`
in tests/bench/run.py): on the wall clock, under callgrind's slowdown, both came round as often as the machine's
load let them, and the same tree counted 3 % apart between runs. `bare`: the bare proxy under Mangum.
Instructions are not time (the gateway's larger code runs at fewer instructions per cycle than the bare
proxy's), so this compares versions of the gateway with each other, not the gateway with its targets.

Needs valgrind (`make tools`). Takes about a minute and a half per route on the development VM.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from tests.bench.run import bench_files, instructions, mint_key

WARM_UP = 300
PROGRAM = (
    "import sys; sys.stdout = sys.stderr; from tests.bench.run import NO_CHECKPOINTS; exec(NO_CHECKPOINTS); "
    "from tests.bench.lambda_warm import bare_invoker, gateway_invoker; "
    "from tests.bench.warm_instructions import steady_clock; steady_clock(); "
    "once = bare_invoker() if {route!r} == 'bare' else gateway_invoker({route!r}); [once() for _ in range({count})]"
)
STEP_S = 1e-6  # how far `steady_clock` moves at each reading


def steady_clock() -> None:
    """Replace `time`'s clocks with one that moves `STEP_S` at each reading, whatever the time taken.

    What the gateway and its store do by the clock (a slice of a budget granted for the next seconds of traffic,
    the sweeper's rounds, a lingering batch's wait) happened under callgrind's slowdown about fifty times as often
    per invocation as at full speed, and as often as the machine's load made it: one tree's warm count moved by 3 %
    between runs. On this clock each invocation reads the same times in every run (some hundred microseconds of
    them, of the order of an invocation's time at full speed), so the work done per invocation is counted and
    what comes round once in seconds of traffic falls outside the counted window, as it falls on thousands of
    invocations in service. (The checkpoint thread, which waits on the operating system's clock, is held off
    apart, before the handler is imported: `NO_CHECKPOINTS`, whose cost in the import the difference of the two
    counts takes out.) The wall clock starts a second into the next minute, in every run: rate limits count by the
    minute, and started where the machine's clock stood, runs begun at the same moment counted alike and runs begun
    apart did not (1,615,929 and 1,629,908 instructions for one tree)."""
    now = [0.0]
    wall, monotonic = math.ceil(time.time() / 60) * 60 + 1.0, time.monotonic()  # (see below)

    def read() -> float:
        now[0] += STEP_S
        return now[0]

    time.time = lambda: wall + read()
    time.monotonic = lambda: monotonic + read()
    time.perf_counter = read
    time.time_ns = lambda: int((wall + read()) * 1e9)
    time.monotonic_ns = lambda: int((monotonic + read()) * 1e9)
    time.perf_counter_ns = lambda: int(read() * 1e9)


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
