"""What keeping Merkle leaves costs the write path: group commits with and without the
anti-entropy hook, interleaved in one process (same disk, same moment).

    python bench/leaf_cost.py [--rows 20000] [--batch 15] [--value-size 1024] [--rounds 5]

Each round commits --rows new objects in transactions of --batch (a typical group commit
at 32 puts in flight), once with the hook (leaf row read + upsert, tree update) and once
without, into separate databases; then rewrites them (the hook's old-hash read hits).
Prints microseconds per row and the ratio, medians of the rounds.
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

from dynq.config import parse_config  # noqa: E402
from dynq.node import Node  # noqa: E402
from dynq_client.versions import encode_object, update  # noqa: E402


def open_node(data_dir: Path, synchronous: str) -> Node:
    return Node(parse_config({
        "node": {"name": "n1", "listen": "tcp://127.0.0.1:1", "data_dir": str(data_dir)},
        "cluster": {"n": 1, "r": 1, "w": 1, "q": 64},
        "storage": {"synchronous": synchronous},
    }))


def commit_all(node: Node, keys: list[bytes], value: bytes, batch: int, loop: asyncio.AbstractEventLoop) -> float:
    """Seconds per row to stage and commit new versions of ``keys`` in batches."""
    objs = []
    for key in keys:  # objects made before timing: only the commit is measured
        base = node.storage.current(key)
        obj = update(base, dict(base.clock) if base else {}, node.actor, value, 1)
        objs.append((key, node.ring.partition_for(key), obj, encode_object(obj)))
    start = time.perf_counter()
    for i in range(0, len(objs), batch):
        for key, partition, obj, blob in objs[i:i + batch]:
            node.storage.stage(key, partition, obj, blob, lambda e: None, loop)
        node.storage.flush()
    return (time.perf_counter() - start) / len(keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=15)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--synchronous", choices=["full", "normal"], default="normal")
    args = parser.parse_args()
    loop = asyncio.new_event_loop()
    results: dict[str, list[float]] = {"insert, hook": [], "insert, no hook": [], "rewrite, hook": [],
                                       "rewrite, no hook": []}
    with tempfile.TemporaryDirectory(prefix="dynq-leafcost-") as tmp:
        for r in range(args.rounds):
            keys = [b"r%d-key:%d" % (r, i) for i in range(args.rows)]
            value = bytes(args.value_size)
            for hook in (True, False) if r % 2 == 0 else (False, True):  # alternate who goes first
                node = open_node(Path(tmp) / f"{r}-{hook}", args.synchronous)
                for p in range(64):
                    node.trees.tree(p)  # loaded: commits update them in memory too
                if not hook:
                    node.storage.observer = None
                label = "hook" if hook else "no hook"
                results[f"insert, {label}"].append(commit_all(node, keys, value, args.batch, loop))
                results[f"rewrite, {label}"].append(commit_all(node, keys, value, args.batch, loop))
                node.storage.close()
    loop.close()
    med = {k: statistics.median(v) * 1e6 for k, v in results.items()}
    print(f"{args.rows} rows x {args.rounds} rounds, {args.value_size} B values, batches of {args.batch}, "
          f"synchronous={args.synchronous}; medians, us per row:")
    for op in ("insert", "rewrite"):
        ratio = statistics.median(a / b for a, b in zip(results[f"{op}, hook"], results[f"{op}, no hook"]))
        print(f"  {op:<8} with leaves {med[f'{op}, hook']:7.1f}   without {med[f'{op}, no hook']:7.1f}   "
              f"ratio x{ratio:.2f}")


if __name__ == "__main__":
    main()
