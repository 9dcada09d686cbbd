"""Anti-entropy cost: full exchanges of a large partition set with few or many diverged keys,
tree build from scratch, and foreground put latency while repair runs.

    python bench/anti_entropy.py [--keys 1000000] [--diverged 10,1000,100000] [--runs 3]

Two replicas (N=2, Q=64) of ``--keys`` keys are built directly in their SQLite files through
the node's own storage path (so their Merkle leaves are written as in production), then for
each ``--diverged`` count D one replica gets new versions of D random keys, both nodes start
as real processes, and one repair pass of every partition runs from the other (rate limits
lifted): time, bytes on the wire and keys repaired are reported, as medians of ``--runs``.
Then: the time to build every tree from the data (leaves dropped), the time to load them
from their leaf rows (what a restart costs), and put p99 with repair running at the default
rate limits versus idle, measured in the same cluster one after the other.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.putget import free_ports, pct  # noqa: E402
from dynq.config import parse_config  # noqa: E402
from dynq.localcluster import LocalCluster  # noqa: E402
from dynq.node import Node  # noqa: E402
from dynq_client import AsyncClient, Client  # noqa: E402
from dynq_client.versions import encode_object, update  # noqa: E402

Q = 64
FAST = "[anti_entropy]\nenabled = false\nrate_objects = 10000000\nrate_bytes = 1099511627776\n"
THROTTLED = "[anti_entropy]\nenabled = false\n"  # the default rate limits


def open_node(data_dir: Path, name: str, addresses: list[str]) -> Node:
    members = [{"name": f"n{i + 1}", "address": a} for i, a in enumerate(addresses)]
    cfg = parse_config({
        "node": {"name": name, "listen": addresses[int(name[1:]) - 1], "data_dir": str(data_dir)},
        "cluster": {"n": 2, "r": 1, "w": 2, "q": Q, "members": members},
        "storage": {"synchronous": "normal"},
    })
    return Node(cfg)


def write_versions(node: Node, keys: list[bytes], value: bytes, batch: int = 5000) -> None:
    """New versions of ``keys``, coordinated by ``node``, committed in batches through the
    storage's group commit (so the Merkle leaves are maintained as in production)."""
    loop = asyncio.new_event_loop()
    try:
        for i in range(0, len(keys), batch):
            for key in keys[i:i + batch]:
                base = node.storage.current(key)
                obj = update(base, dict(base.clock) if base else {}, node.actor, value, int(time.time() * 1000))
                node.storage.stage(key, node.ring.partition_for(key), obj, encode_object(obj), _ignore, loop)
            node.storage.flush()
    finally:
        loop.close()


def _ignore(error: object) -> None:
    pass


def build_base(base: Path, addresses: list[str], keys: int, value_size: int) -> float:
    node = open_node(base, "n1", addresses)
    start = time.perf_counter()
    write_versions(node, [b"key:%d" % i for i in range(keys)], b"x" * value_size)
    elapsed = time.perf_counter() - start
    node.storage.close()
    return elapsed


def copy_db(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src / "dynq.db", dst / "dynq.db")
    for suffix in ("-wal", "-shm"):
        Path(str(dst / "dynq.db") + suffix).unlink(missing_ok=True)


def tree_build_times(base: Path, addresses: list[str]) -> tuple[float, float]:
    """(seconds to build every tree from the objects, seconds to load them from leaf rows)."""
    work = Path(tempfile.mkdtemp(prefix="dynq-ae-build-", dir=base.parent))
    try:
        copy_db(base, work)
        node = open_node(work, "n1", addresses)
        start = time.perf_counter()
        for p in range(Q):
            node.trees.tree(p)
        load = time.perf_counter() - start
        node.storage.conn.execute("DELETE FROM ae_leaves")
        node.trees.trees.clear()

        async def build() -> None:
            for p in range(Q):
                await node.trees.verify(p, slice_rows=2000)

        start = time.perf_counter()
        asyncio.run(build())
        built = time.perf_counter() - start
        node.storage.close()
        return built, load
    finally:
        shutil.rmtree(work, ignore_errors=True)


