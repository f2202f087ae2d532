"""Where the tail comes from: a timeline of every request at one connection, and of what else ran meanwhile.

    python -m tests.bench.timeline [--duration 20] [--json FILE]

The gateway is served in this process (uvicorn, the bench's config and embedded store, nginx upstream) with
recorders attached, and wrk drives it at one connection. With one connection, a request can only arrive once the
previous answer has gone, so each request's *window* runs from the previous answer's last byte to its own: about
what the client waits (the network aside). Everything that ran in the process during a window is charged to it:
garbage collections (`gc.callbacks`), the store's transactions (SQLite batches, with their commit and any checkpoint
in it), request-line log writes, and every other event-loop callback that took long (settlement tasks, timers); the
store's statements are counted, by their first words. The report compares the slowest 1 % of windows with the median
request: how long each kind of work ran within them and how many of them it touched. The loop is asyncio's own here,
not uvloop (its callbacks cannot be timed from Python), so absolute figures are a little higher than `gateway
serve`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import gc
import json
import os
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.bench.run import BODY, WRK_SCRIPT, bench_files, mint_key, nginx_on, wait_ready
from tests.support.servers import listening_socket

# Loop callbacks shorter than this are the requests' own steps: not charged to a kind of their own.
SLOW_CALLBACK_S = 0.0002


@dataclass
class Recorder:
    """Intervals of work, by kind, and the requests' windows, all on `time.perf_counter`."""

    events: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: defaultdict(list))
    requests: list[tuple[float, float]] = field(default_factory=list)  # (app entered, answer's last byte)
    statements: Counter[str] = field(default_factory=Counter)  # the store's statements, by their first words

    def add(self, kind: str, started: float) -> None:
        self.events[kind].append((started, time.perf_counter()))


@contextmanager
def recording(recorder: Recorder) -> Iterator[None]:
    """Attach the recorders (see the module docstring); detach them on exit."""
    from adapters.store.sqlite import SQLiteStore

    gc_started: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.perf_counter()
        else:
            recorder.add(f"gc gen{info['generation']}", gc_started[0])

    flush = SQLiteStore._flush

    def timed_flush(store: SQLiteStore) -> None:
        batch = len(store._batch or ())
        if not isinstance(store.db, TimedConnection):
            store.db = TimedConnection(store.db, recorder)  # type: ignore[assignment]
        started = time.perf_counter()
        flush(store)
        recorder.add("store transaction" if batch < 2 else "store transaction (batched)", started)

    stdout = sys.stdout

    class TimedStdout:
        """The request lines' stream, each write timed."""

        def write(self, text: str) -> int:
            started = time.perf_counter()
            written = stdout.write(text)
            recorder.add("log write", started)
            return written

        def __getattr__(self, name: str) -> Any:
            return getattr(stdout, name)

    handle_run = asyncio.events.Handle._run

    def timed_run(handle: asyncio.events.Handle) -> None:
        callback = handle._callback  # type: ignore[attr-defined]  # (a handle cancelled as it runs drops it)
        started = time.perf_counter()
        handle_run(handle)
        if time.perf_counter() - started >= SLOW_CALLBACK_S:
            recorder.add(f"loop: {callback_name(callback)}", started)

    gc.callbacks.append(on_gc)
    SQLiteStore._flush = timed_flush  # type: ignore[method-assign, assignment]
    sys.stdout = TimedStdout()
    asyncio.events.Handle._run = timed_run  # type: ignore[method-assign, assignment]
    try:
        yield
    finally:
        gc.callbacks.remove(on_gc)
        SQLiteStore._flush = flush  # type: ignore[method-assign]
        sys.stdout = stdout
        asyncio.events.Handle._run = handle_run  # type: ignore[method-assign]


class TimedConnection:
    """A SQLite connection whose BEGIN and COMMIT are timed apart (a commit may run a checkpoint)."""

    def __init__(self, db: sqlite3.Connection, recorder: Recorder) -> None:
        self.db = db
        self.recorder = recorder

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        started = time.perf_counter()
        cursor = self.db.execute(sql, *args)
        self.recorder.statements[" ".join(sql.split()[:3])] += 1
        if sql in ("BEGIN IMMEDIATE", "COMMIT"):
            self.recorder.add(f"store {sql.split()[0].lower()}", started)
        return cursor

    def begin_at_once(self) -> None:
        started = time.perf_counter()
        self.db.begin_at_once()  # type: ignore[attr-defined]
        self.recorder.add("store begin", started)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def callback_name(callback: Any) -> str:
    """A task's coroutine, or a plain callback's name."""
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        return str(getattr(task.get_coro(), "__qualname__", None) or repr(task.get_coro()))
    return str(getattr(callback, "__qualname__", None) or repr(callback))


