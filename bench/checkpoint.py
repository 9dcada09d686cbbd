"""What WAL checkpoints cost the committing thread: SQLite's own (inside commits) versus the
node's checkpointer thread (dynq/store/checkpointer.py), interleaved in one process.

    python bench/checkpoint.py [--keys 200000] [--batch 64] [--commits 1500] [--rounds 3]

Each round copies one prepared database per mode, then commits --commits transactions of
--batch random rewrites through the node's write path (objects + Merkle leaf rows), the
shape of a repair or a transfer landing on a large database. Prints per mode the commit
latency p50/p99/max, the largest WAL file seen, and the ratio thread/inline; medians of
the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.putget import pct  # noqa: E402
from dynq.config import parse_config  # noqa: E402
from dynq.node import Node  # noqa: E402
from dynq_client.versions import encode_object, update  # noqa: E402


def open_node(data_dir: Path) -> Node:
    return Node(parse_config({
        "node": {"name": "n1", "listen": "tcp://127.0.0.1:1", "data_dir": str(data_dir)},
        "cluster": {"n": 1, "r": 1, "w": 1, "q": 64},
        "storage": {"synchronous": "normal"},
    }))


def write(node: Node, keys: list[bytes], value: bytes, batch: int, loop: asyncio.AbstractEventLoop,
          wal_sizes: list[int] | None = None) -> list[float]:
    """Commit new versions of ``keys`` in transactions of ``batch``; seconds per commit."""
    times: list[float] = []
    for i in range(0, len(keys), batch):
        staged = []
        for key in keys[i:i + batch]:
            base = node.storage.current(key)
            obj = update(base, dict(base.clock) if base else {}, node.actor, value, 1)
            staged.append((key, node.ring.partition_for(key), obj, encode_object(obj)))
        start = time.perf_counter()
        for key, partition, obj, blob in staged:
            node.storage.stage(key, partition, obj, blob, lambda e: None, loop)
        node.storage.flush()
        times.append(time.perf_counter() - start)
        if wal_sizes is not None:
            wal_sizes.append(node.storage.wal_bytes())
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keys", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--commits", type=int, default=1500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--wal-limit-mb", type=int, default=64)
    parser.add_argument("--interval-ms", type=int, default=100)
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    root = Path(tempfile.mkdtemp(prefix="dynq-ckpt-bench-"))
    value = b"v" * args.value_size
    keys = [b"key:%08d" % i for i in range(args.keys)]
    try:
        base = root / "base"
        node = open_node(base)
        write(node, keys, value, 5000, loop)
        node.storage.close()
        print(f"base: {args.keys} keys of {args.value_size} B, "
              f"{(base / 'dynq.db').stat().st_size / 1e6:.0f} MB", flush=True)
        results: dict[str, list[dict[str, float]]] = {"inline": [], "thread": []}
        for rnd in range(args.rounds):
            for mode in results:
                work = root / f"{mode}-{rnd}"
                shutil.copytree(base, work)
                node = open_node(work)
                if mode == "thread":
                    node.storage.start_checkpointer(args.interval_ms, args.wal_limit_mb * 1024 * 1024)
                rng = random.Random(rnd)
                sample = [keys[rng.randrange(args.keys)] for _ in range(args.commits * args.batch)]
                wal: list[int] = []
                times = write(node, sample, value, args.batch, loop, wal)
                cp = node.storage.checkpointer
                restarts = cp.stats.restarts if cp else 0
                node.storage.close()
                shutil.rmtree(work)
                r = {"p50": pct(times, 0.5), "p99": pct(times, 0.99), "max": max(times) * 1e3,
                     "wal_mb": max(wal) / 1e6, "restarts": restarts,
                     "rows_s": len(sample) / sum(times)}
                results[mode].append(r)
                print(f"  round {rnd + 1} {mode:6}: commit p50 {r['p50']:.2f} ms, p99 {r['p99']:.2f} ms, "
                      f"max {r['max']:.1f} ms, WAL max {r['wal_mb']:.1f} MB, restarts {restarts}, "
                      f"{r['rows_s']:.0f} rows/s", flush=True)
        med = {mode: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for mode, rs in results.items()}
        for mode, m in med.items():
            print(f"{mode:6}: commit p50 {m['p50']:.2f} ms, p99 {m['p99']:.2f} ms, max {m['max']:.1f} ms, "
                  f"WAL max {m['wal_mb']:.1f} MB, {m['rows_s']:.0f} rows/s (medians of {args.rounds})")
        t, i = med["thread"], med["inline"]
        print(f"thread/inline: p50 x{t['p50'] / i['p50']:.2f}, p99 x{t['p99'] / i['p99']:.2f}, "
              f"rows/s x{t['rows_s'] / i['rows_s']:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
