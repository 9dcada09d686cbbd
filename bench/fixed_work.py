"""A fixed amount of work on a fresh 3-node cluster, for timing the whole process from outside.

    python bench/fixed_work.py [--keys 6000] [--gets 2] [--concurrency 32] [--security curve|none]
                               [--storage KEY=INT ...]

Starts a 3-node cluster with `dynq up`'s defaults (N=3 R=2 W=2, CURVE unless told
otherwise) as child processes, puts ``--keys`` fresh 1 KiB values, gets each of them
``--gets`` times with ``--concurrency`` in flight, and stops the nodes. The nodes are reaped
by this process, so an outside timer (``/usr/bin/time -v``, or any tool that reads the
children's rusage) sees the CPU of the nodes and the client together: for before/after
comparisons of CPU per request, run the old and the new checkout alternately and compare
the ratios; start-up is the same in both. It also prints this process's own CPU (the
client's) per put and per get, phase by phase, for changes that touch only the client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dynq.localcluster import LocalCluster, free_ports  # noqa: E402
from dynq_client import AsyncClient, CurveKeys  # noqa: E402

BOUND_S = 600.0  # every phase is bounded in time


async def work(seeds: list[str], curve: CurveKeys | None, keys: int, gets: int, concurrency: int) -> None:
    value = os.urandom(1024)
    names = [f"fixed-{i}".encode() for i in range(keys)]
    async with AsyncClient(seeds, timeout=10.0, curve=curve, keys=None) as db:
        for op, todo in (("put", names), ("get", names * gets)):
            it = iter(todo)
            cpu = time.process_time()

            async def worker() -> None:
                for key in it:
                    if op == "put":
                        await db.put(key, value)
                    else:
                        await db.get(key)

            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(concurrency))), BOUND_S)
            print(f"client cpu per {op}: {(time.process_time() - cpu) / len(todo) * 1e6:.1f} us", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=6000)
    parser.add_argument("--gets", type=int, default=2, help="gets of each key")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--security", choices=["curve", "none"], default="curve")
    parser.add_argument("--storage", action="append", default=[], metavar="KEY=INT",
                        help="a [storage] setting of every node, e.g. checkpoint_interval_ms=1000 (repeatable)")
    args = parser.parse_args()
    storage = {key: int(value) for key, value in (item.split("=", 1) for item in args.storage)}
    with tempfile.TemporaryDirectory(prefix="dynq-fixed-") as tmp:
        cluster = LocalCluster(Path(tmp), [f"tcp://127.0.0.1:{p}" for p in free_ports(3)], security=args.security,
                               storage_options=storage)
        try:
            cluster.start_all()
            cluster.wait_ready(timeout=60)
            asyncio.run(work(cluster.seeds, cluster.client_keys("app"), args.keys, args.gets, args.concurrency))
        finally:
            cluster.stop_all()


if __name__ == "__main__":
    main()
