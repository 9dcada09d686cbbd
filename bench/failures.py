"""Put throughput with one of four nodes down versus all up, and hinted-handoff drain time.

    python bench/failures.py [--keys 10000] [--runs 3] [--synchronous full]

Each run starts a fresh 4-node cluster (N=3, W=2), then:
  1. all up: puts of --keys keys whose replicas include n4, 32 in flight;
  2. n4 killed (kill -9): the same number of new keys of n4, 32 in flight (fallbacks take them);
  3. n4 restarted: seconds until every hint has been handed over (polled every 0.1 s).
Prints each run and the medians; compare the two put phases as a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.putget import parse_args, phase  # noqa: E402
from dynq.localcluster import LocalCluster, free_ports  # noqa: E402
from dynq_client import AsyncClient, Client  # noqa: E402


async def put_phase(seeds: list[str], keys: list[bytes], value: bytes) -> dict[str, float]:
    async with AsyncClient(seeds, timeout=10.0) as db:
        return await phase(db, "put", keys, value, 32)


def hints(client: Client, names: list[str]) -> int:
    return sum(int(client.call(name, "stats")["hints_pending_total"]) for name in names)


def one_run(args: argparse.Namespace, run: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="dynq-bench-") as tmp:
        cluster = LocalCluster(Path(tmp), [f"tcp://127.0.0.1:{p}" for p in free_ports(4)],
                               synchronous=args.synchronous)
        cluster.start_all()
        try:
            cluster.wait_ready()
            with Client(cluster.seeds) as client:
                assert client.table is not None
                ring = client.table.ring
                mine = (k for k in (f"r{run}-{i}".encode() for i in range(10 * args.keys))
                        if "n4" in ring.preference_list_for(k).primaries)
                before = [next(mine) for _ in range(args.keys)]
                during = [next(mine) for _ in range(args.keys)]
            value = b"x" * args.value_size
            up = asyncio.run(put_phase(cluster.seeds, before, value))
            cluster.kill("n4")
            down = asyncio.run(put_phase(cluster.seeds, during, value))
            others = ["n1", "n2", "n3"]
            with Client(cluster.seeds) as client:
                pending = hints(client, others)
                cluster.start("n4")
                start = time.perf_counter()
                deadline = start + 300
                while hints(client, others) and time.perf_counter() < deadline:
                    time.sleep(0.1)
                drain = time.perf_counter() - start
            return {"up_ops": up["ops_s"], "up_p99": up["p99_ms"], "down_ops": down["ops_s"],
                    "down_p99": down["p99_ms"], "hints": pending, "drain_s": drain}
        finally:
            cluster.stop_all()


def main() -> None:
    args = parse_args(__doc__)
    results = []
    for run in range(args.runs):
        r = one_run(args, run)
        results.append(r)
        print(f"run {run + 1}: all up {r['up_ops']:.0f} puts/s p99 {r['up_p99']:.1f} ms | n4 down "
              f"{r['down_ops']:.0f} puts/s p99 {r['down_p99']:.1f} ms | {r['hints']:.0f} hints drained "
              f"in {r['drain_s']:.1f} s", flush=True)
    med = {k: statistics.median(r[k] for r in results) for k in results[0]}
    print(f"median of {args.runs}: all up {med['up_ops']:.0f} puts/s (p99 {med['up_p99']:.1f} ms), one down "
          f"{med['down_ops']:.0f} puts/s (p99 {med['down_p99']:.1f} ms), ratio {med['down_ops'] / med['up_ops']:.2f}; "
          f"{med['hints']:.0f} hints drained in {med['drain_s']:.1f} s ({med['hints'] / med['drain_s']:.0f} hints/s)")


if __name__ == "__main__":
    main()
