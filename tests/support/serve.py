"""`gateway serve` as a user runs it: a subprocess on a config file, a fresh SQLite store and a key made with
`gateway keys create`, in front of the fake upstreams."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.servers import PortTaken, said_port_taken

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Served:
    """A running `gateway serve`: its URL, a key, and the process (to stop it as a signal would)."""

    url: str
    key: str
    process: subprocess.Popen[bytes]

    def stopped_in(self, wait_s: float) -> float:
        """Seconds from SIGTERM, as a service manager sends it, to the process's exit; killed (as the manager then
        would) if it is still running after `wait_s`, the time waited returned."""
        started = time.monotonic()
        self.process.terminate()
        try:
            self.process.wait(wait_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(15)
        return time.monotonic() - started


LISTENING = re.compile(r"^gateway listening on (http://\S+) ", re.M)


def printed_url(log: Path, process: subprocess.Popen[bytes], wait_s: float = 30) -> str:
    """The URL `gateway serve` (run by `process`, its output in `log`) says it listens on, once it says so: told
    `--port 0`, it binds a free port before it says which."""
    deadline = time.monotonic() + wait_s
    while not (said := LISTENING.search(log.read_text())):
        if time.monotonic() > deadline or process.poll() is not None:
            raise AssertionError(f"gateway serve did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return said.group(1)


@contextmanager
def gateway_serve(
    upstream_url: str,
    folder: Path,
    observability: dict[str, Any],
    environ: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
    upstream_models: tuple[str, ...] = (),
    key_args: tuple[str, ...] = (),
    gateway: dict[str, Any] | None = None,
) -> Iterator[Served]:
    """`gateway serve` (with `args`) with one model, gpt-4o-mini at the fake OpenAI, and `observability` (and
    `gateway`: its settings, where given) in its config; each of `upstream_models` a model of that name at the same
    fake too (`drip`: a slow stream); its key made with `key_args` (`--budget-usd 1`); stopped (SIGTERM, as a service
    manager does) at the end, unless the test stopped it already. It binds a free port itself (`--port 0`); one its
    config names (`metrics_port`) found taken raises `PortTaken` (start it with `servers.on_a_free_port`)."""
    config = {
        **({"gateway": gateway} if gateway is not None else {}),
        "observability": observability,
        "providers": {
            "openai": {"type": "openai", "api_key": "env:OPENAI_API_KEY", "base_url": f"{upstream_url}/openai/v1"}
        },
        "models": {
            name: {"deployments": [{"provider": "openai", "model": name}]} for name in ("gpt-4o-mini", *upstream_models)
        },
    }
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    env = {
        **os.environ,
        "GATEWAY_CONFIG": str(folder / "config.yaml"),
        "GATEWAY_STORE": f"sqlite:///{folder / 'gateway.db'}",
        "OPENAI_API_KEY": "test-openai-key",
        "GATEWAY_REGION": "us-east-1",
        **(environ or {}),
    }
    created = subprocess.run(
        [sys.executable, "-m", "handler.entry.cli", "keys", "create", "--name", "t", "--json", *key_args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    logged = folder / "gateway.log"
    with logged.open("w") as log:
        process = subprocess.Popen(  # (`--port 0`: it binds a free port itself, and says which: `servers`)
            [sys.executable, "-m", "handler.entry.cli", "serve", "--host", "127.0.0.1", "--port", "0", *args],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = printed_url(logged, process)
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(f"{url}/health").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    if said_port_taken(logged.read_text()):  # (a port of its config: `metrics_port`)
                        raise PortTaken(logged.read_text())
                    raise AssertionError(f"gateway serve did not start:\n{logged.read_text()}")
                time.sleep(0.1)
            yield Served(url, json.loads(created.stdout)["key"], process)
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(15)
