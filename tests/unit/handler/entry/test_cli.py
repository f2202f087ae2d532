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


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--budget-usd", "nan"], "budget_usd"),  # no budget at all, silently
        (["--budget-usd", "-5"], "budget_usd"),  # every request a 402
        (["--rpm", "0"], "rpm"),  # no limit at all
        (["--tpm", "-3"], "tpm"),  # every request a 429
        (["--expires-in", "0s"], "expires_in_seconds"),  # a key that never expires
        (["--models", ","], "models"),  # a key for no model
    ],
)
def test_keys_create_refuses_what_the_key_api_refuses(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], named: str
) -> None:
    """Each of these made a key that meant something else than asked; now the API's own message, exit 2."""
    store = f"sqlite:///{tmp_path / 'gateway.db'}"
    assert main(["keys", "--store", store, "create", "--name", "k", *flags]) == 2
    assert named in capsys.readouterr().err
    assert main(["keys", "--store", store, "list"]) == 0
    assert orjson.loads(capsys.readouterr().out) == []


def test_a_store_the_cli_cannot_open_is_one_line_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["usage", "--store", "bogus://x"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("gateway: the store cannot be used") and "Traceback" not in error
