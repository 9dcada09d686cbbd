"""Merkle tree rebuild speed: keys per second of CPU to rebuild every tree of a node from its
objects (leaves dropped) and to verify them with their leaves in place, for several
``[storage]`` settings in alternating runs of the same process.

    python bench/rebuild.py [--keys 1000000] [--runs 3] [--mmap-mb 0,1024] [--dir DIR]

A node's database of ``--keys`` keys (N=2, Q=64, 100-byte values) is written once through
the node's own storage path; each run copies it, opens a node on the copy with
``synchronous = "full"`` and the run's ``mmap_mb``, and runs the node's ``verify`` of every
partition in slices of 500 (the node's default), first with no leaves, then again with them.
Variants alternate (A B A B ...), so machine load moves both alike; medians are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.anti_entropy import Q, build_base, copy_db  # noqa: E402
from bench.putget import free_ports  # noqa: E402
from dynq.config import parse_config  # noqa: E402
from dynq.node import Node  # noqa: E402


def open_node(data_dir: Path, addresses: list[str], mmap_mb: int) -> Node:
    members = [{"name": f"n{i + 1}", "address": a} for i, a in enumerate(addresses)]
    return Node(parse_config({
        "node": {"name": "n1", "listen": addresses[0], "data_dir": str(data_dir)},
        "cluster": {"n": 2, "r": 1, "w": 2, "q": Q, "members": members},
        "storage": {"synchronous": "full", "mmap_mb": mmap_mb},
    }))


def one_run(base: Path, addresses: list[str], mmap_mb: int, keys: int) -> tuple[float, float]:
    """(keys/s of CPU from scratch, keys/s of CPU verifying with leaves)."""
    work = Path(tempfile.mkdtemp(prefix="dynq-rebuild-", dir=base.parent))
    try:
        copy_db(base, work)
        node = open_node(work, addresses, mmap_mb)
        with node.storage.conn:
            node.storage.conn.execute("DELETE FROM ae_leaves")
        node.trees.trees.clear()

        async def verify_all() -> float:
            start = time.process_time()
            for p in range(Q):
                await node.trees.verify(p)
            return time.process_time() - start

        scratch = asyncio.run(verify_all())
        again = asyncio.run(verify_all())
        node.storage.close()
        return keys / scratch, keys / again
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mmap-mb", default="0,1024", help="mmap_mb values to alternate")
    parser.add_argument("--dir", default=None, help="where to keep the base database (reused if present)")
    args = parser.parse_args()
    variants = [int(v) for v in args.mmap_mb.split(",")]
    root = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="dynq-rebuild-bench-"))
    addresses = [f"tcp://127.0.0.1:{p}" for p in free_ports(2)]
    base = root / f"base-{args.keys}"
    try:
        if not (base / "dynq.db").exists():
            print(f"writing {args.keys:,} keys ...", flush=True)
            build_base(base, addresses, args.keys, 100)
        results: dict[int, list[tuple[float, float]]] = {v: [] for v in variants}
        for run in range(args.runs):
            for v in variants:
                results[v].append(one_run(base, addresses, v, args.keys))
                s, a = results[v][-1]
                print(f"run {run + 1} mmap_mb={v}: from scratch {s:,.0f} keys/s CPU, verify {a:,.0f}", flush=True)
        print(f"\nmedians of {args.runs} runs, {args.keys:,} keys (keys per CPU second):")
        first = variants[0]
        for v in variants:
            s = statistics.median(r[0] for r in results[v])
            a = statistics.median(r[1] for r in results[v])
            ratios = [(x[0] / y[0], x[1] / y[1]) for x, y in zip(results[v], results[first])]
            rs = statistics.median(r[0] for r in ratios)
            ra = statistics.median(r[1] for r in ratios)
            print(f"  mmap_mb={v:>5}: from scratch {s:>9,.0f}  verify {a:>9,.0f}"
                  f"   vs mmap_mb={first}, per-pair medians: x{rs:.2f} / x{ra:.2f}")
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
