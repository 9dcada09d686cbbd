"""Is the cost flat as data grows? dynq at a small and a large key count, in one run.

    python bench/scale.py [--keys 10000000] [--small 10000] [--value-size 100]
                          [--seconds 10] [--concurrency 32] [--rounds 2] [--json]

For each size, a 3-node cluster with `dynq up`'s defaults (N=3 R=2 W=2, Q=64, CURVE,
synchronous=full) is started once (so each node makes its database, actor and cluster
state), stopped, and its three databases are filled directly: every key's object (the
encoding a put makes, one sibling of ``--value-size`` bytes) with its Merkle leaf, and
every partition marked verified, exactly as the write path would have left them (written
in bulk because a 10M-key load through puts would take hours here). Then:

* **restart**: the nodes are started and the seconds until a read at R=N (every node
  serving) of a loaded key succeeds;
* **throughput**: closed loop, ``--concurrency`` in flight, ``--seconds`` each: gets of
  random loaded keys, then puts of new keys (inserts into the big tables), alternating
  sizes per round (small, large, large, small, ...);
* **memory**: each node's RSS after the load phases (VmRSS from /proc).

Prints the ratios large/small (issue 15: throughput >= 0.8, restart <= 10 s at 10M keys,
RSS bounded by SQLite's cache, not growing with the key count). Needs about 300 bytes of
disk per key and node. Every phase is bounded in time; nodes are stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import apsw

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynq.localcluster import LocalCluster, free_ports  # noqa: E402
from dynq.repair.merkle import SEGMENTS, hash_bytes, leaf_hash, segment_of  # noqa: E402
from dynq_client import AsyncClient, Client  # noqa: E402
from dynq_client.errors import DynqError  # noqa: E402
from dynq_client.ring import RING_BITS, Ring, key_hash  # noqa: E402
from dynq_client.versions import encode_object, update  # noqa: E402

CHUNK = 200_000
PHASE_BOUND_S = 300.0


def key_name(i: int) -> bytes:
    return b"scale:%010d" % i


def bulk_load(dbs: list[Path], ring: Ring, keys: int, blob: bytes) -> float:
    """Fill the nodes' databases (every node replicates every key: N = 3 on 3 nodes) with
    ``keys`` objects and their leaves; returns seconds. Both tables are written in their
    primary-key order (objects by key, leaves partition by partition), so the load appends
    to the b-trees instead of inserting at random places."""
    start = time.perf_counter()
    bits = ring.q.bit_length() - 1
    conns = [apsw.Connection(str(db)) for db in dbs]
    for conn in conns:
        conn.execute("PRAGMA synchronous=OFF")
    by_partition: list[list[int]] = [[] for _ in range(ring.q)]
    for lo in range(0, keys, CHUNK):
        names = [key_name(i) for i in range(lo, min(keys, lo + CHUNK))]
        parts = [key_hash(k) >> (RING_BITS - bits) for k in names]
        for i, p in enumerate(parts, lo):
            by_partition[p].append(i)
        objects = [(k, p, blob) for k, p in zip(names, parts)]
        for conn in conns:
            with conn:
                conn.executemany("INSERT INTO objects(key, partition, obj) VALUES(?, ?, ?)", objects)
    for p, members in enumerate(by_partition):
        names = [key_name(i) for i in members]
        leaves = sorted((p, segment_of(key_hash(k), bits, SEGMENTS), k, hash_bytes(leaf_hash(k, blob)), 0)
                        for k in names)
        for conn in conns:
            with conn:
                conn.executemany("INSERT INTO ae_leaves(partition, segment, key, h, tomb_ms) "
                                 "VALUES(?, ?, ?, ?, ?)", leaves)
    now = int(time.time() * 1000)
    for conn in conns:
        with conn:
            conn.executemany("INSERT INTO ae_partitions(partition, verified_ms) VALUES(?, ?) "
                             "ON CONFLICT(partition) DO UPDATE SET verified_ms = excluded.verified_ms",
                             [(p, now) for p in range(ring.q)])
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    return time.perf_counter() - start


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def serving_after_start(cluster: LocalCluster, probe: bytes, bound_s: float = 300.0) -> float:
    """Start the nodes; seconds until a read at R=N of ``probe`` succeeds (a fresh client
    each attempt: bootstrap itself fails while no node answers yet)."""
    start = time.perf_counter()
    cluster.start_all()
    deadline = start + bound_s
    while True:
        try:
            with Client(cluster.seeds, timeout=2.0, curve=cluster.client_keys("app"), keys=None) as db:
                if db.get(probe, r=3).found:
                    return time.perf_counter() - start
        except DynqError:
            pass
        if time.perf_counter() > deadline:
            raise RuntimeError(f"the cluster did not serve {probe!r} within {bound_s} s")
        time.sleep(0.05)


async def closed(cluster: LocalCluster, op: str, keys: int, seconds: float, concurrency: int,
                 tag: str, value: bytes) -> float:
    """ops/s of ``op`` at ``concurrency`` in flight for ``seconds``."""
    rng = random.Random(tag)
    done = 0
    async with AsyncClient(cluster.seeds, timeout=10.0, curve=cluster.client_keys("app"), keys=None) as db:
        for i in range(50):  # connections and handshakes before the clock
            await db.get(key_name(i))
        stop = time.perf_counter() + seconds
        counter = iter(range(10**9))

        async def worker() -> None:
            nonlocal done
            while time.perf_counter() < stop:
                if op == "get":
                    await db.get(key_name(rng.randrange(keys)))
                else:
                    await db.put(b"%s-%d" % (tag.encode(), next(counter)), value)
                done += 1

        start = time.perf_counter()
        await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), seconds + PHASE_BOUND_S)
        return done / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=10_000_000)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", default=None, help="where the databases go (default: a temp dir)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    value = os.urandom(args.value_size)
    blob = encode_object(update(None, {}, "n1.bulk", value, int(time.time() * 1000)))
    out: dict[str, Any] = {"config": vars(args), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="dynq-scale-", dir=args.dir) as tmp:
        clusters: dict[int, LocalCluster] = {}
        try:
            for size in (args.small, args.keys):
                cluster = LocalCluster(Path(tmp) / str(size), [f"tcp://127.0.0.1:{p}" for p in free_ports(3)],
                                       security="curve")
                clusters[size] = cluster
                cluster.start_all()
                cluster.wait_ready(timeout=60)
                with Client(cluster.seeds, curve=cluster.client_keys("app"), keys=None) as db:
                    assert db.table is not None
                    ring = db.table.ring
                cluster.stop_all()
                assert all(ring.partition_for(key_name(i)) == key_hash(key_name(i)) >> (RING_BITS - ring.q.bit_length() + 1)
                           for i in range(100))  # the partition as the node computes it
                load_s = bulk_load([node.config_path.parent / "dynq.db" for node in cluster.nodes.values()],
                                   ring, size, blob)
                print(f"{size} keys loaded into 3 databases in {load_s:.0f} s", file=sys.stderr, flush=True)
                restart = serving_after_start(cluster, key_name(size - 1))
                print(f"{size} keys: serving {restart:.2f} s after start", file=sys.stderr, flush=True)
                out["sizes"][size] = {"restart_s": round(restart, 2), "gets": [], "puts": []}
            for n in range(args.rounds):
                order = [args.small, args.keys] if n % 2 == 0 else [args.keys, args.small]
                for size in order:
                    c, rec = clusters[size], out["sizes"][size]
                    for op in ("get", "put"):
                        rate = asyncio.run(closed(c, op, size, args.seconds, args.concurrency, f"r{n}-{op}", value))
                        rec[f"{op}s"].append(round(rate, 1))
                        print(f"round {n + 1} {size} keys: {op}s {rate:.0f}/s", file=sys.stderr, flush=True)
            for size, c in clusters.items():
                out["sizes"][size]["rss_mib"] = {name: round(rss_mib(node.process.pid), 1)
                                                for name, node in c.nodes.items() if node.process}
        finally:
            for c in clusters.values():
                c.stop_all()
    small, big = out["sizes"][args.small], out["sizes"][args.keys]
    out["ratios"] = {op: round(statistics.median(b / s for b, s in zip(big[op], small[op])), 3)
                     for op in ("gets", "puts")}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"dynq at {args.small} and {args.keys} keys ({args.value_size} B values, {args.concurrency} in flight, "
          f"{args.rounds} alternating rounds of {args.seconds:.0f} s):")
    for size, rec in out["sizes"].items():
        print(f"  {size:>10} keys: serving {rec['restart_s']:.2f} s after start; gets/s {rec['gets']}, "
              f"puts/s {rec['puts']}; RSS MiB {rec['rss_mib']}")
    print(f"  large/small (median of per-round ratios): gets x{out['ratios']['gets']:.2f}, "
          f"puts x{out['ratios']['puts']:.2f} (bound 0.8)")


if __name__ == "__main__":
    main()
