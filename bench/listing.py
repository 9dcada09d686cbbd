"""Listing cost: a big bucket next to a small one on the same nodes, and get_many vs
sequential gets.

    python bench/listing.py [--keys 1000000] [--small 10] [--runs 3]

Three nodes (ring n=3, Q=64) with two buckets of n=1, ``big`` (``--keys`` keys) and
``small`` (``--small`` keys), built directly in the SQLite files through the node's own
storage path (each key on its one replica, Merkle leaves written as in production); then
the nodes start as real processes and a client lists each bucket (``keys()``, pages of
1000), reporting keys/s and wall time, medians of ``--runs``. Then 100 keys of a bucket
are read with one ``get_many`` and with 100 sequential ``get`` calls, alternating,
medians of ``--runs`` (same cluster, same minutes).
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

from dynq_client import Client  # noqa: E402
from dynq_client import buckets as b  # noqa: E402
from dynq_client.buckets import new_bucket  # noqa: E402
from dynq_client.versions import encode_object, update  # noqa: E402

from bench.putget import free_ports  # noqa: E402
from dynq.config import parse_config  # noqa: E402
from dynq.localcluster import LocalCluster  # noqa: E402
from dynq.node import Node  # noqa: E402

Q = 64
NO_AE = "[anti_entropy]\nenabled = false\n"


def open_node(data_dir: Path, name: str, addresses: list[str]) -> Node:
    members = [{"name": f"n{i + 1}", "address": a} for i, a in enumerate(addresses)]
    cfg = parse_config({
        "node": {"name": name, "listen": addresses[int(name[1:]) - 1], "data_dir": str(data_dir)},
        "cluster": {"n": 3, "r": 2, "w": 2, "q": Q, "members": members},
        "storage": {"synchronous": "normal"},
    })
    return Node(cfg)


def _ignore(error: object) -> None:
    pass


def build(root: Path, addresses: list[str], big: int, small: int) -> float:
    """Every node's database with both buckets in its cluster state and its share of the keys."""
    nodes = {f"n{i + 1}": open_node(root / f"n{i + 1}", f"n{i + 1}", addresses) for i in range(len(addresses))}
    state = next(iter(nodes.values())).cluster.state
    for name in ("big", "small"):
        state = state.with_bucket(new_bucket(name, n=1, members=len(addresses)))
    for node in nodes.values():
        node.cluster.adopt(state, "bench setup")
    loop = asyncio.new_event_loop()
    start = time.perf_counter()
    try:
        for bucket, count in (("big", big), ("small", small)):
            staged = 0
            for i in range(count):
                skey = b.storage_key(bucket, b"key:%08d" % i)
                partition = state.ring.partition_for(skey)
                node = nodes[state.ring.preference_list(partition, 1).primaries[0]]
                obj = update(None, {}, node.actor, b"x" * 100, int(time.time() * 1000))
                node.storage.stage(skey, partition, obj, encode_object(obj), _ignore, loop)
                staged += 1
                if staged % 5000 == 0:
                    for n in nodes.values():
                        n.storage.flush()
            for n in nodes.values():
                n.storage.flush()
    finally:
        loop.close()
    elapsed = time.perf_counter() - start
    for node in nodes.values():
        node.storage.close()
    return elapsed


def list_bucket(seeds: list[str], bucket: str) -> tuple[int, float]:
    with Client(seeds, timeout=30.0) as db:
        start = time.perf_counter()
        count = sum(1 for _ in db.bucket(bucket).keys(page_size=1000))
        return count, time.perf_counter() - start


def reads(seeds: list[str], runs: int) -> tuple[list[float], list[float]]:
    many: list[float] = []
    sequential: list[float] = []
    keys = [b"key:%08d" % i for i in range(100)]
    with Client(seeds, timeout=30.0) as db:
        handle = db.bucket("big")
        handle.get_many(keys)  # warm connections
        for _ in range(runs):
            start = time.perf_counter()
            results = handle.get_many(keys)
            many.append(time.perf_counter() - start)
            assert all(not isinstance(r, Exception) and r.found for r in results.values())
            start = time.perf_counter()
            for key in keys:
                handle.get(key)
            sequential.append(time.perf_counter() - start)
    return many, sequential


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dynq-listing-") as tmp:
        root = Path(tmp) / "cluster"
        addresses = [f"tcp://127.0.0.1:{p}" for p in free_ports(3)]
        cluster = LocalCluster(root, addresses, n=3, q=Q, synchronous="normal", extra_config=NO_AE)
        cluster.write_configs()
        built = build(root, addresses, args.keys, args.small)
        print(f"built {args.keys} + {args.small} keys in {built:.1f} s", flush=True)
        cluster.start_all()
        try:
            cluster.wait_ready(timeout=120)
            for bucket in ("small", "big", "small"):  # small before and after big: nothing cached matters
                results = [list_bucket(cluster.seeds, bucket) for _ in range(args.runs)]
                counts = {c for c, _ in results}
                wall = statistics.median(s for _, s in results)
                count = counts.pop()
                print(f"list {bucket:<5} {count:>9} keys: median {wall * 1000:9.1f} ms, "
                      f"{count / wall:10.0f} keys/s ({args.runs} runs)", flush=True)
            many, sequential = reads(cluster.seeds, args.runs)
            print(f"100 keys: get_many median {statistics.median(many) * 1000:.1f} ms, "
                  f"100 sequential gets median {statistics.median(sequential) * 1000:.1f} ms "
                  f"(x{statistics.median(sequential) / statistics.median(many):.1f})", flush=True)
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