def start_pair(root: Path, base: Path, addresses: list[str], diverged: int, keys: int, extra: str,
               storage: dict[str, int] | None = None) -> LocalCluster:
    cluster = LocalCluster(root, addresses, n=2, q=Q, r=1, w=2, synchronous="normal", extra_config=extra,
                           storage_options=storage or {})
    copy_db(base, cluster.data_dir / "n1")
    copy_db(base, cluster.data_dir / "n2")
    n2 = open_node(cluster.data_dir / "n2", "n2", addresses)
    n2.storage.conn.execute("DELETE FROM meta WHERE name = 'actor'")  # a replica of its own
    n2.actor = n2.storage.actor_id("n2")
    write_versions(n2, [b"key:%d" % i for i in random.sample(range(keys), diverged)], b"y" * 100)
    n2.storage.close()
    cluster.start_all()
    cluster.wait_ready()
    return cluster


def repair_pass(seeds: list[str]) -> dict[str, float]:
    with Client(seeds, timeout=600.0) as long:
        start = time.perf_counter()
        results = [long.call("n1", "ae_repair", {"p": p}) for p in range(Q)]
        elapsed = time.perf_counter() - start
    assert all(r["complete"] for r in results)
    return {"s": elapsed, "bytes": sum(r["bytes"] for r in results),
            "keys": sum(r["keys_repaired"] for r in results)}


def roots_agree(client: Client) -> bool:
    a = client.call("n1", "ae_tree")["partitions"]
    b = client.call("n2", "ae_tree")["partitions"]
    return [x[:2] for x in a] == [x[:2] for x in b]


