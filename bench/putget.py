"""Put/get throughput and latency on a fresh 3-node local cluster (N=3, R=2, W=2).

    python bench/putget.py [--keys 10000] [--value-size 1024] [--runs 3] [--synchronous full]

For each run: puts of --keys distinct keys then gets of them, first with one request at a
time (latency), then with 32 in flight (throughput). Prints each run and the median of the
runs; figures drift on shared machines, so compare ratios measured in one invocation.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynq.localcluster import LocalCluster, free_ports  # noqa: E402
from dynq_client import AsyncClient, CurveKeys  # noqa: E402


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def phase(db: AsyncClient, op: str, keys: list[bytes], value: bytes, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    queue = iter(keys)

    async def worker() -> None:
        for key in queue:
            t0 = time.perf_counter()
            if op == "put":
                await db.put(key, value)
            else:
                await db.get(key)
            latencies.append(time.perf_counter() - t0)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    return {"ops_s": len(keys) / elapsed, "p50_ms": pct(latencies, 0.5), "p99_ms": pct(latencies, 0.99)}


async def one_run(seeds: list[str], keys: int, value_size: int, run: int,
                  curve: CurveKeys | None = None) -> dict[str, dict[str, float]]:
    value = os.urandom(value_size)
    out: dict[str, dict[str, float]] = {}
    async with AsyncClient(seeds, timeout=10.0, curve=curve) as db:
        # Baseline for this run on this (noisy, shared) machine: one bare request round trip.
        pings = []
        for _ in range(500):
            t0 = time.perf_counter()
            await db.call("n1", "ping")
            pings.append(time.perf_counter() - t0)
        out["ping c=1"] = {"ops_s": len(pings) / sum(pings), "p50_ms": pct(pings, 0.5), "p99_ms": pct(pings, 0.99)}
        for concurrency in (1, 32):
            batch = [f"r{run}-c{concurrency}-{i}".encode() for i in range(keys)]
            n = keys if concurrency > 1 else max(1, keys // 5)  # sequential runs are slower: fewer keys
            out[f"put c={concurrency}"] = await phase(db, "put", batch[:n], value, concurrency)
            out[f"get c={concurrency}"] = await phase(db, "get", batch[:n], value, concurrency)
    return out


def parse_args(doc: str | None) -> argparse.Namespace:
    """The options every benchmark here shares."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="full")
    return parser.parse_args()


def main() -> None:
    args = parse_args(__doc__)
    with tempfile.TemporaryDirectory(prefix="dynq-bench-") as tmp:
        addresses = [f"tcp://127.0.0.1:{p}" for p in free_ports(3)]
        cluster = LocalCluster(Path(tmp), addresses, synchronous=args.synchronous)
        cluster.start_all()
        try:
            cluster.wait_ready()
            results = []
            for run in range(args.runs):
                result = asyncio.run(one_run(cluster.seeds, args.keys, args.value_size, run))
                results.append(result)
                print(f"run {run + 1}: " + "  ".join(
                    f"{name}: {r['ops_s']:.0f}/s p50 {r['p50_ms']:.2f}ms p99 {r['p99_ms']:.2f}ms"
                    for name, r in result.items()))
            print(f"median of {args.runs} runs (synchronous={args.synchronous}, {args.value_size} B values):")
            for name in results[0]:
                med = {k: statistics.median(r[name][k] for r in results) for k in ("ops_s", "p50_ms", "p99_ms")}
                ratio = med["p50_ms"] / statistics.median(r["ping c=1"]["p50_ms"] for r in results)
                print(f"  {name:<10} {med['ops_s']:>8.0f} ops/s   p50 {med['p50_ms']:.2f} ms ({ratio:.1f}x ping)"
                      f"   p99 {med['p99_ms']:.2f} ms")
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
