"""Data types: set add latency and bytes replicated per add as the set grows, and counter
increments/s against plain puts.

    python bench/datatypes.py [--sizes 100,10000,100000] [--adds 200] [--seconds 5] [--runs 3]

A real 3-node cluster (n=3, R=W=2, synchronous=normal). For each size S, one set is filled
to S elements (adds of 1,000 elements per op), then ``--adds`` single-element adds are
timed one after the other; the nodes' ``dt_stats`` give the delta bytes the coordinators
sent to replicas and the element rows the joins wrote, per add (flat in S: an add ships
and writes one element, never the set). Then counter increments and plain puts, 32 in
flight each from one AsyncClient, for ``--seconds`` each, interleaved ``--runs`` times
(the machine is noisy): medians of ops/s.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.putget import free_ports, pct  # noqa: E402
from dynq.localcluster import LocalCluster  # noqa: E402
from dynq_client import AsyncClient  # noqa: E402

NO_AE = "[anti_entropy]\nenabled = false\n"


async def dt_totals(db: AsyncClient, nodes: list[str]) -> dict[str, int]:
    totals = {"updates": 0, "delta_bytes": 0, "rows_written": 0}
    for node in nodes:
        body = await db.call(node, "dt_stats", {})
        for k in totals:
            totals[k] += int(body[k])
    return totals


async def set_sizes(db: AsyncClient, nodes: list[str], sizes: list[int], adds: int) -> list[dict[str, Any]]:
    rows = []
    for size in sizes:
        s = db.set("sets", f"size-{size}")
        for start in range(0, size, 1000):
            await s.add(*[b"member-%08d" % i for i in range(start, min(size, start + 1000))])
        assert await s.size() == size
        before = await dt_totals(db, nodes)
        latencies = []
        for i in range(adds):
            t0 = time.perf_counter()
            await s.add(b"new-%08d" % i)
            latencies.append(time.perf_counter() - t0)
        after = await dt_totals(db, nodes)
        t0 = time.perf_counter()
        member = await s.contains(b"new-00000000")
        contains_ms = (time.perf_counter() - t0) * 1000
        t0 = time.perf_counter()
        n = await s.size()
        size_ms = (time.perf_counter() - t0) * 1000
        assert member and n == size + adds
        rows.append({
            "size": size, "p50_ms": pct(latencies, 0.5), "p99_ms": pct(latencies, 0.99),
            "bytes_per_add": (after["delta_bytes"] - before["delta_bytes"]) / adds,
            "rows_per_add": (after["rows_written"] - before["rows_written"]) / adds,
            "contains_ms": contains_ms, "size_ms": size_ms,
        })
        print(f"set of {size:>7}: add p50 {rows[-1]['p50_ms']:.2f} ms p99 {rows[-1]['p99_ms']:.2f} ms, "
              f"{rows[-1]['bytes_per_add']:.0f} delta bytes and {rows[-1]['rows_per_add']:.1f} element rows "
              f"written per add (all replicas), contains {contains_ms:.1f} ms, size {size_ms:.1f} ms", flush=True)
    return rows


async def rate(db: AsyncClient, kind: str, seconds: float, run: int, in_flight: int = 32) -> float:
    """Ops/s of 32 workers: counter increments on 64 keys, or plain puts of 100 bytes to
    new keys (blind puts to a few keys would pile up siblings)."""
    done = 0
    deadline = time.perf_counter() + seconds
    counters = [db.counter("counters", f"c{i}") for i in range(64)]

    async def worker(w: int) -> None:
        nonlocal done
        i = w
        while time.perf_counter() < deadline:
            if kind == "counter":
                await counters[i % 64].increment()
            else:
                await db.put(b"p%d-%d" % (run, i), b"x" * 100, bucket="plain")
            done += 1
            i += in_flight

    t0 = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(in_flight)))
    return done / (time.perf_counter() - t0)


async def main_async(cluster: LocalCluster, args: argparse.Namespace) -> None:
    async with AsyncClient(cluster.seeds, timeout=30.0) as db:
        for name, props in (("sets", {"datatype": "set"}), ("counters", {"datatype": "counter"}), ("plain", {})):
            await db.call("n1", "bucket_create", {"name": name, "props": props})
        await db.refresh()
        await set_sizes(db, list(cluster.nodes), [int(s) for s in args.sizes.split(",")], args.adds)
        results: dict[str, list[float]] = {"counter": [], "put": []}
        for run in range(args.runs):
            for kind in ("counter", "put"):
                results[kind].append(await rate(db, kind, args.seconds, run))
                print(f"  {kind:<8} {results[kind][-1]:8.0f} ops/s", flush=True)
        c, p = statistics.median(results["counter"]), statistics.median(results["put"])
        print(f"32 in flight, medians of {args.runs}: counter increments {c:.0f}/s, plain puts {p:.0f}/s "
              f"(ratio {c / p:.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="100,10000,100000")
    parser.add_argument("--adds", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dynq-dt-") as tmp:
        addresses = [f"tcp://127.0.0.1:{p}" for p in free_ports(3)]
        cluster = LocalCluster(Path(tmp) / "cluster", addresses, n=3, q=64, synchronous="normal",
                               extra_config=NO_AE)
        cluster.start_all()
        try:
            cluster.wait_ready()
            asyncio.run(main_async(cluster, args))
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
