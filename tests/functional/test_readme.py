"""The README's "Calling it" examples run as printed, against the gateway in front of the fake upstreams: the
Python snippets through the official SDKs, the shell ones through curl and the `gateway` command."""

from __future__ import annotations

import contextlib
import io
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.functional.conftest import Running
from tests.support.serve import printed_url

ROOT = Path(__file__).resolve().parents[2]
LOCAL = "http://127.0.0.1:8080"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)


def examples(language: str) -> list[str]:
    """The code blocks in `language` of the README's "Calling it" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Calling it\n", 1)[1].split("\n## ", 1)[0]
    return [code for lang, code in BLOCK.findall(section) if lang == language]


def test_the_section_has_its_examples() -> None:
    assert len(examples("python")) >= 2 and any(code.startswith("curl ") for code in examples("sh"))


def run_python_example(code: str, url: str) -> list[str]:
    """What a README Python example prints, run against the gateway at `url` (GATEWAY_KEY set by the caller)."""
    assert LOCAL in code
    namespace: dict[str, Any] = {}
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            exec(compile(code.replace(LOCAL, url), "README.md", "exec"), namespace)
    finally:
        client = namespace.get("client")
        if client is not None:
            client.close()  # its connections, which pytest would otherwise report as left open
    # (A gateway running in this process logs its requests here too.)
    lines = [line for line in printed.getvalue().splitlines() if not line.startswith('{"level"')]
    assert lines and all(line.strip() for line in lines), lines
    if "x-gateway-route" in code:
        assert re.search(r"=200 \d+\.\d+", lines[1]), lines  # the route's outcome, then the cost
    return lines


@pytest.mark.parametrize("code", examples("python"), ids=lambda code: code.split("client = ")[1].split("(")[0])
def test_each_python_example_runs(code: str, running: Running, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_KEY", running.mint(name="readme"))
    run_python_example(code, running.url)


@pytest.mark.parametrize("code", examples("sh"), ids=lambda code: code.split()[0].rsplit("/", 1)[-1])
def test_each_shell_example_runs(code: str, running: Running) -> None:
    key = running.mint(name="readme")
    script = code.replace(LOCAL, running.url).replace(".venv/bin/gateway", f"{sys.executable} -m handler.entry.cli")
    environ = {**os.environ, "GATEWAY_KEY": key, "GATEWAY_STORE": running.store_url}
    ran = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    if code.startswith("curl "):
        assert ran.stdout.rstrip().endswith("data: [DONE]") and '"cost"' in ran.stdout
    else:
        assert '"key": "gwk_' in ran.stdout  # the new key, printed once


def test_make_demo_runs_the_fake_providers_and_prints_the_key_the_examples_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo`, as the quick start shows it: no provider key in its environment, and the README's curl, OpenAI
    SDK and Anthropic SDK examples answered through it with the key it printed."""
    quick_start = (ROOT / "README.md").read_text().split("\n## Quick start\n", 1)[1].split("\n## ", 1)[0]
    assert "make demo" in quick_start
    recipe = re.search(r"^demo:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe and "-m tests.fakes.demo $(ARGS)" in recipe.group(1)

    environ = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and not k.startswith("GATEWAY_")}
    output = tmp_path / "demo.log"
    with output.open("w") as log:
        demo = subprocess.Popen(
            # (`--port 0`: its gateway binds a free port, and says which, where one chosen before might be taken)
            [sys.executable, "-m", "tests.fakes.demo", "--port", "0", "--folder", str(tmp_path / "demo")],
            cwd=ROOT,
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        url = printed_url(output, demo)
        printed = output.read_text()
        key = re.search(r"^    export GATEWAY_KEY=(gwk_\S+)$", printed, re.M)
        assert key, printed

        curl = next(code for code in examples("sh") if code.startswith("curl "))
        ran = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", curl.replace(LOCAL, url)],
            env={**environ, "GATEWAY_KEY": key.group(1)},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert ran.stdout.rstrip().endswith("data: [DONE]") and '"cost"' in ran.stdout, ran.stdout + ran.stderr
        monkeypatch.setenv("GATEWAY_KEY", key.group(1))
        for code in examples("python"):
            run_python_example(code, url)

        # The README's key commands, in a shell with the demo's `export GATEWAY_STORE=...`: the key is the demo's
        # (it was created in `make serve`'s store, and the demo answered it 401).
        store = re.search(r"^    export GATEWAY_STORE=(sqlite:///\S+)$", printed, re.M)
        assert store, printed
        commands = next(code for code in examples("sh") if "gateway keys create" in code)
        ran = subprocess.run(
            [
                "bash",
                "-euo",
                "pipefail",
                "-c",
                commands.replace(".venv/bin/gateway", f"{sys.executable} -m handler.entry.cli"),
            ],
            cwd=tmp_path,  # another folder than the demo's: the store is found all the same
            env={**environ, "GATEWAY_STORE": store.group(1), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert ran.returncode == 0, ran.stderr
        created = re.search(r'"key": "(gwk_[^"]+)"', ran.stdout)
        assert created, ran.stdout
        answer = httpx.post(
            f"{url}/v1/chat/completions",
            headers={"authorization": f"Bearer {created.group(1)}"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        returncode = demo.wait(15)
    assert returncode == 0, output.read_text()


def test_make_demo_in_a_folder_of_the_users_makes_its_own_files_anew_and_keeps_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make demo ARGS='--folder DIR'` emptied DIR whole at each start: `--folder .gateway` deleted `make serve`'s store
    (`gateway.db`) and the admin key in it, `--folder .` the working tree (review docrev); then, its own files named as
    `make serve`'s, it still deleted that store and wrote over a user's `config.yaml` (review mergerev34b)."""
    from tests.fakes import demo

    folder = tmp_path / ".gateway"  # (`make serve`'s folder)
    (folder / "sub").mkdir(parents=True)
    mine = {"notes.txt": "precious", "gateway.db": "make serve's store", "gateway.db-wal": "its log",
            "config.yaml": "a user's config", "sub/gateway.db": "another store"}  # fmt: skip
    for name, text in mine.items():
        (folder / name).write_text(text)
    (folder / "demo.db-wal").write_text("the last demo's")
    served: list[list[str]] = []
    monkeypatch.setattr(demo, "gateway", lambda argv: served.append(argv) or 0)  # (not serving: the folder alone)
    assert demo.main(["--port", "8099", "--folder", str(folder)]) == 0
    assert {name: (folder / name).read_text() for name in mine} == mine
    assert not (folder / "demo.db-wal").exists() and (folder / "demo.yaml").exists()
    assert served and served[0][:3] == ["serve", "--config", str(folder / "demo.yaml")]
    assert served[0][4] == f"sqlite:///{(folder / 'demo.db').resolve()}"


def test_make_demo_deletes_only_its_own_store_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`folder.glob("demo.db*")` deleted a user's `demo.dbml`, `demo.db.bak` or `demo.dbx` in the folder given (review
    mergerev34c): the demo makes anew `demo.db` and the files SQLite and the gateway keep beside it, no others."""
    from tests.fakes import demo

    folder = tmp_path / "project"
    folder.mkdir()
    mine = {"demo.dbml": "Table users { id int }", "demo.db.bak": "yesterday's", "demo.dbx": "a user's"}
    for name, text in mine.items():
        (folder / name).write_text(text)
    (folder / "demo.db-shm").write_text("the last demo's")
    monkeypatch.setattr(demo, "gateway", lambda argv: 0)  # (not serving: the folder alone)
    assert demo.main(["--port", "8099", "--folder", str(folder)]) == 0
    assert not (folder / "demo.db-shm").exists()
    assert {name: (folder / name).read_text() for name in mine if (folder / name).exists()} == mine
