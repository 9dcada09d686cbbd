"""Closed-loop loads shared by the benchmarks: a fixed set of puts, and YCSB-A."""

from __future__ import annotations

import asyncio
import random
import time

from dynq_client import AsyncClient, DynqError

IN_FLIGHT = 32


async def puts(db: AsyncClient, keys: list[bytes], value: bytes, ttl: int | None = None,
               in_flight: int = IN_FLIGHT) -> float:
    """Put every key once, ``in_flight`` at a time; returns puts/s."""
    queue = iter(keys)

    async def worker() -> None:
        for key in queue:
            await db.put(key, value, ttl=ttl)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return len(keys) / (time.perf_counter() - start)


async def ycsb_a(db: AsyncClient, keys: list[bytes], value: bytes, seconds: float, seed: int,
                 in_flight: int = IN_FLIGHT) -> float:
    """YCSB-A (50 % reads, 50 % updates, uniform over ``keys``) for ``seconds``; returns
    completed ops/s (an operation that failed is not counted)."""
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            key = rng.choice(keys)
            try:
                if rng.random() < 0.5:
                    await db.get(key)
                else:
                    await db.put(key, value)
            except DynqError:
                continue
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return done / (time.perf_counter() - start)
