"""Workloads: several concurrent clients (one :class:`AsyncClient` each, all on one event
loop in a driver thread) writing to a few dozen keys and recording every operation in a
:class:`History`. Bounded in time (``duration``) and in count (``max_ops`` per worker).

* ``set-add``: read the key, add a unique integer to the union of every sibling's set,
  write back with the read's context (Jepsen's Riak test).
* ``siblings``: mostly blind writes (no context) of unique values to the same keys, so
  concurrent writes become siblings; sometimes read and write back with the context,
  which supersedes what the read returned (and keeps the sibling count bounded).
* ``cycle``: read, then write a new value or delete with the read's context: write /
  delete / rewrite cycles on every key.
* ``crdt``: a counter bucket and a set bucket (data types): increments by 1-5, adds of
  unique elements, and removes of an element a read just saw (with that read's context).
* ``ttl``: like ``siblings`` (blind writes, and read-then-write with the context), each
  write with a short ttl (1-3 s), a long one (an hour) or none, and reads in between:
  expired values must never be read, unexpired acknowledged ones never lost.
Every value is unique (worker, counter), which is what lets the checkers tell writes apart.

With ``buckets``, the keys are spread over those buckets and named ``BUCKET/KEY`` in the
history (each bucket has its own n, quorums and replicas).
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
import threading
import time
from dataclasses import dataclass, field

from dynq_client import AsyncClient, DynqError

from .history import FAIL, OK, History


def split_key(name: str) -> tuple[str | None, str]:
    """(bucket, key) of a history key name (``BUCKET/KEY``, or ``KEY`` in the default bucket)."""
    bucket, sep, key = name.partition("/")
    return (bucket, key) if sep else (None, name)


def encode_set(elements: set[int]) -> bytes:
    return ",".join(str(e) for e in sorted(elements)).encode()


def decode_set(value: bytes) -> set[int]:
    return {int(x) for x in value.decode().split(",") if x}


@dataclass
class Workload:
    kind: str  # set-add | siblings | cycle | ttl
    seeds: list[str]
    rng: random.Random
    keys: int = 24
    workers: int = 6
    duration: float = 60.0
    max_ops: int = 100_000  # per worker: a bound even if time misbehaves
    timeout: float = 2.0  # client timeout per operation
    buckets: tuple[str, ...] = ()  # spread the keys over these buckets ("" : the default bucket only)
    history: History = field(default_factory=History)
    error: BaseException | None = None
    _elements: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    @property
    def key_names(self) -> list[str]:
        if self.buckets:
            return [f"{self.buckets[i % len(self.buckets)]}/{self.kind}-{i}" for i in range(self.keys)]
        return [f"{self.kind}-{i}" for i in range(self.keys)]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._main, name=f"workload-{self.kind}", daemon=True)
        self._thread.start()

    def stop(self) -> History:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout * 4 + 30)
        if self.error is not None:
            raise RuntimeError(f"workload {self.kind} crashed: {self.error!r}") from self.error
        return self.history

    def halt(self) -> None:
        """Stop the workers and wait for them, without raising (teardown; idempotent)."""
        self._stop.set()
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout=self.timeout * 4 + 30)

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:
            self.error = exc

    async def _run(self) -> None:
        deadline = time.monotonic() + self.duration
        seeds = [self.rng.getrandbits(32) for _ in range(self.workers)]
        await asyncio.gather(*(self._worker(p, random.Random(s), deadline) for p, s in enumerate(seeds)))

    async def _worker(self, process: int, rng: random.Random, deadline: float) -> None:
        step = {"set-add": self._add, "siblings": self._sibling, "cycle": self._cycle, "ttl": self._ttl,
                "crdt": functools.partial(crdt_step, self)}[self.kind]
        db = AsyncClient(self.seeds, timeout=self.timeout)
        try:
            for n in range(self.max_ops):
                if self._stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    await db.connect()
                except DynqError:
                    await asyncio.sleep(0.2)
                    continue
                await step(db, process, rng, n)
                await asyncio.sleep(rng.uniform(0, 0.01))
        finally:
            await db.close()

    async def _add(self, db: AsyncClient, process: int, rng: random.Random, n: int) -> None:
        key = rng.choice(self.key_names)
        element = next(self._elements)
        op = self.history.invoke(process, "add", key, element)
        try:
            got = await db.get(split_key(key)[1], bucket=split_key(key)[0])
        except DynqError as exc:
            self.history.complete(op, FAIL, error=f"read: {exc}"[:300])  # nothing was written
            return
        seen: set[int] = set()
        for value in got.values:
            seen |= decode_set(value)
        try:
            await db.put(split_key(key)[1], encode_set(seen | {element}), context=got.context,
                         bucket=split_key(key)[0])
        except DynqError as exc:
            self.history.fail_or_unknown(op, exc)
            op.result = frozenset(seen)
            return
        self.history.complete(op, OK, result=frozenset(seen))  # result: what its read saw

    async def _read(self, db: AsyncClient, process: int, key: str) -> tuple[list[bytes], bytes] | None:
        op = self.history.invoke(process, "read", key)
        try:
            got = await db.get(split_key(key)[1], bucket=split_key(key)[0])
        except DynqError as exc:
            self.history.complete(op, FAIL, error=str(exc)[:300])
            return None
        self.history.complete(op, OK, result=frozenset(v.decode() for v in got.values))
        return got.values, got.context

    async def _put(self, db: AsyncClient, process: int, key: str, n: int,
                   read: tuple[list[bytes], bytes] | None, ttl: int | None = None) -> None:
        value = f"p{process}-{n}" if ttl is None else f"t{ttl}-{process}-{n}"
        covers = [v.decode() for v in read[0]] if read else []
        op = self.history.invoke(process, "put", key, value, covers, ttl=ttl)
        try:
            await db.put(split_key(key)[1], value.encode(), context=read[1] if read else None,
                         bucket=split_key(key)[0], ttl=ttl)
        except DynqError as exc:
            self.history.fail_or_unknown(op, exc)
            return
        self.history.complete(op, OK)

    async def _sibling(self, db: AsyncClient, process: int, rng: random.Random, n: int) -> None:
        key = rng.choice(self.key_names)
        read = None
        if rng.random() < 0.3:
            read = await self._read(db, process, key)
            if read is None:
                return
        await self._put(db, process, key, n, read)

    async def _cycle(self, db: AsyncClient, process: int, rng: random.Random, n: int) -> None:
        key = rng.choice(self.key_names)
        read = await self._read(db, process, key)
        if read is None:
            return
        if read[0] and rng.random() < 0.5:
            op = self.history.invoke(process, "delete", key, None, [v.decode() for v in read[0]])
            try:
                await db.delete(split_key(key)[1], context=read[1], bucket=split_key(key)[0])
            except DynqError as exc:
                self.history.fail_or_unknown(op, exc)
                return
            self.history.complete(op, OK)
        else:
            await self._put(db, process, key, n, read)

    async def _ttl(self, db: AsyncClient, process: int, rng: random.Random, n: int) -> None:
        key = rng.choice(self.key_names)
        roll = rng.random()
        if roll < 0.3:  # a read: it must never return an expired value
            await self._read(db, process, key)
            return
        read = await self._read(db, process, key) if roll < 0.5 else None
        if roll < 0.5 and read is None:
            return
        ttl = rng.choice([1, 2, 3, 1, 2, 3, TTL_LONG, None])
        await self._put(db, process, key, n, read, ttl=ttl)


TTL_LONG = 3600
"""The ttl workload's long ttl: unexpired at every check (such values must never be lost)."""


