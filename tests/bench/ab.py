"""Two or more checkouts of the gateway at one connection, beside the bare proxy, in interleaved rounds.

    python -m tests.bench.ab [--rounds 5] [--seconds 8] [--connections 1] [--workers 1] NAME=DIR [NAME=DIR ...]

For a change to the tail, where `python -m tests.bench.run` takes minutes and a shared machine moves every
figure between runs: nginx answers as in the benchmark, the bare proxy and each checkout's `gateway serve`
(its own embedded store and key, its own code: DIR is a checkout's root, e.g. one `git archive` of the base
commit) take wrk (at one connection, or `--connections`) in turn, round after round, so that whatever slows the
machine slows each alike (each round starts one further along the list, so that none always follows the same one).
Printed per round and as medians: each one's added p50 / p99 / p99.9 over the direct call, its requests per second
and their ratio to the bare proxy's in the same round, and its server's CPU time per request (`/proc/<pid>/stat`; with
`--workers`, the workers' own are not counted).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from tests.bench.floor import cpu_seconds
from tests.bench.run import BODY, PERCENTILES, nginx_upstream, uvicorn_app, wait_ready, wrk
from tests.support.serve import printed_url

# How a checkout is served: `gateway serve`, to which the address (and `--workers`) are added.
SERVE = ["-m", "handler.entry.cli", "serve"]


def serve_checkout(
    stack: ExitStack, root: Path, workdir: Path, env: dict[str, str], workers: int = 1, command: list[str] = SERVE
) -> tuple[str, str, int]:
    """`gateway serve` (`--workers`) from the checkout at `root`, on a store of its own in `workdir` (`command`: another
    way to serve it, given the same arguments): its URL, key and process id."""
    env = {**env, "GATEWAY_STORE": f"sqlite:///{workdir / 'bench.db'}", "PYTHONPATH": str(root)}
    minted = subprocess.run(
        [sys.executable, "-m", "handler.entry.cli", "keys", "create", "--name", "bench", "--budget-usd", "1000000",
         "--rpm", "10000000", "--tpm", "1000000000", "--json"],
        cwd=root, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    # (`--port 0`: it binds a free port and says which; one chosen here could be taken before it bound it.)
    serve = [sys.executable, *command, "--host", "127.0.0.1", "--port", "0"]
    serve += ["--workers", str(workers)] if workers > 1 else []
    logged = workdir / "gateway.log"
    log = logged.open("wb")
    stack.callback(log.close)
    served = subprocess.Popen(serve, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(served.wait)
    stack.callback(served.terminate)
    url = printed_url(logged, served)
    wait_ready(f"{url}/health")
    return f"{url}/v1/chat/completions", json.loads(minted)["key"], served.pid


def run(
    checkouts: dict[str, Path],
    rounds: int,
    seconds: float,
    connections: int = 1,
    workers: int = 1,
    commands: dict[str, list[str]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """wrk at `connections` on the direct call, the bare proxy and each checkout (served by its `commands` entry where
    it has one), `rounds` times in turn; each run's results with its server's CPU µs per request (`cpu_us`, none for
    the direct call)."""
    with tempfile.TemporaryDirectory(prefix="gateway-ab-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        direct, env = stack.enter_context(nginx_upstream(workdir))
        reference = {"UPSTREAM": direct, "CLIENT": "aiohttp"}
        bare_url, bare_pid = stack.enter_context(uvicorn_app("tests.bench.bare_proxy:app", reference))
        targets = {"direct": (direct, "", None), "bare": (bare_url, "", bare_pid)}
        for name, root in checkouts.items():
            (workdir / name).mkdir()
            command = (commands or {}).get(name, SERVE)
            targets[name] = serve_checkout(stack, root, workdir / name, env, workers, command)
        for url, key, _ in targets.values():
            wrk(url, key, BODY, 8, 2, workdir)  # warm up
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        names = list(targets)
        for round_ in range(rounds):
            turn = round_ % len(names)
            for name in names[turn:] + names[:turn]:
                url, key, pid = targets[name]
                before = cpu_seconds(pid) if pid is not None else 0.0
                result = wrk(url, key, BODY, connections, seconds, workdir)
                if pid is not None:
                    result["cpu_us"] = (cpu_seconds(pid) - before) / max(1, result["requests"]) * 1e6
                runs[name].append(result)
            print(f"round {round_}: " + added_line(runs, -1), flush=True)
        return runs


def added_line(runs: dict[str, list[dict[str, Any]]], index: int) -> str:
    direct, bare = runs["direct"][index], runs["bare"][index]
    return (
        "; ".join(
            f"{name} +"
            + " / +".join(f"{results[index][f] - direct[f]:.3f}" for f in PERCENTILES)
            + f" ms, {results[index]['rps']:,.0f} req/s ({results[index]['rps'] / bare['rps']:.2f}x the bare proxy's),"
            + f" {results[index]['cpu_us']:.0f} µs CPU"
            for name, results in runs.items()
            if name != "direct"
        )
        + " (added p50 / p99 / p99.9)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkouts", nargs="+", help="NAME=DIR: a checkout's root, served under NAME")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds of wrk per target and round")
    parser.add_argument("--connections", type=int, default=1, help="wrk's connections")
    parser.add_argument("--workers", type=int, default=1, help="each checkout's `gateway serve --workers`")
    args = parser.parse_args()
    checkouts = {}
    for spec in args.checkouts:
        name, _, root = spec.partition("=")
        if not root or name in ("direct", "bare"):
            parser.error(f"{spec!r}: NAME=DIR, NAME other than direct and bare")
        checkouts[name] = Path(root).resolve()
    summary(run(checkouts, args.rounds, args.seconds, args.connections, args.workers))
    return 0


def summary(runs: dict[str, list[dict[str, Any]]]) -> None:
    """The medians of `run`'s rounds; for each checkout, its ratios to the bare proxy and its CPU per request."""
    figures = (*PERCENTILES, "rps", "cpu_us")
    medians = {
        name: [{f: statistics.median(r[f] for r in results) for f in figures if f in results[0]}]
        for name, results in runs.items()
    }
    print("medians of the rounds: " + added_line(medians, 0))
    for name, results in runs.items():
        if name not in ("direct", "bare"):
            ratios = sorted(r["rps"] / b["rps"] for r, b in zip(results, runs["bare"], strict=True))
            cpu = sorted(r["cpu_us"] for r in results)
            print(
                f"{name}: × the bare proxy's req/s in its rounds {statistics.median(ratios):.2f} ({ratios[0]:.2f}–"
                f"{ratios[-1]:.2f}), CPU µs per request {statistics.median(cpu):.0f} ({cpu[0]:.0f}–{cpu[-1]:.0f})"
            )


if __name__ == "__main__":
    sys.exit(main())
