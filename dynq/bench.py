"""`dynq bench`: YCSB's core workloads against a running cluster.

    workload  operations                          (YCSB core workloads, Cooper et al., SoCC 2010)
    a         50% read, 50% update                 update heavy
    b         95% read,  5% update                 read mostly
    c         100% read                            read only
    f         50% read, 50% read-modify-write      RMW: read, then write back with the context
    w         100% insert                          write only: puts of new keys (no context needed)

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

**Open loop** (``target_rate``, `dynq bench --target-rate OPS`): instead of ``concurrency``
workers each waiting for its previous request (closed loop, which slows down with the
system and so hides every stall), requests are issued on a schedule fixed in advance:
Poisson arrivals by default (exponential gaps of mean 1/rate: independent users; the
usual choice for open-loop load), or a fixed interval. Each request's latency is measured
from its *intended* start, so a request that waited behind a stall - in the cluster, in
this process's event loop, or for a free slot - carries that wait (Gil Tene's
"coordinated omission"). ``concurrency`` becomes a cap on requests in flight: a request
whose time has come while the cap is reached waits for a slot (latency still from its
intended start) and is counted in ``late``. The pure scheduling is :class:`Arrivals` and
:class:`Pacer`; :func:`open_loop` drives them from the event loop.
"""

from __future__ import annotations

import asyncio
import collections
import math
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from dynq_client.client import AsyncClient
from dynq_client.errors import DynqError
from dynq_client.security import CurveKeys

WORKLOADS: dict[str, dict[str, float]] = {
    "a": {"read": 0.5, "update": 0.5},
    "b": {"read": 0.95, "update": 0.05},
    "c": {"read": 1.0},
    "f": {"read": 0.5, "rmw": 0.5},
    "w": {"insert": 1.0},
}
ARRIVALS = ("poisson", "fixed")
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


class Arrivals:
    """Intended start times of an open-loop run, in seconds from its start.

    ``poisson``: exponential gaps of mean 1/rate (a Poisson process: arrivals independent
    of each other and of how the system is doing); ``fixed``: exactly 1/rate apart."""

    def __init__(self, rate: float, kind: str = "poisson", rng: random.Random | None = None) -> None:
        if not rate > 0:
            raise ValueError("the target rate must be positive")
        if kind not in ARRIVALS:
            raise ValueError(f"unknown arrival process {kind!r} (choose from {', '.join(ARRIVALS)})")
        self.rate = rate
        self.kind = kind
        self.rng = rng or random.Random()
        self.at = 0.0  # the last arrival handed out
        self.count = 0  # arrivals handed out

    def next(self) -> float:
        if self.kind == "fixed":
            self.at = self.count / self.rate  # from the count, not summed: no drift
        else:
            self.at += self.rng.expovariate(self.rate)
        self.count += 1
        return self.at


class Pacer:
    """Which requests of an open-loop schedule to issue when, under a cap on requests in
    flight: pure (the caller passes the time), so it is tested without sockets or a loop.

    ``poll(now)`` returns the intended start times of the requests to issue now, oldest
    first: every arrival due by ``now`` (and before ``duration``, at most ``max_ops`` in
    all), as far as the cap allows; the rest wait in a FIFO backlog for ``done()`` calls.
    A request that could not be issued at its poll because the cap was reached counts once
    in ``late``."""

    def __init__(self, arrivals: Arrivals, cap: int, duration: float, max_ops: int | None = None) -> None:
        if cap < 1 or duration <= 0:
            raise ValueError("the cap must be at least 1 and the duration positive")
        self.arrivals = arrivals
        self.cap = cap  # most requests in flight at once
        self.duration = duration  # no request is scheduled at or after this time
        self.max_ops = max_ops if max_ops is not None else 2**62  # no more requests than this
        self.next_at: float | None = arrivals.next()  # the next arrival not yet due; None: no more
        self.backlog: collections.deque[float] = collections.deque()  # due, waiting for a slot
        self._counted = 0  # backlog entries (from the front) already counted late
        self.scheduled = 0  # arrivals that came due
        self.in_flight = 0  # issued and not done
        self.late = 0  # requests that had to wait for a slot
        self.max_lag = 0.0  # the furthest behind its intended start a request was issued
        self._advance_bound()

    def _advance_bound(self) -> None:
        if self.next_at is not None and (self.next_at >= self.duration or self.scheduled >= self.max_ops):
            self.next_at = None

    def poll(self, now: float) -> list[float]:
        while self.next_at is not None and self.next_at <= now:
            self.backlog.append(self.next_at)
            self.scheduled += 1
            self.next_at = self.arrivals.next()
            self._advance_bound()
        issue: list[float] = []
        while self.backlog and self.in_flight < self.cap:
            intended = self.backlog.popleft()
            issue.append(intended)
            self.in_flight += 1
            self.max_lag = max(self.max_lag, now - intended)
        self._counted = max(0, self._counted - len(issue))
        self.late += len(self.backlog) - self._counted
        self._counted = len(self.backlog)
        return issue

    def done(self) -> None:
        """A request finished (answered or failed): its slot is free."""
        if self.in_flight <= 0:
            raise RuntimeError("done() without a request in flight")
        self.in_flight -= 1

    @property
    def finished(self) -> bool:
        """Every request of the schedule was issued and has finished."""
        return self.next_at is None and not self.backlog and self.in_flight == 0


