"""Phi-accrual failure detection from gossip heartbeats (Hayashibara et al., as in Akka).

Instead of a fixed timeout, each peer's suspicion level phi grows with the time since its
last heartbeat, measured against the heartbeat intervals seen so far (a normal
distribution of mean and standard deviation over a sliding window): phi = 1 means a
1-in-10 chance the peer is still alive and merely late, phi = 8 one in 10^8. A jittery
link widens the distribution and raises the time to suspicion by itself.

Pure: the caller passes the clock. ``acceptable_pause`` is added to the mean so that a
GC pause or a busy loop of that length does not count as death.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

_LN10 = math.log(10)


@dataclass
class _History:
    intervals: deque[float]
    last: float
    total: float = 0.0
    squares: float = 0.0

    def add(self, interval: float, window: int) -> None:
        if len(self.intervals) == window:
            old = self.intervals.popleft()
            self.total -= old
            self.squares -= old * old
        self.intervals.append(interval)
        self.total += interval
        self.squares += interval * interval


@dataclass
class PhiAccrualDetector:
    """Suspicion per peer name from heartbeat arrival times (seconds, monotonic)."""

    expected_interval: float  # the gossip interval: seeds the history before data arrives
    threshold: float = 8.0
    window: int = 100
    min_std: float = 0.0  # default: a quarter of the expected interval
    acceptable_pause: float = 0.0  # default: the expected interval
    _peers: dict[str, _History] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_std <= 0:
            self.min_std = self.expected_interval / 4
        if self.acceptable_pause <= 0:
            self.acceptable_pause = self.expected_interval

    def heartbeat(self, name: str, now: float) -> None:
        history = self._peers.get(name)
        if history is None:
            # Two assumed intervals around the expected one, so the first estimate is sane.
            history = self._peers[name] = _History(deque(), now)
            for guess in (self.expected_interval * 0.9, self.expected_interval * 1.1):
                history.add(guess, self.window)
            return
        interval = now - history.last
        history.last = now
        if interval > 0:
            history.add(interval, self.window)

    def phi(self, name: str, now: float) -> float:
        """Suspicion of ``name``; 0.0 for a peer never heard from (nothing to judge)."""
        history = self._peers.get(name)
        if history is None:
            return 0.0
        count = len(history.intervals)
        mean = history.total / count
        variance = max(history.squares / count - mean * mean, 0.0)
        std = max(math.sqrt(variance), self.min_std)
        elapsed = now - history.last
        y = (elapsed - mean - self.acceptable_pause) / std
        # phi = -log10(P(a heartbeat comes later still)), with Akka's logistic approximation
        # of the normal tail, P = 1 / (1 + exp(z)); computed so that it never overflows.
        z = y * (1.5976 + 0.070566 * y * y)
        if z >= 0:
            return (z + math.log1p(math.exp(-z))) / _LN10
        return math.log1p(math.exp(z)) / _LN10

    def is_suspect(self, name: str, now: float) -> bool:
        return self.phi(name, now) > self.threshold

    def forget(self, name: str) -> None:
        self._peers.pop(name, None)

    def known(self) -> list[str]:
        return sorted(self._peers)

    def last_heard(self, name: str) -> float | None:
        history = self._peers.get(name)
        return None if history is None else history.last
