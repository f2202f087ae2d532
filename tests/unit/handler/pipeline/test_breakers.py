"""Circuit breakers: open after repeated failures, half-open probe, close on success."""

from __future__ import annotations

from handler.pipeline.breakers import Breakers


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_threshold_then_probes_once_and_closes() -> None:
    clock = Clock()
    b = Breakers(threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        b.failure("d")
    assert b.state("d") == "closed" and b.allow("d")
    b.failure("d")
    assert b.state("d") == "open" and not b.allow("d")
    clock.now += 10
    assert b.state("d") == "half-open"
    assert b.allow("d") and not b.allow("d")  # one probe at a time
    b.success("d")
    assert b.state("d") == "closed" and b.allow("d")


def test_failed_probe_reopens_and_lost_probe_expires() -> None:
    clock = Clock()
    b = Breakers(threshold=1, cooldown=5, clock=clock)
    b.failure("d")
    clock.now += 5
    assert b.allow("d")
    b.failure("d")
    assert b.state("d") == "open"
    clock.now += 5
    assert b.allow("d")  # probe sent, never reported
    clock.now += 5
    assert b.allow("d")
