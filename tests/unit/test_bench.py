"""The pure parts of `dynq bench`: YCSB's key generators and the latency histogram."""

from __future__ import annotations

import asyncio
import collections
import random

import pytest

from dynq.bench import (WORKLOADS, Arrivals, Histogram, OpenLoopStats, Pacer, ScrambledZipfian, Uniform, Zipfian,
                        fnv1a_64, key_name, open_loop)


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
    assert WORKLOADS["w"] == {"insert": 1.0}
    assert key_name(42) == b"user0000000042"


# --- open loop: the schedule and the pacer, without sockets ---------------------------------


def test_fixed_arrivals_are_exactly_one_interval_apart() -> None:
    """A fixed schedule at 200/s puts the i-th request at i/200 s, with no drift."""
    a = Arrivals(200.0, "fixed")
    times = [a.next() for _ in range(1001)]
    assert times[0] == 0.0 and times[1] == pytest.approx(0.005) and times[1000] == pytest.approx(5.0, abs=1e-12)


def test_poisson_arrivals_have_the_target_mean_and_vary() -> None:
    """Poisson gaps average 1/rate and are exponential (about 63% shorter than the mean)."""
    a = Arrivals(1000.0, "poisson", random.Random(5))
    times = [a.next() for _ in range(20_000)]
    gaps = [b - a_ for a_, b in zip([0.0] + times, times)]
    assert sum(gaps) / len(gaps) == pytest.approx(0.001, rel=0.03)
    assert 0.6 < sum(g < 0.001 for g in gaps) / len(gaps) < 0.66
    assert all(g >= 0 for g in gaps)


def test_arrivals_reject_a_bad_rate_or_kind() -> None:
    with pytest.raises(ValueError):
        Arrivals(0.0)
    with pytest.raises(ValueError):
        Arrivals(10.0, "bursty")


def test_pacer_issues_what_is_due_and_stops_at_the_duration() -> None:
    """At 100/s fixed for 1 s: nothing before its time, everything due at once after a stall,
    and exactly 100 requests in all (none at or after the duration)."""
    p = Pacer(Arrivals(100.0, "fixed"), cap=1000, duration=1.0)
    assert p.poll(0.0) == [0.0]
    assert p.poll(0.0099) == []
    assert p.poll(0.0301) == pytest.approx([0.01, 0.02, 0.03])  # a stall: all due ones now, oldest first
    assert p.max_lag == pytest.approx(0.0201)
    issued = 4 + len(p.poll(5.0))
    assert issued == 100 and p.next_at is None and p.late == 0
    for _ in range(100):
        p.done()
    assert p.finished


def test_pacer_cap_makes_requests_wait_and_counts_each_late_once() -> None:
    """Cap 2: the third due request waits in the backlog (late, once, however often polled)
    and is issued, with its original intended time, when a slot frees."""
    p = Pacer(Arrivals(1000.0, "fixed"), cap=2, duration=1.0, max_ops=4)
    assert p.poll(0.0025) == pytest.approx([0.0, 0.001])
    assert p.late == 1 and list(p.backlog) == pytest.approx([0.002])
    assert p.poll(0.0026) == [] and p.late == 1  # still waiting: not counted again
    p.done()
    assert p.poll(0.004) == pytest.approx([0.002])  # the waiting one first
    assert p.late == 2  # the 4th (due at 0.003) found the cap reached too
    p.done()
    assert p.poll(0.004) == pytest.approx([0.003])
    assert p.next_at is None and not p.finished  # max_ops reached; two still in flight
    p.done()
    p.done()
    assert p.finished
    with pytest.raises(RuntimeError):
        p.done()


def test_open_loop_measures_latency_from_the_intended_start() -> None:
    """Driven by a fake clock: a request issued late (the loop was stalled) carries the
    stall in its latency; every request is issued once and the run ends by itself."""
    fake = [0.0]

    def clock() -> float:
        return fake[0]

    seen: list[tuple[str, float]] = []
    issued: list[int] = []

    async def issue(i: int) -> str | None:
        issued.append(i)
        if i == 0:
            fake[0] += 0.050  # the first request (or the loop) stalls for 50 ms
        await asyncio.sleep(0)
        return "op" if i % 2 == 0 else None  # odd ones "fail" (counted by issue itself)

    async def main() -> OpenLoopStats:
        pacer = Pacer(Arrivals(100.0, "fixed"), cap=8, duration=0.04)  # due at 0, 10, 20, 30 ms
        return await open_loop(issue, pacer, lambda label, s: seen.append((label, s)), bound_s=10.0, clock=clock)

    stats = asyncio.run(main())
    assert sorted(issued) == [0, 1, 2, 3] and stats.issued == 4 and stats.unfinished == 0
    assert [label for label, _ in seen] == ["op", "op"]
    lat = dict(enumerate(s for _, s in seen))
    assert lat[0] == pytest.approx(0.050)  # request 0: intended at 0, done at 50 ms
    assert lat[1] == pytest.approx(0.030)  # request 2: intended at 20 ms, issued after the stall
    assert stats.max_lag_s == pytest.approx(0.040)  # request 1: intended at 10 ms, issued at 50 ms


def test_open_loop_hard_bound_cancels_what_still_runs() -> None:
    """A request that never returns is cancelled at the bound and counted unfinished."""
    async def issue(i: int) -> str | None:
        await asyncio.sleep(3600)
        return "op"

    async def main() -> OpenLoopStats:
        return await open_loop(issue, Pacer(Arrivals(1000.0, "fixed"), cap=4, duration=0.01),
                               lambda label, s: None, bound_s=0.2)

    stats = asyncio.run(main())
    assert stats.unfinished == 4 and stats.late > 0
