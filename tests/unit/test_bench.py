"""The pure parts of `dynq bench`: YCSB's key generators and the latency histogram."""

from __future__ import annotations

import collections
import random

import pytest

from dynq.bench import WORKLOADS, Histogram, ScrambledZipfian, Uniform, Zipfian, fnv1a_64, key_name


def test_zipfian_is_skewed_like_ycsb() -> None:
    """theta 0.99: item 0 is the most popular, by far, and the top 1% of items draws about
    half of the requests; every draw is in range."""
    z = Zipfian(10_000, rng=random.Random(7))
    draws = [z.next() for _ in range(50_000)]
    counts = collections.Counter(draws)
    assert counts.most_common(1)[0][0] == 0
    assert all(0 <= d < 10_000 for d in draws)
    top = sum(n for i, n in counts.items() if i < 100)
    assert 0.4 < top / len(draws) < 0.7


def test_scrambled_zipfian_spreads_the_hot_keys() -> None:
    """Same skew, but the popular items are not the low-numbered ones."""
    z = ScrambledZipfian(10_000, rng=random.Random(7))
    counts = collections.Counter(z.next() for _ in range(50_000))
    hottest = [i for i, _ in counts.most_common(10)]
    assert counts.most_common(1)[0][1] > 50_000 / 30  # still hot
    assert max(hottest) > 1000  # scattered over the key space
    assert fnv1a_64(0) != fnv1a_64(1)


def test_uniform_covers_the_key_space() -> None:
    u = Uniform(100, random.Random(1))
    assert len({u.next() for _ in range(5000)}) == 100


def test_histogram_percentiles_within_one_percent() -> None:
    """Log buckets: every percentile within 1% of the exact one, max exact."""
    rng = random.Random(3)
    samples = [rng.lognormvariate(-6, 1.0) for _ in range(20_000)]  # ~2.5 ms median
    h = Histogram()
    for s in samples:
        h.record(s)
    ordered = sorted(int(s * 1_000_000) for s in samples)
    for q in (0.5, 0.99, 0.999):
        exact = ordered[max(0, int(q * len(ordered) + 0.999999) - 1)]
        assert h.percentile_us(q) == pytest.approx(exact, rel=0.01, abs=1)
    assert h.max_us == ordered[-1]
    other = Histogram()
    other.record(1.0)
    h.merge(other)
    assert h.count == 20_001 and h.percentile_us(1.0) == 1_000_000


def test_histogram_small_values_are_exact() -> None:
    h = Histogram()
    for us in (5, 5, 7, 100):
        h.record(us / 1_000_000)
    assert h.percentile_us(0.5) == 5 and h.percentile_us(0.75) == 7 and h.percentile_us(1.0) == 100


def test_workload_mixes_are_ycsbs() -> None:
    assert WORKLOADS["a"] == {"read": 0.5, "update": 0.5}
    assert WORKLOADS["b"] == {"read": 0.95, "update": 0.05}
    assert WORKLOADS["c"] == {"read": 1.0}
    assert WORKLOADS["f"] == {"read": 0.5, "rmw": 0.5}
    assert key_name(42) == b"user0000000042"