@dataclass
class OpenLoopStats:
    """What an open-loop run did besides the latencies: how well the schedule was kept."""

    target_rate: float
    arrival: str
    issued: int = 0  # requests issued (all of the schedule, unless the run was cut short)
    late: int = 0  # requests that waited for a slot under the cap
    max_lag_s: float = 0.0  # furthest behind its intended start a request was issued
    unfinished: int = 0  # requests still running at the hard bound (cancelled; not in the figures)
    elapsed: float = 0.0  # seconds from the schedule's start to the last request's end

    def to_json(self) -> dict[str, Any]:
        return {"target_rate": self.target_rate, "arrival": self.arrival, "issued": self.issued,
                "late": self.late, "max_lag_ms": round(self.max_lag_s * 1000, 3),
                "unfinished": self.unfinished, "elapsed_s": round(self.elapsed, 3)}


async def open_loop(issue: Callable[[int], Awaitable[str | None]], pacer: Pacer,
                    on_latency: Callable[[str, float], None], bound_s: float,
                    clock: Callable[[], float] | None = None) -> OpenLoopStats:
    """Run ``pacer``'s schedule: ``issue(i)`` runs the i-th request and returns the label to
    record it under (None: it failed and was counted by ``issue`` itself); ``on_latency``
    gets the label and the latency from the request's intended start.

    Driven by one timer re-armed for the next arrival (not a sleep per request) and by
    completions releasing the backlog. ``bound_s``: hard bound on the whole run; requests
    still running then are cancelled and counted as unfinished. ``clock``: loop time by
    default (monotonic)."""
    loop = asyncio.get_running_loop()
    now_of = clock or loop.time
    t0 = now_of()
    finished: asyncio.Future[None] = loop.create_future()
    tasks: set[asyncio.Task[None]] = set()
    timer: list[asyncio.TimerHandle | None] = [None]
    count = [0]
    closing = [False]  # past the hard bound: cancelled requests must not release new ones
    stats = OpenLoopStats(pacer.arrivals.rate, pacer.arrivals.kind)

    async def one(i: int, intended: float) -> None:
        try:
            label = await issue(i)
            if label is not None:
                on_latency(label, now_of() - t0 - intended)
        finally:
            pacer.done()
            release()

    def release() -> None:
        if closing[0]:
            return
        for intended in pacer.poll(now_of() - t0):
            task = loop.create_task(one(count[0], intended))
            count[0] += 1
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if pacer.finished and not finished.done():
            finished.set_result(None)

    def tick() -> None:
        timer[0] = None
        release()
        if pacer.next_at is not None:
            timer[0] = loop.call_at(loop.time() + max(0.0, pacer.next_at - (now_of() - t0)), tick)

    tick()
    try:
        await asyncio.wait_for(asyncio.shield(finished), bound_s)
    except asyncio.TimeoutError:
        pass
    finally:
        closing[0] = True
        if timer[0] is not None:
            timer[0].cancel()
        stats.unfinished = len(tasks)
        for task in list(tasks):
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
    stats.issued, stats.late, stats.max_lag_s = count[0], pacer.late, pacer.max_lag
    stats.elapsed = now_of() - t0
    return stats


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
    target_rate: float | None = None  # requests/s issued on a schedule (open loop); None: closed loop
    arrival: str = "poisson"  # open loop: "poisson" gaps or a "fixed" interval
    coordination: str = "client"  # reads coordinated by the client, or by a "server" (a replica)
    read_fanout: str = "quorum"  # client-coordinated reads ask R replicas (and hedge), or "all" N


