"""The suite's hypothesis runs are the same every run (tests/conftest.py): `make test` and CI try the examples they
tried the last time, where a random draw could fail one day on an example never seen before and pass on the rerun.
`HYPOTHESIS_PROFILE=explore` draws them at random (docs/testing.md)."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st


def drawn(profile: settings | None = None) -> list[bytes]:
    """What a property test over byte strings is given, in order, in one run (under `profile`, or the one loaded)."""
    seen: list[bytes] = []

    @given(st.binary(min_size=8, max_size=32))
    @settings(profile, max_examples=20)
    def record(value: bytes) -> None:
        seen.append(value)

    record()
    return seen


def test_the_loaded_profile_draws_the_same_examples_every_run() -> None:
    if os.environ.get("HYPOTHESIS_PROFILE"):
        pytest.skip("this run chose its own hypothesis profile")
    assert drawn() == drawn()
    assert settings().derandomize and settings().database is None


def test_the_explore_profile_draws_at_random() -> None:
    explore = settings.get_profile("explore")
    assert drawn(explore) != drawn(explore)
