"""The command line finds the server's store, and a read-only command never creates one."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from handler.entry.cli import main


def test_read_only_commands_name_the_missing_store_and_create_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GATEWAY_STORE", raising=False)
    for command in (["keys", "list"], ["keys", "show", "abcdefghijkm"], ["usage"]):
        assert main(command) == 2
        error = capsys.readouterr().err
        assert str(tmp_path / ".gateway" / "gateway.db") in error and "--store" in error
    assert not (tmp_path / ".gateway").exists()


def test_the_cli_and_the_server_share_a_store_named_by_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    store = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    assert main(["keys", "--store", store, "create", "--name", "ci", "--json"]) == 0
    created = orjson.loads(capsys.readouterr().out)
    monkeypatch.setenv("GATEWAY_STORE", store)
    assert main(["keys", "list"]) == 0
    assert [k["id"] for k in orjson.loads(capsys.readouterr().out)] == [created["id"]]


def test_keys_carry_default_tags_set_at_creation_and_replaced_later(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = f"sqlite:///{tmp_path / 'gateway.db'}"
    assert main(["keys", "--store", store, "create", "--name", "ci", "--tags", "team=search,env=ci", "--json"]) == 0
    created = orjson.loads(capsys.readouterr().out)
    assert created["tags"] == {"team": "search", "env": "ci"}
    assert main(["keys", "--store", store, "tag", created["id"], "team=ads"]) == 0
    assert orjson.loads(capsys.readouterr().out)["tags"] == {"team": "ads"}
    assert main(["keys", "--store", store, "show", created["id"]]) == 0
    assert orjson.loads(capsys.readouterr().out)["tags"] == {"team": "ads"}
    assert main(["keys", "--store", store, "tag", created["id"], ""]) == 0
    assert orjson.loads(capsys.readouterr().out)["tags"] == {}
    assert main(["keys", "--store", store, "create", "--name", "bad", "--tags", "team=a b"]) == 2
    assert "--tags takes name=value pairs" in capsys.readouterr().err
    assert main(["usage", "--store", store, "--tag", "team"]) == 2
    assert "tag takes name=value pairs" in capsys.readouterr().err