async def latency_under_repair(seeds: list[str], puts: int, warm: bool) -> dict[str, float]:
    """Put p99 idle, then with a repair pass of every partition running (default limits)."""
    value = b"z" * 100
    async with AsyncClient(seeds, timeout=30.0) as db:
        if warm:  # steady state: a node that has been up a while has its trees in memory
            await db.call("n1", "ae_tree")
            await db.call("n2", "ae_tree")

        async def put_loop(prefix: str, stop: asyncio.Event | None) -> list[float]:
            lat: list[float] = []
            for i in range(puts):
                if stop is not None and stop.is_set():
                    break
                t0 = time.perf_counter()
                await db.put(f"{prefix}{i}".encode(), value)
                lat.append(time.perf_counter() - t0)
            return lat

        idle = await put_loop("idle", None)
        stop = asyncio.Event()

        async def repair() -> float:
            async with AsyncClient(seeds, timeout=600.0) as admin:
                t0 = time.perf_counter()
                for p in range(Q):
                    await admin.call("n1", "ae_repair", {"p": p})
                stop.set()
                return time.perf_counter() - t0

        repair_task = asyncio.create_task(repair())
        busy = await put_loop("busy", stop)
        repair_s = await repair_task
    return {"idle_p50": pct(idle, 0.5), "idle_p99": pct(idle, 0.99), "busy_p50": pct(busy, 0.5),
            "busy_p99": pct(busy, 0.99), "busy_puts": len(busy), "repair_s": repair_s}


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--diverged", default="10,1000,100000")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--p99-diverged", type=int, default=20_000,
                        help="diverged keys while measuring put latency under repair (default limits)")
    parser.add_argument("--p99-puts", type=int, default=3000)
    parser.add_argument("--p99-rates", default="2000,500", help="rate_objects values to measure latency under")
    parser.add_argument("--checkpoint-intervals", default="100",
                        help="[storage] checkpoint_interval_ms values to measure latency under (0: SQLite's "
                             "checkpoints inside commits), e.g. 100,0 to compare")
    parser.add_argument("--cold", action="store_true",
                        help="measure latency with trees not yet loaded (just after a restart)")
    parser.add_argument("--no-build-times", action="store_true", help="skip the tree build timings")
    parser.add_argument("--no-p99", action="store_true", help="skip the latency measurement")
    parser.add_argument("--only-p99", action="store_true", help="skip the tree build and exchange timings")
    parser.add_argument("--dir", default=None, help="where to put the databases (default: a temp dir)")
    args = parser.parse_args()
    counts = [int(x) for x in args.diverged.split(",") if x]
    root = Path(tempfile.mkdtemp(prefix="dynq-ae-bench-", dir=args.dir))
    try:
        addresses = [f"tcp://127.0.0.1:{p}" for p in free_ports(2)]
        base = root / "base"
        built_s = build_base(base, addresses, args.keys, args.value_size)
        size = (base / "dynq.db").stat().st_size
        print(f"base: {args.keys} keys, {args.value_size} B values, {size / 1e6:.0f} MB, "
              f"written through the storage path in {built_s:.1f} s ({args.keys / built_s:.0f} keys/s)", flush=True)
        if args.only_p99:
            counts = []
        builds = [tree_build_times(base, addresses)
                  for _ in range(0 if args.only_p99 or args.no_build_times else args.runs)]
        if builds:
            print(f"tree build from the data (all {Q} partitions): median {statistics.median(b[0] for b in builds):.2f} s; "
                  f"load from leaf rows (restart): median {statistics.median(b[1] for b in builds):.2f} s", flush=True)
        for d in counts:
            runs = []
            for run in range(args.runs):
                cluster = start_pair(root / f"d{d}-{run}", base, addresses, d, args.keys, FAST)
                try:
                    with Client(cluster.seeds, timeout=60.0) as client:
                        t0 = time.perf_counter()
                        client.call("n1", "ae_tree")
                        client.call("n2", "ae_tree")
                        warm = time.perf_counter() - t0
                        result = repair_pass(cluster.seeds)
                        result["load_s"] = warm
                        assert roots_agree(client), "roots differ after the pass"
                        runs.append(result)
                finally:
                    cluster.stop_all()
                    shutil.rmtree(cluster.data_dir, ignore_errors=True)
                print(f"  D={d} run {run + 1}: {result['s']:.2f} s, {result['bytes'] / 1e3:.1f} kB, "
                      f"{result['keys']:.0f} keys repaired (trees loaded in {result['load_s']:.2f} s)", flush=True)
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            print(f"D={d}: full exchange median {med['s']:.2f} s, {med['bytes'] / 1e3:.1f} kB "
                  f"({med['bytes'] / max(1, d):.0f} B per diverged key), {med['keys']:.0f} keys repaired", flush=True)
        rates = [] if args.no_p99 else [int(x) for x in args.p99_rates.split(",") if x]
        intervals = [int(x) for x in args.checkpoint_intervals.split(",") if x]
        combos = [(rate, interval) for rate in rates for interval in intervals]
        lat_runs: dict[tuple[int, int], list[dict[str, Any]]] = {combo: [] for combo in combos}
        for run in range(args.runs):
            for rate, interval in combos:  # interleaved, so drift on the shared machine hits each alike
                extra = THROTTLED + f"rate_objects = {rate}\n"
                cluster = start_pair(root / f"p99-{run}-{rate}-{interval}", base, addresses,
                                     args.p99_diverged, args.keys, extra, {"checkpoint_interval_ms": interval})
                try:
                    result = asyncio.run(latency_under_repair(cluster.seeds, args.p99_puts, not args.cold))
                    lat_runs[rate, interval].append(result)
                finally:
                    cluster.stop_all()
                    shutil.rmtree(cluster.data_dir, ignore_errors=True)
                r = result
                print(f"  p99 run {run + 1}, rate_objects {rate}, checkpoint_interval_ms {interval}: idle p50 "
                      f"{r['idle_p50']:.2f} p99 {r['idle_p99']:.2f} ms; during repair p50 {r['busy_p50']:.2f} p99 "
                      f"{r['busy_p99']:.2f} ms ({r['busy_puts']} puts, repair {r['repair_s']:.1f} s)", flush=True)
        for rate, interval in combos:
            runs_ = lat_runs[rate, interval]
            med = {k: statistics.median(float(r[k]) for r in runs_) for k in runs_[0]}
            ratio = statistics.median(float(r["busy_p99"]) / float(r["idle_p99"]) for r in runs_)
            print(f"put latency, repair of {args.p99_diverged} diverged keys at rate_objects {rate}, "
                  f"checkpoint_interval_ms {interval}: idle p99 {med['idle_p99']:.2f} ms, during repair p99 "
                  f"{med['busy_p99']:.2f} ms (median ratio x{ratio:.2f}); p50 {med['idle_p50']:.2f} -> "
                  f"{med['busy_p50']:.2f} ms; repair {med['repair_s']:.1f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
