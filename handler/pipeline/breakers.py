"""Per-deployment circuit breakers, in the process: skip a deployment that keeps failing.

Closed: requests flow. After `threshold` consecutive retryable failures the breaker opens for
`cooldown` seconds, during which no request is sent to the deployment (the failover passes it over; with
every candidate's breaker open the request is refused before it is admitted). Then it is half-open: one
request may probe it, the others are refused as if it were open; success closes the breaker, failure opens
it again for another cooldown.
"""

from __future__ import annotations

import time
from collections.abc import Callable

# The wait told to a client refused while a half-open breaker's probe is under way: its outcome, due as soon as the
# provider answers, decides, so no longer a wait than the least `retry-after` can say.
PROBING_WAIT_S = 1.0


class _State:
    __slots__ = ("failures", "opened_at", "probe_at", "limited", "overloaded")

    def __init__(self) -> None:
        self.failures = 0
        self.opened_at: float | None = None
        self.probe_at: float | None = None
        self.limited = True  # every failure since the last success was the provider's rate limit (429)
        self.overloaded = True  # ... or its overload (a 429, 503 or 529: `UpstreamError.overloaded`)


class Breakers:
    """The breakers of every deployment this process has called, by `Target.label`."""

    def __init__(self, threshold: int = 5, cooldown: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clock = clock
        self._states: dict[str, _State] = {}

    def state(self, label: str) -> str:
        """`closed`, `open` or `half-open`."""
        s = self._states.get(label)
        if s is None or s.opened_at is None:
            return "closed"
        return "open" if self.clock() - s.opened_at < self.cooldown else "half-open"

    def shown(self, label: str) -> str:
        """`state` as `/v1/route` and `route explain` show it: `probing` for a half-open breaker whose one probe is
        under way, as every request passes the deployment over then (said to be `half-open`, it seemed one may probe
        it, while one with nothing else to try was refused)."""
        state = self.state(label)
        return "probing" if state == "half-open" and self.gate(label) is None else state

    def allow(self, label: str) -> bool:
        """Whether to send to this deployment now; a half-open breaker lets one probe through, which this takes: call
        it once the request goes out (`gate` says beforehand whether it may)."""
        state = self.state(label)
        if state == "closed":
            return True
        if state == "open":
            return False
        s = self._states[label]
        now = self.clock()
        # A probe whose request never reported back (cancelled) must not hold the breaker shut forever.
        if s.probe_at is not None and now - s.probe_at < self.cooldown:
            return False
        s.probe_at = now
        return True

    def forgo(self, label: str) -> None:
        """Give back the probe `allow` took for a request that never went out (cut while its connection opened): the
        next request may take it."""
        s = self._states.get(label)
        if s is not None:
            s.probe_at = None

    def gate(self, label: str) -> str | None:
        """Whether a request may try this deployment now, taking nothing: `closed`, or `half-open` with its one probe
        free, which `allow` takes only once something is sent (a request passed over on the way, as `=unsupported`,
        for its fallback's own limit or its deadline, leaves the probe to the next; taken first, it would hold
        the deployment shut for a cooldown with nothing sent to it); None while it is passed over (open, or its probe
        under way). One read for a closed breaker, as `allow`'s."""
        s = self._states.get(label)
        if s is None or s.opened_at is None:
            return "closed"
        now = self.clock()
        if now - s.opened_at < self.cooldown:
            return None
        if s.probe_at is not None and now - s.probe_at < self.cooldown:
            return None
        return "half-open"

    def available(self, label: str) -> bool:
        """Whether `allow` would let a request through now, without taking the probe: closed, or half-open with
        no probe under way."""
        return self.gate(label) is not None

    def wait(self, label: str) -> float:
        """Seconds until this deployment may be tried again: until its open breaker half-opens, or `PROBING_WAIT_S`
        while its half-open breaker's probe is under way; 0 when it may be tried now."""
        if self.available(label):
            return 0.0
        opened_at = self._states[label].opened_at
        if opened_at is None or self.state(label) == "half-open":  # (None: closed, so available above)
            return PROBING_WAIT_S
        return max(0.0, opened_at + self.cooldown - self.clock())

    def rate_limited(self, label: str) -> bool:
        """Whether the failures that opened this deployment's breaker were all its provider's 429s: skipping it
        then is being rate-limited by it, for what the client is told."""
        s = self._states.get(label)
        return s is not None and s.limited

    def overloaded(self, label: str) -> bool:
        """Whether the failures that opened this deployment's breaker were all its provider saying it is overloaded
        (`failure`'s `overloaded`): skipping it then is for an overload, which Anthropic's API names
        `overloaded_error`, and Claude Code switches to its fallback model on; not for a deployment that broke."""
        s = self._states.get(label)
        return s is not None and s.overloaded

    def answered(self, label: str) -> None:
        """A stream's first event: the deployment answers, so its open (or half-open) breaker closes, its probe over.
        Whether it answered well is told at the stream's end (`success`, or `failure` for an error part way): the
        failures before it still count, so a deployment failing every stream part way opens its breaker after
        `threshold` of them, and a probe failing part way opens it again at once."""
        s = self._states.get(label)
        if s is not None:
            s.opened_at, s.probe_at = None, None

    def success(self, label: str) -> None:
        s = self._states.get(label)
        if s is not None:
            s.failures, s.opened_at, s.probe_at, s.limited, s.overloaded = 0, None, None, True, True

    def failure(self, label: str, limited: bool = False, overloaded: bool = False) -> None:
        """A retryable failure (`limited`: the provider's 429; `overloaded`: its saying it is overloaded, a 429
        among such answers)."""
        s = self._states.setdefault(label, _State())
        s.failures += 1
        s.probe_at = None
        overloaded = overloaded or limited
        # A failure that reopens an open breaker (its probe's) says what it is now; before it opened, every one counts.
        if s.opened_at is not None:
            s.limited, s.overloaded = limited, overloaded
        else:
            s.limited, s.overloaded = s.limited and limited, s.overloaded and overloaded
        if s.opened_at is not None or s.failures >= self.threshold:
            s.opened_at = self.clock()


class CountBreakers:
    """The breakers token counts (`/v1/messages/count_tokens`) are judged on, each deployment's apart from the one its
    requests are: a provider limits its counting apart from its other calls (Anthropic's count requests a minute), so
    what a count meets says nothing of how the deployment answers messages. On the deployments' own breakers, five
    counts refused by Anthropic's count limit would shut a deployment to `/v1/messages` for every key for a cooldown,
    and a count answered would close the breaker of a deployment that fails every message. A count still goes
    to no deployment a request would not be sent: one whose own breaker is open, or half-open with its probe taken,
    is passed over; its probe is left to a request, which a count neither takes nor reports on."""

    def __init__(self, deployments: Breakers) -> None:
        self.deployments = deployments
        # (the deployments' clock read through, so that a clock set on them is the counts' too)
        self.counts = Breakers(deployments.threshold, deployments.cooldown, lambda: deployments.clock())

    def gate(self, label: str) -> str | None:
        """`Breakers.gate` of the counts' own breaker, None while the deployment's is passed over."""
        return self.counts.gate(label) if self.deployments.available(label) else None

    def available(self, label: str) -> bool:
        return self.gate(label) is not None

    def allow(self, label: str) -> bool:
        """`Breakers.allow` of the counts' own breaker (its probe taken there) where the deployment's lets a request
        through, taking nothing of it."""
        return self.deployments.available(label) and self.counts.allow(label)

    def rate_limited(self, label: str) -> bool:
        """Of the breaker that passes the deployment over: the deployment's own, else the counts'."""
        if not self.deployments.available(label):
            return self.deployments.rate_limited(label)
        return self.counts.rate_limited(label)

    def forgo(self, label: str) -> None:
        self.counts.forgo(label)

    def success(self, label: str) -> None:
        self.counts.success(label)

    def failure(self, label: str, limited: bool = False, overloaded: bool = False) -> None:
        self.counts.failure(label, limited, overloaded)