@dataclass
class BenchResult:
    config: BenchConfig
    load: dict[str, Any] | None = None
    ops: dict[str, OpStats] = field(default_factory=dict)
    elapsed: float = 0.0
    siblings_seen: int = 0  # reads that returned more than one value
    updates_read_first: int = 0  # updates of a key with no cached context: read it first
    not_found: int = 0  # reads of keys that were never loaded
    open_loop: OpenLoopStats | None = None  # the schedule's own figures, with target_rate

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
            "distribution": c.distribution, "coordination": c.coordination, "read_fanout": c.read_fanout,
            "load": self.load,
            "total": {"ops": self.total_ops, "ops_s": round(self.total_ops / self.elapsed, 1) if self.elapsed else 0.0,
                      "errors": self.total_errors},
            "ops": {name: {**s.latency.summary(),
                           "ops_s": round(s.latency.count / self.elapsed, 1) if self.elapsed else 0.0,
                           "errors": dict(s.errors)} for name, s in self.ops.items()},
            "siblings_seen": self.siblings_seen, "not_found": self.not_found,
            "updates_read_first": self.updates_read_first,
            **({"open_loop": self.open_loop.to_json()} if self.open_loop is not None else {}),
        }

    def text(self) -> str:
        j = self.to_json()
        lines = [f"workload {j['workload'].upper()}: {j['records']} records, {j['value_size']} B values, "
                 f"{j['concurrency']} in flight, {j['distribution']}, R={j['r'] or 'default'} W={j['w'] or 'default'}"]
        if self.load is not None:
            lines.append(f"load: {self.load['ops']} records in {self.load['seconds']:.1f} s "
                         f"({self.load['ops_s']:.0f}/s, {self.load['errors']} errors)")
        if self.open_loop is not None:
            o = self.open_loop.to_json()
            lines.append(f"open loop: target {o['target_rate']:.0f}/s ({o['arrival']} arrivals), {o['issued']} issued, "
                         f"{o['late']} late (cap of {self.config.concurrency} in flight reached), most behind schedule "
                         f"{o['max_lag_ms']:.2f} ms; latency from each request's intended start")
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
    if config.target_rate is not None and not config.target_rate > 0:
        raise ValueError("the target rate must be positive")
    if config.arrival not in ARRIVALS:
        raise ValueError(f"unknown arrival process {config.arrival!r} (choose from {', '.join(ARRIVALS)})")
    rng = random.Random(config.seed)
    result = BenchResult(config)
    if config.coordination not in ("client", "server") or config.read_fanout not in ("quorum", "all"):
        raise ValueError("coordination is 'client' or 'server'; read_fanout is 'quorum' or 'all'")
    async with AsyncClient(seeds, timeout=config.timeout, curve=curve, coordination=config.coordination,  # type: ignore[arg-type]
                           read_fanout=config.read_fanout) as db:  # type: ignore[arg-type]
        if config.load:
            result.load = await _load(db, config, progress)
        result.ops = {name: OpStats() for name in WORKLOADS[config.workload]}
        if config.target_rate is None:
            await _run(db, config, rng, result, progress)
        else:
            await _run_open(db, config, rng, result, progress)
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


