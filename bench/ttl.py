"""Expiry cost: puts with and without a ttl, and reclamation while a YCSB-A load runs.

    python bench/ttl.py [--keys 5000] [--rounds 3] [--expired 30000] [--ycsb-s 20]

One 3-node local cluster (N=3 R=2 W=2, expired objects reclaimed 1 s after expiry):

1. Put throughput at 32 in flight, ``--rounds`` interleaved pairs (plain, ttl=3600,
   plain, ttl=3600, ...; fresh keys each round, 1 KiB values): medians and the ratio.
2. YCSB-A (50 % reads, 50 % updates, uniform over 2,000 keys written without ttl, 32 in
   flight) for ``--ycsb-s`` seconds twice: once with nothing to reclaim, once right after
   ``--expired`` keys (100 B values, one ttl long enough that they expire together after
   the last is written) have expired. Reports YCSB-A ops/s of both (ratio) and
   the reclamation rate seen during the second (expired objects deleted per second, all
   three replicas counted once per key), from the nodes' ``expired_reclaimed``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynq.localcluster import LocalCluster, free_ports  # noqa: E402
from dynq_client import AsyncClient  # noqa: E402

CONFIG = """
[anti_entropy]
expiry_grace_s = 1
"""
IN_FLIGHT = 32


async def puts(db: AsyncClient, keys: list[bytes], value: bytes, ttl: int | None) -> float:
    queue = iter(keys)

    async def worker() -> None:
        for key in queue:
            await db.put(key, value, ttl=ttl)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return len(keys) / (time.perf_counter() - start)


async def ycsb_a(db: AsyncClient, keys: list[bytes], value: bytes, seconds: float, seed: int) -> float:
    rng = random.Random(seed)
    deadline = time.monotonic() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            key = rng.choice(keys)
            if rng.random() < 0.5:
                await db.get(key)
            else:
                await db.put(key, value)
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return done / (time.perf_counter() - start)


async def reclaimed(db: AsyncClient, names: list[str]) -> int:
    total = 0
    for name in names:
        total += int((await db.call(name, "stats"))["anti_entropy"]["expired_reclaimed"])
    return total


async def run(seeds: list[str], names: list[str], args: argparse.Namespace) -> None:
    value = os.urandom(1024)
    async with AsyncClient(seeds, timeout=10.0) as db:
        plain: list[float] = []
        with_ttl: list[float] = []
        for rnd in range(args.rounds):
            plain.append(await puts(db, [b"plain-%d-%d" % (rnd, i) for i in range(args.keys)], value, None))
            with_ttl.append(await puts(db, [b"ttl-%d-%d" % (rnd, i) for i in range(args.keys)], value, 3600))
            print(f"round {rnd + 1}: puts plain {plain[-1]:.0f}/s  ttl {with_ttl[-1]:.0f}/s  "
                  f"ratio {with_ttl[-1] / plain[-1]:.3f}")
        ratios = [t / p for t, p in zip(with_ttl, plain)]
        print(f"puts/s median: plain {statistics.median(plain):.0f}  ttl {statistics.median(with_ttl):.0f}  "
              f"ratio (median of pairs) {statistics.median(ratios):.3f}")

        hot = [b"ycsb-%d" % i for i in range(2000)]
        await puts(db, hot, value, None)
        idle = await ycsb_a(db, hot, value, args.ycsb_s, 1)
        print(f"YCSB-A, nothing to reclaim: {idle:.0f} ops/s")
        small = os.urandom(100)
        expiring = [b"exp-%d" % i for i in range(args.expired)]
        # one ttl long enough that they all expire after the last is written (then together)
        ttl = int(2 * args.expired / min(plain + with_ttl)) + 3
        t0 = time.time()
        await puts(db, expiring, small, ttl)
        print(f"wrote {args.expired} keys with ttl={ttl} in {time.time() - t0:.1f} s")
        before = await reclaimed(db, names)
        if before:
            print(f"  (already reclaimed before they were all written: {before // 3}; raise the ttl)")
        await asyncio.sleep(max(0.0, t0 + ttl + 1 + 0.5 - time.time()))  # expiry + grace
        before = await reclaimed(db, names)
        start = time.perf_counter()
        busy = await ycsb_a(db, hot, value, args.ycsb_s, 2)
        elapsed = time.perf_counter() - start
        after = await reclaimed(db, names)
        keys_per_s = (after - before) / 3 / elapsed
        print(f"YCSB-A while reclaiming: {busy:.0f} ops/s (ratio {busy / idle:.3f}); reclaimed "
              f"{(after - before) // 3} keys ({after - before} replica objects) in {elapsed:.1f} s = "
              f"{keys_per_s:.0f} keys/s")
        deadline = time.monotonic() + 120
        while await reclaimed(db, names) - before < 3 * args.expired and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        total = (await reclaimed(db, names) - before) // 3
        print(f"all reclaimed: {total} of {args.expired} keys, {time.perf_counter() - start:.1f} s after the load began")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--expired", type=int, default=30000)
    parser.add_argument("--ycsb-s", type=float, default=20.0)
    parser.add_argument("--data-dir", default=None, help="Keep the nodes' data and logs here (default: a temp dir).")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dynq-bench-ttl-") as scratch:
        tmp = args.data_dir or scratch
        addresses = [f"tcp://127.0.0.1:{p}" for p in free_ports(3)]
        cluster = LocalCluster(Path(tmp), addresses, extra_config=CONFIG)
        cluster.start_all()
        try:
            cluster.wait_ready()
            asyncio.run(run(cluster.seeds, list(cluster.nodes), args))
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
