"""Background work vs the foreground: YCSB-A with hints replaying and anti-entropy
exchanging at their default rates, against the same load with both idle (issue 15).

    python bench/background.py [--cycles 3] [--seconds 15] [--behind 10000]

Four nodes (N=3 R=2 W=2, anti-entropy and handoff at their defaults). Each cycle:

1. *idle*: YCSB-A (50 % reads, 50 % updates, uniform over 2,000 keys, 1 KiB values,
   32 in flight) for ``--seconds``;
2. n4 is stopped and ``--behind`` keys are written (their copies for n4 become hints on
   the other nodes, and n4's trees fall behind);
3. n4 restarts and the same YCSB-A runs at once for ``--seconds``, while the hints are
   handed back and anti-entropy exchanges with n4 (their work during the window is
   reported: hints replayed, keys repaired);
4. the cluster is left to drain before the next cycle.

Prints each cycle's ops/s of both phases and their ratio, and the median ratio: the
goal is >= 0.9 (Riak's AAE halved throughput with its defaults).
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
from dynq_client import AsyncClient, DynqError  # noqa: E402

IN_FLIGHT = 32


async def ycsb_a(db: AsyncClient, keys: list[bytes], value: bytes, seconds: float, seed: int) -> float:
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
                continue  # counted as not done
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
    return done / (time.perf_counter() - start)


async def write(db: AsyncClient, keys: list[bytes], value: bytes) -> None:
    queue = iter(keys)

    async def worker() -> None:
        for key in queue:
            await db.put(key, value)

    await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))


async def counters(db: AsyncClient, names: list[str]) -> tuple[int, int, int]:
    """(hints pending, hints replayed, keys repaired by anti-entropy), summed over nodes."""
    pending = delivered = repaired = 0
    for name in names:
        try:
            s = await db.call(name, "stats")
        except DynqError:
            continue
        pending += int(s.get("hints_pending_total", 0))
        delivered += int(s.get("hints_replayed", 0))
        repaired += int(s["anti_entropy"]["keys_repaired"])
    return pending, delivered, repaired


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--behind", type=int, default=10000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dynq-bench-bg-") as tmp:
        addresses = [f"tcp://127.0.0.1:{p}" for p in free_ports(4)]
        cluster = LocalCluster(Path(tmp), addresses)
        cluster.start_all()
        try:
            cluster.wait_ready()
            names = list(cluster.nodes)
            value = os.urandom(1024)
            hot = [b"ycsb-%d" % i for i in range(2000)]
            ratios: list[float] = []

            async def cycle(c: int) -> None:
                async with AsyncClient(cluster.seeds, timeout=10.0) as db:
                    if c == 0:
                        await write(db, hot, value)
                    idle = await ycsb_a(db, hot, value, args.seconds, 2 * c)
                cluster.stop("n4")
                async with AsyncClient(cluster.seeds, timeout=10.0) as db:
                    await write(db, [b"behind-%d-%d" % (c, i) for i in range(args.behind)], value)
                    before = await counters(db, names)
                cluster.start("n4")
                async with AsyncClient(cluster.seeds, timeout=10.0) as db:
                    busy = await ycsb_a(db, hot, value, args.seconds, 2 * c + 1)
                    after = await counters(db, names)
                    ratios.append(busy / idle)
                    print(f"cycle {c + 1}: idle {idle:.0f} ops/s  with handoff+AE {busy:.0f} ops/s  "
                          f"ratio {busy / idle:.3f}  (hints pending {before[0]} -> {after[0]}, "
                          f"delivered {after[1] - before[1]}, AE keys repaired {after[2] - before[2]})",
                          flush=True)
                    deadline = time.monotonic() + 300
                    while (await counters(db, names))[0] and time.monotonic() < deadline:
                        await asyncio.sleep(1)

            for c in range(args.cycles):
                asyncio.run(cycle(c))
            print(f"median ratio over {args.cycles} cycles: {statistics.median(ratios):.3f}")
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
