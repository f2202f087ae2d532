"""Circuit breakers: open after repeated failures, half-open probe, close on success."""

from __future__ import annotations

from handler.pipeline.breakers import Breakers, CountBreakers


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


def test_whether_a_breaker_is_rate_limiting_follows_the_failures_that_keep_it_open() -> None:
    """A skipped deployment counts as rate-limiting the request only when its breaker's failures were 429s: once
    a breaker opened by 500s was reopened by probes that each got a 429, it still said not rate-limited, and a
    rate-limit answer became a 502 without `retry-after` (review)."""
    clock = Clock()
    b = Breakers(threshold=2, cooldown=10, clock=clock)
    b.failure("d", limited=True)
    b.failure("d", limited=True)
    assert b.state("d") == "open" and b.rate_limited("d")
    b.success("d")
    b.failure("d")
    b.failure("d")
    assert b.state("d") == "open" and not b.rate_limited("d")
    clock.now += 10
    assert b.allow("d")  # the probe
    b.failure("d", limited=True)  # reopened by a 429
    assert b.state("d") == "open" and b.rate_limited("d")
    b.failure("e", limited=True)
    b.failure("e")  # a 500 among the failures that open it: not rate-limited
    assert b.state("e") == "open" and not b.rate_limited("e")


def test_whether_a_breaker_opened_on_overload_follows_the_failures_that_keep_it_open() -> None:
    """An open breaker sheds as an overload (`overloaded_error` on Anthropic's API) only where its provider said it
    was overloaded each time (a 429 among such answers); every one did, whatever opened it (found by review)."""
    clock = Clock()
    b = Breakers(threshold=2, cooldown=10, clock=clock)
    b.failure("d", overloaded=True)
    b.failure("d", limited=True)  # (a 429 is an overload too)
    assert b.state("d") == "open" and b.overloaded("d") and not b.rate_limited("d")
    b.failure("e", overloaded=True)
    b.failure("e")  # a 500 among them: a deployment that broke
    assert b.state("e") == "open" and not b.overloaded("e")
    clock.now += 10
    assert b.allow("e")  # the probe
    b.failure("e", overloaded=True)  # reopened by an overload
    assert b.state("e") == "open" and b.overloaded("e")


def test_a_counts_breaker_is_its_own_and_reads_the_deployments_without_taking_its_probe() -> None:
    """Token counts are judged apart (a provider limits counting apart): their failures and successes leave the
    deployment's breaker as it was, their own opens on them; a deployment whose breaker is open is passed over for
    counts too, and a half-open one's probe is left to a request."""
    clock = Clock()
    deployments = Breakers(threshold=2, cooldown=10, clock=clock)
    counts = CountBreakers(deployments)
    counts.failure("d", limited=True)
    counts.failure("d", limited=True)
    assert deployments.state("d") == "closed" and counts.gate("d") is None and counts.rate_limited("d")
    assert not counts.available("d") and deployments.available("d")
    deployments.failure("e")
    counts.success("e")  # (a count answered: the deployment's failures stand)
    deployments.failure("e")
    assert deployments.state("e") == "open" and counts.gate("e") is None and not counts.allow("e")
    clock.now += 10  # half-open: a count goes through and takes no probe of the deployment's
    assert counts.gate("e") == "closed" and counts.allow("e")
    assert deployments.gate("e") == "half-open" and deployments.allow("e")
    assert counts.gate("e") is None  # (the request's probe under way)


def test_availability_and_the_wait_until_a_deployment_may_be_tried_again() -> None:
    """What `Router.shed` refuses on, without taking the probe: an open breaker is unavailable until its cooldown
    has passed (the wait says how long); half-open, it is available until its one probe is taken, then the wait
    is the least one while the probe is under way."""
    clock = Clock()
    b = Breakers(threshold=1, cooldown=30, clock=clock)
    assert b.available("d") and b.wait("d") == 0
    b.failure("d")
    clock.now += 12
    assert not b.available("d") and b.wait("d") == 18
    clock.now += 18
    assert b.available("d") and b.available("d")  # (asking takes no probe)
    assert b.allow("d")
    assert not b.available("d") and b.wait("d") == 1
    b.success("d")
    assert b.available("d")


def test_the_gate_says_whether_a_deployment_may_be_tried_and_takes_no_probe() -> None:
    """The failover asks at the gate and takes a half-open breaker's probe (`allow`) only as the attempt is sent:
    taken at the gate, an attempt that then sent nothing held the deployment shut for a cooldown (review)."""
    clock = Clock()
    b = Breakers(threshold=1, cooldown=30, clock=clock)
    assert b.gate("d") == "closed"
    b.failure("d")
    assert b.gate("d") is None  # open
    clock.now += 30
    assert b.gate("d") == "half-open" and b.gate("d") == "half-open"  # (asking takes nothing)
    assert b.allow("d")  # the probe, as it is sent
    assert b.gate("d") is None and not b.allow("d")
    clock.now += 30  # a probe that never reported is freed after a cooldown
    assert b.gate("d") == "half-open"
    b.success("d")
    assert b.gate("d") == "closed"


def test_a_streams_first_event_closes_the_breaker_and_keeps_the_failures_before_it() -> None:
    """A stream is judged at its end (`answered` at its first event): its probe closes the breaker, and a failure part
    way opens it again at once; failures part way add up to the threshold, which no first event clears; a stream that
    finishes (`success`) does."""
    clock = Clock()
    b = Breakers(threshold=3, cooldown=10, clock=clock)
    for _ in range(2):
        b.answered("d")
        b.failure("d", overloaded=True)
    b.answered("d")
    assert b.state("d") == "closed"
    b.failure("d", overloaded=True)  # (the third stream failing part way, each after its first event)
    assert b.state("d") == "open" and b.overloaded("d")
    clock.now += 10
    assert b.allow("d")  # the probe, a stream
    b.answered("d")
    assert b.state("d") == "closed" and b.allow("d")
    b.failure("d")  # (the probe failing part way)
    assert b.state("d") == "open"
    clock.now += 10
    assert b.allow("d")
    b.answered("d")
    b.success("d")  # (the probe's stream finished)
    b.failure("d")
    assert b.state("d") == "closed"