CRDT_BUCKETS = {"ctr": {"n": 3, "datatype": "counter"}, "st": {"n": 3, "datatype": "set"}}
"""The crdt workload's buckets (made by the scenario before it starts)."""


async def crdt_step(self: Workload, db: AsyncClient, process: int, rng: random.Random, n: int) -> None:
    """One op of the crdt workload: half on counters, half on sets (adds twice as often as removes)."""
    key = rng.choice(self.key_names)
    bucket, name = split_key(key)
    assert bucket is not None
    if bucket == "ctr":
        amount = rng.randint(1, 5)
        op = self.history.invoke(process, "incr", key, amount)
        try:
            await db.counter(bucket, name).increment(amount)
        except DynqError as exc:
            self.history.fail_or_unknown(op, exc)
            return
        self.history.complete(op, OK)
        return
    handle = db.set(bucket, name)
    if rng.random() < 0.67:
        element = next(self._elements)
        op = self.history.invoke(process, "add", key, element)
        try:
            await handle.add(str(element))
        except DynqError as exc:
            self.history.fail_or_unknown(op, exc)
            return
        self.history.complete(op, OK)
        return
    read = self.history.invoke(process, "read", key)
    try:
        seen = {int(x) for x in await handle.value()}
    except DynqError as exc:
        self.history.complete(read, FAIL, error=str(exc)[:300])
        return
    self.history.complete(read, OK, result=frozenset(seen))
    if not seen:
        return
    element = rng.choice(sorted(seen))
    op = self.history.invoke(process, "remove", key, element)
    try:
        await handle.remove(str(element))  # with the read's context: removes the add it saw
    except DynqError as exc:
        self.history.fail_or_unknown(op, exc)
        return
    self.history.complete(op, OK)

