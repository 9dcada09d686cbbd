"""Partition transfer throughput during a join, and foreground put latency during it vs idle.

    python bench/join.py [--keys 10000] [--value-size 1024] [--runs 3]

Each run: a fresh 3-node cluster (N=3) loaded with --keys keys; foreground puts (8 in
flight) measured while idle, then a 4th node joins (join, commit) and the same foreground
load runs until the ring switches. Reports the transition's duration, objects and bytes
the sources streamed per second, and put p50/p99 during the transfer vs idle (a ratio
measured in the same run). Medians over --runs.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.putget import parse_args, pct  # noqa: E402
from dynq.localcluster import LocalCluster, free_ports  # noqa: E402
from dynq.cluster.membership import ClusterState  # noqa: E402
from dynq_client import AsyncClient, Client  # noqa: E402


async def load(seeds: list[str], keys: int, value: bytes) -> None:
    sem = asyncio.Semaphore(64)
    async with AsyncClient(seeds, timeout=10.0) as db:
        async def one(i: int) -> None:
            async with sem:
                await db.put(f"k{i}".encode(), value)

        await asyncio.gather(*(one(i) for i in range(keys)))


async def foreground(seeds: list[str], value: bytes, until: "asyncio.Future[None] | float") -> list[float]:
    """Puts with 8 in flight until ``until`` (a deadline in loop time, or a future)."""
    latencies: list[float] = []
    loop = asyncio.get_running_loop()
    async with AsyncClient(seeds, timeout=10.0) as db:
        counter = iter(range(10**9))

        def finished() -> bool:
            return until.done() if isinstance(until, asyncio.Future) else loop.time() > until

        async def worker() -> None:
            while not finished() and len(latencies) < 200_000:
                t0 = time.perf_counter()
                await db.put(f"fg{next(counter)}".encode(), value)
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(8)))
    return latencies


def one_run(keys: int, value_size: int) -> dict[str, float]:
    value = os.urandom(value_size)
    with tempfile.TemporaryDirectory(prefix="dynq-bench-join-") as tmp:
        addresses = [f"tcp://127.0.0.1:{p}" for p in free_ports(4)]
        cluster = LocalCluster(Path(tmp), addresses[:3], extra_config="[membership]\ntransfer_cleanup_delay_ms = 1000\n")
        cluster.start_all()
        try:
            cluster.wait_ready()
            asyncio.run(load(cluster.seeds, keys, value))
            idle = asyncio.run(_idle(cluster.seeds, value))
            cluster.add_node("n4", addresses[3])
            cluster.start("n4")
            with Client([addresses[3]], timeout=5.0) as new:
                _wait(lambda: new.call_address(addresses[3], "ping", {}))
                new.call_address(addresses[3], "cluster_join", {"cluster": cluster.seeds[0]})
            with Client(cluster.seeds[:3], timeout=5.0) as admin:
                admin.call_address(cluster.seeds[0], "cluster_commit", {})
            t0 = time.perf_counter()
            during = asyncio.run(_during(cluster.seeds[:3], value))
            elapsed = time.perf_counter() - t0
            with Client(cluster.seeds[:3], timeout=5.0) as admin:
                sent = [admin.call(n, "stats")["transfers"] for n in ("n1", "n2", "n3")]
            objects = sum(s["keys_sent"] for s in sent)
            n_bytes = sum(s["bytes_sent"] for s in sent)
            return {
                "transition_s": elapsed,
                "objects_s": objects / elapsed,
                "mb_s": n_bytes / elapsed / 1e6,
                "idle_p50_ms": pct(idle, 0.5), "idle_p99_ms": pct(idle, 0.99),
                "during_p50_ms": pct(during, 0.5), "during_p99_ms": pct(during, 0.99),
            }
        finally:
            cluster.stop_all()


async def _idle(seeds: list[str], value: bytes) -> list[float]:
    return await foreground(seeds, value, asyncio.get_running_loop().time() + 5.0)


async def _during(seeds: list[str], value: bytes) -> list[float]:
    """Foreground load until the cluster state shows the ring switched."""
    loop = asyncio.get_running_loop()
    switched: asyncio.Future[None] = loop.create_future()

    async def watch() -> None:
        async with AsyncClient(seeds, timeout=5.0) as admin:
            deadline = loop.time() + 600
            while loop.time() < deadline:
                state = ClusterState.from_wire((await admin.call_address(seeds[0], "cluster_state", {}))["state"])
                if state.next_ring is None and len(state.ring.members) == 4:
                    break
                await asyncio.sleep(0.1)
        switched.set_result(None)

    watcher = asyncio.ensure_future(watch())
    latencies = await foreground(seeds, value, switched)
    await watcher
    return latencies


def _wait(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():  # type: ignore[operator]
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def main() -> None:
    args = parse_args(__doc__)
    keys = args.keys
    runs = [one_run(keys, args.value_size) for _ in range(args.runs)]
    for i, r in enumerate(runs):
        print(f"run {i + 1}: " + "  ".join(f"{k} {v:.2f}" for k, v in r.items()))
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"median of {args.runs} runs ({keys} keys of {args.value_size} B, N=3, 3 -> 4 nodes):")
    print(f"  transition {med['transition_s']:.1f} s; sources streamed {med['objects_s']:.0f} objects/s, "
          f"{med['mb_s']:.1f} MB/s")
    print(f"  foreground puts (8 in flight): idle p50 {med['idle_p50_ms']:.2f} ms p99 {med['idle_p99_ms']:.2f} ms; "
          f"during p50 {med['during_p50_ms']:.2f} ms p99 {med['during_p99_ms']:.2f} ms "
          f"({med['during_p99_ms'] / med['idle_p99_ms']:.1f}x idle p99)")


if __name__ == "__main__":
    main()
