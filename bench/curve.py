"""Put/get with CurveZMQ versus without, measured in the same invocation.

    python bench/curve.py [--keys 10000] [--value-size 1024] [--runs 3]

Each run starts a fresh 3-node cluster with security "none" and one with "curve", and runs
bench/putget.py's workload on each (application key for the curve one). Prints the median
of each and the curve/none ratios.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.putget import one_run, parse_args  # noqa: E402
from dynq.localcluster import LocalCluster, free_ports  # noqa: E402


def measure(security: str, keys: int, value_size: int, run: int, synchronous: str) -> dict[str, dict[str, float]]:
    with tempfile.TemporaryDirectory(prefix=f"dynq-bench-{security}-") as tmp:
        cluster = LocalCluster(Path(tmp), [f"tcp://127.0.0.1:{p}" for p in free_ports(3)],
                               synchronous=synchronous, security=security)
        cluster.start_all()
        try:
            cluster.wait_ready()
            return asyncio.run(one_run(cluster.seeds, keys, value_size, run, cluster.client_keys("app")))
        finally:
            cluster.stop_all()


def main() -> None:
    args = parse_args(__doc__)
    results: dict[str, list[dict[str, dict[str, float]]]] = {"none": [], "curve": []}
    for run in range(args.runs):
        for security in ("none", "curve"):  # interleaved, so drift hits both alike
            results[security].append(measure(security, args.keys, args.value_size, run, args.synchronous))
    print(f"median of {args.runs} runs, {args.value_size} B values (curve/none ratio):")
    for name in results["none"][0]:
        med = {sec: {k: statistics.median(r[name][k] for r in results[sec]) for k in ("ops_s", "p50_ms", "p99_ms")}
               for sec in results}
        n, c = med["none"], med["curve"]
        print(f"  {name:<10} none {n['ops_s']:>7.0f}/s p99 {n['p99_ms']:6.2f} ms | curve {c['ops_s']:>7.0f}/s "
              f"p99 {c['p99_ms']:6.2f} ms | throughput x{c['ops_s'] / n['ops_s']:.2f}, p99 x{c['p99_ms'] / n['p99_ms']:.2f}")


if __name__ == "__main__":
    main()
