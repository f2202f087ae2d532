"""Two or more checkouts of the gateway at one connection, beside the bare proxy, in interleaved rounds.

    python -m tests.bench.ab [--rounds 5] [--seconds 8] [--connections 1] [--workers 1] NAME=DIR [NAME=DIR ...]

For a change to the tail, where `python -m tests.bench.run` takes minutes and a shared machine moves every
figure between runs: nginx answers as in the benchmark, the bare proxy and each checkout's `gateway serve`
(its own embedded store and key, its own code: DIR is a checkout's root, e.g. one `git archive` of the base
commit) take wrk (at one connection, or `--connections`) in turn, round after round, so that whatever slows the
machine slows each alike. Printed per round and as medians: each one's added p50 / p99 / p99.9 over the direct
call, and its requests per second.
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

from tests.bench.run import BODY, PERCENTILES, bare_proxy, nginx_upstream, wait_ready, wrk
from tests.support.servers import free_port


def serve_checkout(
    stack: ExitStack, root: Path, workdir: Path, env: dict[str, str], workers: int = 1
) -> tuple[str, str]:
    """`gateway serve` (`--workers`) from the checkout at `root`, on a store of its own in `workdir`: its URL and
    key."""
    env = {**env, "GATEWAY_STORE": f"sqlite:///{workdir / 'bench.db'}", "PYTHONPATH": str(root)}
    minted = subprocess.run(
        [sys.executable, "-m", "handler.entry.cli", "keys", "create", "--name", "bench", "--budget-usd", "1000000",
         "--rpm", "10000000", "--tpm", "1000000000", "--json"],
        cwd=root, env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    port = free_port()
    serve = [sys.executable, "-m", "handler.entry.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    serve += ["--workers", str(workers)] if workers > 1 else []
    log = (workdir / "gateway.log").open("wb")
    stack.callback(log.close)
    served = subprocess.Popen(serve, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    stack.callback(served.wait)
    stack.callback(served.terminate)
    wait_ready(f"http://127.0.0.1:{port}/health")
    return f"http://127.0.0.1:{port}/v1/chat/completions", json.loads(minted)["key"]


def run(
    checkouts: dict[str, Path], rounds: int, seconds: float, connections: int = 1, workers: int = 1
) -> dict[str, list[dict[str, Any]]]:
    """wrk at `connections` on the direct call, the bare proxy and each checkout, `rounds` times in turn."""
    with tempfile.TemporaryDirectory(prefix="gateway-ab-") as tmp, ExitStack() as stack:
        workdir = Path(tmp)
        direct, env = stack.enter_context(nginx_upstream(workdir))
        targets = {"direct": (direct, ""), "bare": (stack.enter_context(bare_proxy("aiohttp", direct)), "")}
        for name, root in checkouts.items():
            (workdir / name).mkdir()
            targets[name] = serve_checkout(stack, root, workdir / name, env, workers)
        for url, key in targets.values():
            wrk(url, key, BODY, 8, 2, workdir)  # warm up
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in targets}
        for round_ in range(rounds):
            for name, (url, key) in targets.items():
                runs[name].append(wrk(url, key, BODY, connections, seconds, workdir))
            print(f"round {round_}: " + added_line(runs, -1), flush=True)
        return runs


def added_line(runs: dict[str, list[dict[str, Any]]], index: int) -> str:
    direct = runs["direct"][index]
    return (
        "; ".join(
            f"{name} +"
            + " / +".join(f"{results[index][f] - direct[f]:.3f}" for f in PERCENTILES)
            + f" ms, {results[index]['rps']:,.0f} req/s"
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
    runs = run(checkouts, args.rounds, args.seconds, args.connections, args.workers)
    figures = (*PERCENTILES, "rps")
    medians = {name: [{f: statistics.median(r[f] for r in results) for f in figures}] for name, results in runs.items()}
    print("medians of the rounds: " + added_line(medians, 0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