def timed_app(app: Callable[..., Any], recorder: Recorder) -> Callable[..., Any]:
    """`app`, noting when each HTTP request entered it and when its answer's last byte was sent."""

    async def timed(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        entered = time.perf_counter()

        async def timed_send(message: Any) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                recorder.requests.append((entered, time.perf_counter()))

        await app(scope, receive, timed_send)

    return timed


def overlap(intervals: list[tuple[float, float]], starts: list[float], begin: float, end: float) -> float:
    """Seconds of `intervals` (sorted by start; `starts` their starts) within [begin, end]."""
    total = 0.0
    i = bisect.bisect_left(starts, begin)
    if i > 0:
        i -= 1  # one that started before the window may reach into it
    while i < len(intervals) and intervals[i][0] < end:
        a, b = intervals[i]
        total += max(0.0, min(b, end) - max(a, begin))
        i += 1
    return total


def analyse(recorder: Recorder, skip: int = 200) -> dict[str, Any]:
    """The slowest 1 % of windows against the median window, per kind of work (see the module docstring)."""
    answers = recorder.requests[skip:]
    windows = [(previous[1], current[0], current[1]) for previous, current in zip(answers, answers[1:], strict=False)]
    lengths = sorted(end - begin for begin, _, end in windows)
    p99 = lengths[int(len(lengths) * 0.99)]
    slow = [w for w in windows if w[2] - w[0] >= p99]
    middle = sorted(windows, key=lambda w: w[2] - w[0])[len(windows) // 2 - 50 : len(windows) // 2 + 50]
    kinds = {kind: sorted(intervals) for kind, intervals in recorder.events.items()}
    starts = {kind: [a for a, _ in intervals] for kind, intervals in kinds.items()}

    def charged(group: list[tuple[float, float, float]]) -> dict[str, dict[str, float]]:
        result = {}
        for kind, intervals in kinds.items():
            spent = [overlap(intervals, starts[kind], begin, end) for begin, _, end in group]
            touched = sum(1 for s in spent if s > 0)
            if touched:
                result[kind] = {"mean_ms": statistics.fmean(spent) * 1000, "share": touched / len(group)}
        return result

    def summary(group: list[tuple[float, float, float]]) -> dict[str, float]:
        return {
            "window_ms": statistics.fmean(end - begin for begin, _, end in group) * 1000,
            "before_app_ms": statistics.fmean(entered - begin for begin, entered, _ in group) * 1000,
            "in_app_ms": statistics.fmean(end - entered for _, entered, end in group) * 1000,
        }

    return {
        "requests": len(windows),
        "p50_ms": lengths[len(lengths) // 2] * 1000,
        "p99_ms": p99 * 1000,
        "p999_ms": lengths[int(len(lengths) * 0.999)] * 1000,
        "slowest_1pct": {**summary(slow), "kinds": charged(slow)},
        "median": {**summary(middle), "kinds": charged(middle)},
        "totals": {
            kind: {
                "count": len(v),
                "median_ms": statistics.median(b - a for a, b in v) * 1000,
                "max_ms": max(b - a for a, b in v) * 1000,
            }
            for kind, v in kinds.items()
        },
        "statements_per_request": {
            sql: count / max(1, len(recorder.requests)) for sql, count in recorder.statements.most_common()
        },
    }


def report(result: dict[str, Any]) -> str:
    slow, middle = result["slowest_1pct"], result["median"]
    lines = [
        f"{result['requests']} requests at 1 connection; window p50 {result['p50_ms']:.3f} ms, "
        f"p99 {result['p99_ms']:.3f} ms, p99.9 {result['p999_ms']:.3f} ms",
        f"slowest 1 %: window {slow['window_ms']:.3f} ms = {slow['before_app_ms']:.3f} before the app "
        f"+ {slow['in_app_ms']:.3f} in it; median requests: {middle['window_ms']:.3f} = "
        f"{middle['before_app_ms']:.3f} + {middle['in_app_ms']:.3f}",
        "| work | ms in a slowest-1 % window (mean) | share of them | ms in a median window | share | "
        "count in run | median ms | longest ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    kinds = sorted(slow["kinds"], key=lambda k: -slow["kinds"][k]["mean_ms"])
    for kind in kinds:
        s = slow["kinds"][kind]
        m = middle["kinds"].get(kind, {"mean_ms": 0.0, "share": 0.0})
        total = result["totals"][kind]
        lines.append(
            f"| {kind} | {s['mean_ms']:.3f} | {s['share']:.0%} | {m['mean_ms']:.3f} | {m['share']:.0%} "
            f"| {total['count']} | {total['median_ms']:.3f} | {total['max_ms']:.2f} |"
        )
    statements = ", ".join(f"{sql} {n:.3f}" for sql, n in result["statements_per_request"].items())
    lines.append(f"the store's statements a request (BEGIN aside): {statements}")
    return "\n".join(lines)


async def serve_and_drive(app: Any, listener: socket.socket, script: Path, duration: float) -> None:
    """Serve `app` on `listener` (bound here: a port chosen in advance could be taken before the server bound it) and
    drive it with wrk at one connection."""
    import uvicorn

    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        loop="asyncio",
        http="handler.entry.server:BoundedHttpToolsProtocol",
        lifespan="off",
    )
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    while not server.started:
        await asyncio.sleep(0.05)
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/v1/chat/completions"
    wrk = await asyncio.create_subprocess_exec(
        "wrk", "-t", "1", "-c", "1", "-d", f"{max(1, round(duration))}s", "-s", str(script), url,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await wrk.wait()
    server.should_exit = True
    await serving


def run(duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gateway-timeline-") as tmp, listening_socket() as upstream_listener:
        workdir = Path(tmp)
        upstream_port = upstream_listener.getsockname()[1]
        upstream = f"http://127.0.0.1:{upstream_port}"
        env = bench_files(workdir, upstream_port)
        key = mint_key({**os.environ, **env})
        os.environ.update(env)
        script = workdir / "post.lua"
        script.write_text(WRK_SCRIPT.format(body=json.dumps(json.dumps(BODY)), key=key))
        with nginx_on(upstream_listener, workdir), open(workdir / "gateway.log", "w") as log:
            wait_ready(f"{upstream}/v1/chat/completions")
            sys.stdout = log  # the request lines, as `gateway serve` writes them to its log
            try:
                from handler.entry.asgi import app

                recorder = Recorder()
                with recording(recorder), listening_socket() as listener:
                    asyncio.run(serve_and_drive(timed_app(app, recorder), listener, script, duration))
            finally:
                sys.stdout = sys.__stdout__
    return analyse(recorder)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of wrk at one connection")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    result = run(args.duration)
    print(report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
