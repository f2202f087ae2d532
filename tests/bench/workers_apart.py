"""Whether `gateway serve --workers 2` loses to its shared store or to the machine.

    python -m tests.bench.workers_apart [--rounds 4] [--duration 4]

In turns, each at 8 connections (wrk, against the benchmark's nginx): one worker; `--workers 2` on one store file,
as the benchmark's two-worker row runs it; and two one-worker gateways on two store files, driven at once by two
wrk processes of 4 connections each, which share nothing but the machine. Each line gives requests a second, the
ratio to one worker's in the same round, and the gateway's CPU time a request (its processes' user and system time
from /proc). Where the two gateways apart scale no better than the two workers, what holds the row is the machine:
wrk and nginx on the same cores (docs/performance.md, the thirty-third session).
"""

from __future__ import annotations

import argparse
import functools
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from tests.bench.run import BODY, gateway_serve, mint_key, nginx_upstream, wait_ready, wrk

CHAT = "/v1/chat/completions"


def cpu_s(pid: int) -> float:
    """A process's user and system CPU time, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def measured(pids: list[int], drive: Any) -> tuple[float, int, float]:
    """`drive()`'s requests a second and requests, and `pids`' CPU seconds meanwhile."""
    before = sum(map(cpu_s, pids))
    rps, requests = drive()
    return rps, requests, sum(map(cpu_s, pids)) - before


def at_once(runs: list[tuple[str, str, Path]], connections: int, duration: float) -> tuple[float, int]:
    """wrk on each (url, key, workdir) at the same time: their requests a second and requests, summed."""
    results: list[dict[str, Any]] = []
    threads = [
        threading.Thread(target=lambda r=run: results.append(wrk(r[0], r[1], BODY, connections, duration, r[2])))
        for run in runs
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(r["rps"] for r in results), sum(r["requests"] for r in results)


def alone(url: str, key: str, duration: float, workdir: Path) -> tuple[float, int]:
    """wrk at 8 connections on `url`: its requests a second and requests."""
    figures = wrk(url + CHAT, key, BODY, 8, duration, workdir)
    return figures["rps"], figures["requests"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds of each wrk run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gateway-workers-") as tmp:
        workdir = Path(tmp)
        with nginx_upstream(workdir) as (_, env):
            names = ("one", "two", "a", "b")
            envs = {name: {**env, "GATEWAY_STORE": f"sqlite:///{workdir}/{name}.db"} for name in names}
            keys = {name: mint_key(store_env) for name, store_env in envs.items()}
            for name in ("a", "b"):
                (workdir / name).mkdir()
            with (
                gateway_serve(envs["one"], workdir / "one.log") as (one, one_url),
                gateway_serve(envs["two"], workdir / "two.log", "--workers", "2") as (two, two_url),
                gateway_serve(envs["a"], workdir / "a.log") as (a, a_url),
                gateway_serve(envs["b"], workdir / "b.log") as (b, b_url),
            ):
                for url in (one_url, two_url, a_url, b_url):
                    wait_ready(f"{url}/health")
                urls = {"one": one_url, "two": two_url, "a": a_url, "b": b_url}
                for name, url in urls.items():
                    wrk(url + CHAT, keys[name], BODY, 8, 1, workdir)  # warm up (the workers' slices granted)
                workers = children(two.pid)  # (all up once the warm-up has been answered)
                seconds = args.duration
                apart = [(a_url + CHAT, keys["a"], workdir / "a"), (b_url + CHAT, keys["b"], workdir / "b")]
                one_alone = functools.partial(alone, one_url, keys["one"], seconds, workdir)
                two_alone = functools.partial(alone, two_url, keys["two"], seconds, workdir)
                for turn in range(1, args.rounds + 1):
                    rps1, n1, cpu1 = measured([one.pid], one_alone)
                    rps2, n2, cpu2 = measured(workers, two_alone)
                    rps3, n3, cpu3 = measured([a.pid, b.pid], functools.partial(at_once, apart, 4, seconds))
                    print(
                        f"round {turn}: one worker {rps1:,.0f} req/s ({cpu1 / n1 * 1e6:.0f} µs a request); "
                        f"--workers 2 {rps2:,.0f} ({rps2 / rps1:.2f}×; {cpu2 / n2 * 1e6:.0f} µs); "
                        f"two apart {rps3:,.0f} ({rps3 / rps1:.2f}×; {cpu3 / n3 * 1e6:.0f} µs)",
                        flush=True,
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
