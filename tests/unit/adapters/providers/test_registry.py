"""The registry is the one place that maps a config `type:` to code: every adapter folder is in it."""

from __future__ import annotations

from pathlib import Path

import adapters.providers
from adapters.providers.registry import REGISTRY
from handler.ports import ProviderAdapter

FOLDER = Path(adapters.providers.__file__).parent


def test_every_provider_folder_is_registered() -> None:
    folders = {p.name for p in FOLDER.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    registered = {cls.__module__.split(".")[2] for cls in REGISTRY.values()}
    assert folders == registered


def test_registry_names_match_the_adapters() -> None:
    for name, cls in REGISTRY.items():
        assert issubclass(cls, ProviderAdapter) and cls.type_name == name
        assert cls.default_base_url.startswith("https://") or cls.default_base_url == ""
