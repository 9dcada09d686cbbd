"""`dynq bench`: YCSB's core workloads against a running cluster.

    workload  operations                          (YCSB core workloads, Cooper et al., SoCC 2010)
    a         50% read, 50% update                 update heavy
    b         95% read,  5% update                 read mostly
    c         100% read                            read only
    f         50% read, 50% read-modify-write      RMW: read, then write back with the context

Keys ``user0000000000`` .. are chosen by YCSB's *scrambled zipfian* (theta 0.99, the popular
keys spread over the key space by an FNV-1a hash) or uniformly. A load phase first inserts
every record (concurrently) unless ``--no-load``.

An *update* in a Dynamo store needs a context, or it becomes a sibling of the value it
meant to replace (YCSB's Riak binding avoids the question by turning siblings off; dynq
cannot). The bench keeps the context of the last read of each key and updates with it
(once: a context does not cover the write made with it); an update of a key without a
cached context reads it first (inside the update's latency,
counted as ``updates_read_first``), so runs do not pile up siblings. A read-modify-write
always reads first. Reads that saw siblings (true concurrency) are counted.

Latencies go into a log-bucketed histogram (HdrHistogram-style: 128 sub-buckets per power
of two of microseconds, under 1% error), reported as p50/p99/p99.9 per operation. The
engine is bounded by ``duration`` and by ``max_ops``; requests that fail are counted per
error code and are not in the latency figures.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from dynq_client.client import AsyncClient
from dynq_client.errors import DynqError
from dynq_client.security import CurveKeys

WORKLOADS: dict[str, dict[str, float]] = {
    "a": {"read": 0.5, "update": 0.5},
    "b": {"read": 0.95, "update": 0.05},
    "c": {"read": 1.0},
    "f": {"read": 0.5, "rmw": 0.5},
}
ZIPFIAN_THETA = 0.99  # YCSB's ZIPFIAN_CONSTANT
_SUB_BITS = 7  # 128 sub-buckets per power of two: relative error < 2**-7


def key_name(index: int) -> bytes:
    return b"user%010d" % index


def fnv1a_64(value: int) -> int:
    """FNV-1a over the 8 little-endian bytes of ``value`` (YCSB's Utils.fnvhash64 shape)."""
    h = 0xCBF29CE484222325
    for _ in range(8):
        h ^= value & 0xFF
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        value >>= 8
    return h


class Zipfian:
    """Gray et al.'s zipfian generator ("Quickly generating billion-record synthetic
    databases", SIGMOD 1994), as in YCSB's ZipfianGenerator: item 0 most popular."""

    def __init__(self, items: int, theta: float = ZIPFIAN_THETA, rng: random.Random | None = None) -> None:
        if items < 1:
            raise ValueError("items must be at least 1")
        self.items = items
        self.theta = theta
        self.rng = rng or random.Random()
        self.zetan = math.fsum(1.0 / (i ** theta) for i in range(1, items + 1))
        zeta2 = 1.0 + 0.5 ** theta
        self.alpha = 1.0 / (1.0 - theta)
        self.eta = (1 - (2.0 / items) ** (1 - theta)) / (1 - zeta2 / self.zetan) if items > 1 else 0.0

    def next(self) -> int:
        u = self.rng.random()
        uz = u * self.zetan
        if uz < 1.0:
            return 0
        if uz < 1.0 + 0.5 ** self.theta:
            return min(1, self.items - 1)
        return min(self.items - 1, int(self.items * (self.eta * u - self.eta + 1) ** self.alpha))


class ScrambledZipfian:
    """Zipfian popularity with the popular items scattered over the key space (YCSB's
    ScrambledZipfianGenerator): hot keys do not cluster on one partition."""

    def __init__(self, items: int, rng: random.Random | None = None) -> None:
        self.items = items
        self.zipf = Zipfian(items, rng=rng)

    def next(self) -> int:
        return fnv1a_64(self.zipf.next()) % self.items


class Uniform:
    def __init__(self, items: int, rng: random.Random | None = None) -> None:
        self.items = items
        self.rng = rng or random.Random()

    def next(self) -> int:
        return self.rng.randrange(self.items)


class Histogram:
    """Latency histogram in microseconds with logarithmic buckets (HdrHistogram's layout:
    exact below 128 us, then 128 linear sub-buckets per power of two)."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total_us = 0
        self.max_us = 0

    @staticmethod
    def _index(us: int) -> int:
        if us < (1 << _SUB_BITS):
            return us
        shift = us.bit_length() - _SUB_BITS - 1
        return ((shift + 1) << _SUB_BITS) + ((us >> shift) & ((1 << _SUB_BITS) - 1))

    @staticmethod
    def _upper(index: int) -> int:
        """The largest value that falls in bucket ``index``."""
        if index < (1 << _SUB_BITS):
            return index
        shift = (index >> _SUB_BITS) - 1
        sub = index & ((1 << _SUB_BITS) - 1)
        return (((1 << _SUB_BITS) | sub) << shift) + (1 << shift) - 1

    def record(self, seconds: float) -> None:
        us = max(0, int(seconds * 1_000_000))
        i = self._index(us)
        self.counts[i] = self.counts.get(i, 0) + 1
        self.count += 1
        self.total_us += us
        if us > self.max_us:
            self.max_us = us

    def merge(self, other: Histogram) -> None:
        for i, n in other.counts.items():
            self.counts[i] = self.counts.get(i, 0) + n
        self.count += other.count
        self.total_us += other.total_us
        self.max_us = max(self.max_us, other.max_us)

    def percentile_us(self, q: float) -> int:
        """The smallest bucket bound with at least ``q`` (0..1) of the samples at or below it."""
        if not self.count:
            return 0
        rank = max(1, math.ceil(q * self.count))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(self._upper(i), self.max_us)
        return self.max_us

    def summary(self) -> dict[str, float]:
        ms = 1000.0
        return {
            "count": self.count,
            "mean_ms": round(self.total_us / self.count / ms, 3) if self.count else 0.0,
            "p50_ms": self.percentile_us(0.50) / ms,
            "p99_ms": self.percentile_us(0.99) / ms,
            "p999_ms": self.percentile_us(0.999) / ms,
            "max_ms": self.max_us / ms,
        }


@dataclass
class OpStats:
    latency: Histogram = field(default_factory=Histogram)
    errors: dict[str, int] = field(default_factory=dict)

    def error(self, exc: DynqError) -> None:
        self.errors[exc.code] = self.errors.get(exc.code, 0) + 1


@dataclass
class BenchConfig:
    workload: str = "a"
    records: int = 100_000
    duration: float = 30.0
    concurrency: int = 32
    value_size: int = 1024
    r: int | None = None
    w: int | None = None
    distribution: str = "zipfian"
    load: bool = True
    max_ops: int | None = None  # stop after this many operations (besides the duration)
    timeout: float = 5.0  # client timeout per request
    seed: int | None = None  # for the key choice and op mix


@dataclass
class BenchResult:
    config: BenchConfig
    load: dict[str, Any] | None = None
    ops: dict[str, OpStats] = field(default_factory=dict)
    elapsed: float = 0.0
    siblings_seen: int = 0  # reads that returned more than one value
    updates_read_first: int = 0  # updates of a key with no cached context: read it first
    not_found: int = 0  # reads of keys that were never loaded

    @property
    def total_ops(self) -> int:
        return sum(s.latency.count for s in self.ops.values())

    @property
    def total_errors(self) -> int:
        return sum(sum(s.errors.values()) for s in self.ops.values())

    def to_json(self) -> dict[str, Any]:
        c = self.config
        return {
            "workload": c.workload, "records": c.records, "duration_s": round(self.elapsed, 3),
            "concurrency": c.concurrency, "value_size": c.value_size, "r": c.r, "w": c.w,
            "distribution": c.distribution, "load": self.load,
            "total": {"ops": self.total_ops, "ops_s": round(self.total_ops / self.elapsed, 1) if self.elapsed else 0.0,
                      "errors": self.total_errors},
            "ops": {name: {**s.latency.summary(),
                           "ops_s": round(s.latency.count / self.elapsed, 1) if self.elapsed else 0.0,
                           "errors": dict(s.errors)} for name, s in self.ops.items()},
            "siblings_seen": self.siblings_seen, "not_found": self.not_found,
            "updates_read_first": self.updates_read_first,
        }

    def text(self) -> str:
        j = self.to_json()
        lines = [f"workload {j['workload'].upper()}: {j['records']} records, {j['value_size']} B values, "
                 f"{j['concurrency']} in flight, {j['distribution']}, R={j['r'] or 'default'} W={j['w'] or 'default'}"]
        if self.load is not None:
            lines.append(f"load: {self.load['ops']} records in {self.load['seconds']:.1f} s "
                         f"({self.load['ops_s']:.0f}/s, {self.load['errors']} errors)")
        lines.append(f"run: {j['total']['ops']} ops in {j['duration_s']:.1f} s = {j['total']['ops_s']:.0f} ops/s, "
                     f"{j['total']['errors']} errors")
        lines.append(f"  {'op':<8} {'ops/s':>9} {'count':>9} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} {'max ms':>8}  errors")
        for name, s in j["ops"].items():
            errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "-"
            lines.append(f"  {name:<8} {s['ops_s']:>9.0f} {s['count']:>9} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} "
                         f"{s['p999_ms']:>9.2f} {s['max_ms']:>8.2f}  {errors}")
        lines.append(f"reads that saw siblings: {self.siblings_seen}; reads of missing keys: {self.not_found}; "
                     f"updates that read first (no context yet): {self.updates_read_first}")
        return "\n".join(lines)


Progress = Callable[[str], None]


async def run_bench(seeds: list[str], config: BenchConfig, progress: Progress | None = None,
                    curve: CurveKeys | None = None) -> BenchResult:
    """Load (unless told not to), then run the workload for ``config.duration`` seconds;
    ``curve``: the keys to connect with (the CLI's, for a CURVE cluster)."""
    if config.workload not in WORKLOADS:
        raise ValueError(f"unknown workload {config.workload!r} (choose from {', '.join(WORKLOADS)})")
    if config.records < 1 or config.concurrency < 1 or config.duration <= 0 or config.value_size < 0:
        raise ValueError("records and concurrency must be positive, duration > 0, value size >= 0")
    rng = random.Random(config.seed)
    result = BenchResult(config)
    async with AsyncClient(seeds, timeout=config.timeout, curve=curve) as db:
        if config.load:
            result.load = await _load(db, config, progress)
        result.ops = {name: OpStats() for name in WORKLOADS[config.workload]}
        await _run(db, config, rng, result, progress)
    return result


def _value(size: int, base: bytes) -> bytes:
    return os.urandom(min(8, size)) + base[: max(0, size - 8)]


async def _load(db: AsyncClient, config: BenchConfig, progress: Progress | None) -> dict[str, Any]:
    base = os.urandom(config.value_size)
    next_index = iter(range(config.records))
    errors: dict[str, int] = {}
    done = 0
    start = time.perf_counter()

    async def worker() -> None:
        nonlocal done
        for i in next_index:
            try:
                await db.put(key_name(i), _value(config.value_size, base), w=config.w)
                done += 1
            except DynqError as exc:
                errors[exc.code] = errors.get(exc.code, 0) + 1

    async def report() -> None:
        while True:
            await asyncio.sleep(1.0)
            if progress:
                elapsed = time.perf_counter() - start
                progress(f"load: {done}/{config.records} records, {done / elapsed:.0f}/s")

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(worker() for _ in range(config.concurrency)))
    finally:
        reporter.cancel()
    seconds = time.perf_counter() - start
    return {"ops": done, "seconds": round(seconds, 3), "ops_s": round(done / seconds, 1) if seconds else 0.0,
            "errors": sum(errors.values()), "error_codes": errors}


async def _run(db: AsyncClient, config: BenchConfig, rng: random.Random, result: BenchResult,
               progress: Progress | None) -> None:
    mix = WORKLOADS[config.workload]
    names, weights = list(mix), list(mix.values())
    keys: ScrambledZipfian | Uniform = (
        ScrambledZipfian(config.records, random.Random(rng.getrandbits(64)))
        if config.distribution == "zipfian" else Uniform(config.records, random.Random(rng.getrandbits(64))))
    base = os.urandom(config.value_size)
    contexts: dict[bytes, bytes] = {}  # key -> context of its last read (updates carry it)
    limit = config.max_ops if config.max_ops is not None else 2**62
    started = 0
    start = time.perf_counter()
    deadline = start + config.duration

    async def read(key: bytes) -> bytes:
        got = await db.get(key, r=config.r)
        if len(got.values) > 1:
            result.siblings_seen += 1
        if not got.found:
            result.not_found += 1
        contexts[key] = got.context
        return got.context

    async def worker(wrng: random.Random) -> None:
        nonlocal started
        while started < limit and time.perf_counter() < deadline:
            started += 1
            op = wrng.choices(names, weights)[0]
            key = key_name(keys.next())
            stats = result.ops[op]
            t0 = time.perf_counter()
            try:
                if op == "read":
                    await read(key)
                elif op == "update":
                    context = contexts.get(key)
                    if context is None:
                        result.updates_read_first += 1
                        context = await read(key)
                    contexts.pop(key, None)  # it does not cover this write: the next update reads anew
                    await db.put(key, _value(config.value_size, base), context=context, w=config.w)
                else:  # read-modify-write
                    context = await read(key)
                    contexts.pop(key, None)
                    await db.put(key, _value(config.value_size, base), context=context, w=config.w)
            except DynqError as exc:
                stats.error(exc)
                continue
            stats.latency.record(time.perf_counter() - t0)

    async def report() -> None:
        last_ops, last_t = 0, start
        while True:
            await asyncio.sleep(1.0)
            now = time.perf_counter()
            ops = result.total_ops
            if progress:
                p99 = " ".join(f"{n} p99 {s.latency.percentile_us(0.99) / 1000:.1f}ms" for n, s in result.ops.items())
                progress(f"[{now - start:5.1f}s] {ops} ops, {(ops - last_ops) / (now - last_t):.0f} ops/s, "
                         f"{result.total_errors} errors, {p99}")
            last_ops, last_t = ops, now

    reporter = asyncio.create_task(report())
    try:
        await asyncio.gather(*(worker(random.Random(rng.getrandbits(64))) for _ in range(config.concurrency)))
    finally:
        reporter.cancel()
        result.elapsed = time.perf_counter() - start
