"""`make demo`: `gateway serve` in front of this repository's fake OpenAI, Anthropic and Gemini, so that every
README example gets an answer with no provider key and nothing leaving the machine.

The fakes listen on free loopback ports in this process; the gateway's config (written to the demo's folder,
to read) points its providers at them, with the keys the fakes accept. Each run starts from an empty store, so
`gateway serve` mints the first admin key and prints it, as `make serve` does on a first start.

    .venv/bin/python -m tests.fakes.demo [--port 8080] [--folder .gateway/demo]
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from handler.entry.cli import main as gateway
from tests.fakes import anthropic, gemini, openai
from tests.support.servers import ServerThread

FAKES = {"openai": openai, "anthropic": anthropic, "gemini": gemini}
# Each provider's key, as the shipped config reads it, set to the one its fake accepts (in this process only).
KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}
# The README's models, by the provider that serves them; their prices are the gateway's built-in ones.
MODELS = {
    "gpt-4o-mini": "openai",
    "gpt-5": "openai",
    "text-embedding-3-small": "openai",
    "claude-haiku-4-5": "anthropic",
    "claude-sonnet-4-5": "anthropic",
    "gemini-2.5-flash": "gemini",
}


def demo_config(urls: dict[str, str]) -> dict[str, Any]:
    """The gateway's config with each provider at its fake's URL (`urls`, by provider)."""
    suffix = {"openai": "/v1", "anthropic": "", "gemini": ""}
    models: dict[str, Any] = {}
    for model, provider in MODELS.items():
        models[model] = {"deployments": [{"provider": provider, "model": model}]}
        if model == "text-embedding-3-small":
            models[model]["kind"] = "embedding"
    models["gpt-4o-mini"]["fallbacks"] = ["claude-haiku-4-5"]
    return {
        "providers": {
            name: {"type": name, "api_key": f"env:{KEY_VARIABLES[name]}", "base_url": url + suffix[name]}
            for name, url in urls.items()
        },
        "models": models,
    }


# The demo's store, `demo.db`, and the files SQLite and the gateway keep beside it: the demo makes them anew, and
# nothing else of the folder (a user's `demo.db.bak` there is theirs).
DEMO_DB_FILES = ("", "-wal", "-shm", "-journal", "-checkpointer.lock", "-settlements.jsonl")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description="the gateway in front of fake providers")
    parser.add_argument("--port", type=int, default=8080, help="the gateway's port (default: 8080)")
    parser.add_argument("--folder", default=".gateway/demo", help="its config and store, made anew at each start")
    args = parser.parse_args(argv)

    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Its own files alone, made anew, by names of their own (the folder emptied whole, `--folder .gateway` lost `make
    # serve`'s store, `gateway.db`, and its admin key, `--folder .` the working tree; a user's `config.yaml` there was
    # written over).
    for own in [folder / "demo.yaml", *(folder / f"demo.db{end}" for end in DEMO_DB_FILES)]:
        own.unlink(missing_ok=True)
    fakes = {name: ServerThread(module.create_app()).start() for name, module in FAKES.items()}
    try:
        config = folder / "demo.yaml"
        config.write_text(yaml.safe_dump(demo_config({name: fake.url for name, fake in fakes.items()})))
        os.environ.update({KEY_VARIABLES[name]: module.API_KEY for name, module in FAKES.items()})
        # Absolute, so that the `gateway` commands find it from any folder: without it they use (and `keys create`
        # creates) `make serve`'s store, whose keys this gateway refuses.
        store = f"sqlite:///{(folder / 'demo.db').resolve()}"
        sys.stdout.write(
            "Demo: fake providers answer every model below with canned text; no provider key is needed and no "
            "request leaves this machine.\n"
            f"  models: {', '.join(MODELS)}\n"
            f"  config: {config} (providers at {', '.join(fake.url for fake in fakes.values())})\n"
            f"  store: {store}\n\n"
            "For the `gateway` commands (keys, usage, dashboard) to use this store, in the shell you run them from:\n\n"
            f"    export GATEWAY_STORE={store}\n"
        )
        sys.stdout.flush()
        return gateway(["serve", "--config", str(config), "--store", store, "--port", str(args.port)])
    finally:
        for fake in fakes.values():
            fake.stop()


if __name__ == "__main__":
    raise SystemExit(main())