class _Ops:
    """The operations of a workload, shared by the closed and the open loop."""

    def __init__(self, db: AsyncClient, config: BenchConfig, result: BenchResult) -> None:
        self.db = db
        self.config = config
        self.result = result
        self.base = os.urandom(config.value_size)
        self.contexts: dict[bytes, bytes] = {}  # key -> context of its last read (updates carry it)
        self.token = os.urandom(4).hex().encode()  # inserted keys are new in every run: no siblings
        self.inserted = 0  # keys inserted so far

    async def read(self, key: bytes) -> bytes:
        got = await self.db.get(key, r=self.config.r)
        if len(got.values) > 1:
            self.result.siblings_seen += 1
        if not got.found:
            self.result.not_found += 1
        self.contexts[key] = got.context
        return got.context

    async def run(self, op: str, key: bytes) -> None:
        """One operation of the mix (an update may read first: inside its latency)."""
        config, value = self.config, _value(self.config.value_size, self.base)
        if op == "read":
            await self.read(key)
        elif op == "insert":
            self.inserted += 1
            await self.db.put(b"ins-%s-%010d" % (self.token, self.inserted), value, w=config.w)
        elif op == "update":
            context = self.contexts.get(key)
            if context is None:
                self.result.updates_read_first += 1
                context = await self.read(key)
            self.contexts.pop(key, None)  # it does not cover this write: the next update reads anew
            await self.db.put(key, value, context=context, w=config.w)
        else:  # read-modify-write
            context = await self.read(key)
            self.contexts.pop(key, None)
            await self.db.put(key, value, context=context, w=config.w)


def _key_chooser(config: BenchConfig, rng: random.Random) -> ScrambledZipfian | Uniform:
    seeded = random.Random(rng.getrandbits(64))
    return ScrambledZipfian(config.records, seeded) if config.distribution == "zipfian" else Uniform(config.records, seeded)


async def _reporter(result: BenchResult, start: float, progress: Progress | None) -> None:
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


async def _run(db: AsyncClient, config: BenchConfig, rng: random.Random, result: BenchResult,
               progress: Progress | None) -> None:
    """Closed loop: ``concurrency`` workers, each issuing its next request when its last is done."""
    mix = WORKLOADS[config.workload]
    names, weights = list(mix), list(mix.values())
    keys = _key_chooser(config, rng)
    ops = _Ops(db, config, result)
    limit = config.max_ops if config.max_ops is not None else 2**62
    started = 0
    start = time.perf_counter()
    deadline = start + config.duration

    async def worker(wrng: random.Random) -> None:
        nonlocal started
        while started < limit and time.perf_counter() < deadline:
            started += 1
            op = wrng.choices(names, weights)[0]
            key = key_name(keys.next())
            stats = result.ops[op]
            t0 = time.perf_counter()
            try:
                await ops.run(op, key)
            except DynqError as exc:
                stats.error(exc)
                continue
            stats.latency.record(time.perf_counter() - t0)

    reporter = asyncio.create_task(_reporter(result, start, progress))
    try:
        await asyncio.gather(*(worker(random.Random(rng.getrandbits(64))) for _ in range(config.concurrency)))
    finally:
        reporter.cancel()
        result.elapsed = time.perf_counter() - start


async def _run_open(db: AsyncClient, config: BenchConfig, rng: random.Random, result: BenchResult,
                    progress: Progress | None) -> None:
    """Open loop: the workload's ops issued on ``config.target_rate``'s schedule."""
    assert config.target_rate is not None
    mix = WORKLOADS[config.workload]
    names, weights = list(mix), list(mix.values())
    keys = _key_chooser(config, rng)
    ops = _Ops(db, config, result)
    orng = random.Random(rng.getrandbits(64))

    async def issue(i: int) -> str | None:
        op = orng.choices(names, weights)[0]
        try:
            await ops.run(op, key_name(keys.next()))
        except DynqError as exc:
            result.ops[op].error(exc)
            return None
        return op

    def on_latency(op: str, seconds: float) -> None:
        result.ops[op].latency.record(seconds)

    pacer = Pacer(Arrivals(config.target_rate, config.arrival, random.Random(rng.getrandbits(64))),
                  config.concurrency, config.duration, config.max_ops)
    start = time.perf_counter()
    reporter = asyncio.create_task(_reporter(result, start, progress))
    try:
        result.open_loop = await open_loop(issue, pacer, on_latency, bound_s=config.duration + 3 * config.timeout + 5.0)
    finally:
        reporter.cancel()
        result.elapsed = time.perf_counter() - start
