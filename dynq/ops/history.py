"""The last minutes of a node, for the console's charts: a ring buffer of samples.

Every ``interval_s`` the node takes one :class:`Point` from its counters: requests per
second and the p99 latency *of that interval* per op (from the difference of the latency
histograms, so a slow minute an hour ago does not flatten today's chart), error replies,
sibling warnings and writes refused for size or siblings, hints pending. ``capacity``
points are kept (default 120 x 5 s = 10 minutes); the oldest falls out. Pure: the caller
passes the clock and the counters (:meth:`History.sample`), so it is tested without a node.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .metrics import BUCKETS, Histogram

DEFAULT_INTERVAL_S = 5.0
DEFAULT_CAPACITY = 120


def quantile_of(counts: list[int], q: float) -> float | None:
    """Upper bound (seconds) of the bucket holding the q-quantile of per-bucket counts;
    None for no observations, inf past the last bound."""
    total = sum(counts)
    if not total:
        return None
    rank, seen = q * total, 0
    for i, n in enumerate(counts):
        seen += n
        if seen >= rank:
            return BUCKETS[i] if i < len(BUCKETS) else float("inf")
    return float("inf")


@dataclass(frozen=True)
class Point:
    """One interval of one node."""

    t: float  # wall clock (s) at the end of the interval
    ops_per_s: dict[str, float]  # op -> requests/s (ops that had requests)
    p99_ms: dict[str, float]  # op -> p99 latency of the interval (bucket bound, ms; -1: past 10 s)
    errors: int  # error replies in the interval
    sibling_warnings: int  # writes that left a key with more than limits.sibling_warn siblings
    refused_siblings: int  # writes refused: max_siblings
    refused_size: int  # writes refused: value or object too large
    hints_pending: int  # at the end of the interval

    def to_wire(self) -> dict[str, Any]:
        return {"t": round(self.t, 3), "ops_per_s": self.ops_per_s, "p99_ms": self.p99_ms, "errors": self.errors,
                "sibling_warnings": self.sibling_warnings, "refused_siblings": self.refused_siblings,
                "refused_size": self.refused_size, "hints_pending": self.hints_pending}


class History:
    """A bounded ring of :class:`Point` (implements the console's ``history`` op)."""

    def __init__(self, interval_s: float = DEFAULT_INTERVAL_S, capacity: int = DEFAULT_CAPACITY) -> None:
        self.interval_s = interval_s
        self.points: collections.deque[Point] = collections.deque(maxlen=capacity)
        self._last_t: float | None = None  # time of the previous sample (None: none yet)
        self._last_hist: dict[str, list[int]] = {}  # op -> bucket counts at the previous sample
        self._last_counters: dict[str, int] = {}  # counter name -> value at the previous sample

    def sample(self, now: float, by_op: Mapping[str, Histogram], errors: Mapping[str, int],
               sibling_warnings: int, hints_pending: int) -> Point | None:
        """Take one sample; the first only sets the baseline (returns None)."""
        counters = {"errors": sum(errors.values()), "sibling_warnings": sibling_warnings,
                    "refused_siblings": errors.get("siblings", 0),
                    "refused_size": errors.get("value_too_large", 0) + errors.get("key_too_large", 0)}
        hist = {op: list(h.counts) for op, h in by_op.items()}
        last_t, last_hist, last_counters = self._last_t, self._last_hist, self._last_counters
        self._last_t, self._last_hist, self._last_counters = now, hist, counters
        if last_t is None:
            return None
        elapsed = max(now - last_t, 1e-6)
        ops: dict[str, float] = {}
        p99: dict[str, float] = {}
        for op, counts in sorted(hist.items()):
            before = last_hist.get(op, [0] * len(counts))
            delta = [max(0, a - b) for a, b in zip(counts, before)]
            n = sum(delta)
            if not n:
                continue
            ops[op] = round(n / elapsed, 2)
            q = quantile_of(delta, 0.99)
            assert q is not None
            p99[op] = -1.0 if q == float("inf") else round(q * 1000, 3)
        moved = {k: max(0, v - last_counters.get(k, 0)) for k, v in counters.items()}
        point = Point(now, ops, p99, errors=moved["errors"], sibling_warnings=moved["sibling_warnings"],
                      refused_siblings=moved["refused_siblings"], refused_size=moved["refused_size"],
                      hints_pending=hints_pending)
        self.points.append(point)
        return point

    def to_wire(self) -> dict[str, Any]:
        return {"interval_s": self.interval_s, "capacity": self.points.maxlen,
                "points": [pt.to_wire() for pt in self.points]}
