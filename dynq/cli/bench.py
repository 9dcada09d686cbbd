"""`dynq bench`: YCSB core workloads against a running cluster."""

from __future__ import annotations

import json
import sys

import click

from dynq_client.errors import DynqError

from .common import CURVE_KEYS, fail, seed_option, seeds_of, timeout_option


@click.command()
@click.option("--workload", type=click.Choice(["a", "b", "c", "f", "w"], case_sensitive=False), default="a",
              show_default=True, help="YCSB core workload: a 50/50 read/update, b 95/5, c read only, f read-modify-write;"
              " w: write only (inserts of new keys).")
@click.option("--records", default=100_000, show_default=True, type=click.IntRange(1), help="Keys loaded and used.")
@click.option("--duration", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds to run.")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 10_000),
              help="Requests in flight (with --target-rate: the most in flight at once).")
@click.option("--value-size", default=1024, show_default=True, type=click.IntRange(0), help="Bytes per value.")
@click.option("--r", type=int, default=None, help="Read quorum (default: the cluster's).")
@click.option("--w", type=int, default=None, help="Write quorum (default: the cluster's).")
@click.option("--distribution", type=click.Choice(["zipfian", "uniform"]), default="zipfian", show_default=True,
              help="Key popularity: YCSB's scrambled zipfian (theta 0.99) or uniform.")
@click.option("--load/--no-load", default=True, show_default=True, help="Insert every record first.")
@click.option("--operations", type=click.IntRange(1), default=None, help="Stop after this many operations.")
@click.option("--bench-seed", type=int, default=None, help="Random seed of the key choice and op mix.")
@click.option("--target-rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Open loop: issue this many requests/s on a schedule, latency from each one's intended start.")
@click.option("--arrival", type=click.Choice(["poisson", "fixed"]), default="poisson", show_default=True,
              help="With --target-rate: Poisson arrivals or a fixed interval.")
@click.option("--coordination", type=click.Choice(["client", "server"]), default="client", show_default=True,
              help="Who coordinates reads: the client (straight to the replicas) or a replica of the key.")
@click.option("--read-fanout", type=click.Choice(["quorum", "all"]), default="quorum", show_default=True,
              help="Client-coordinated reads ask R replicas (hedging a slow one) or all N.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
@seed_option
@timeout_option
def bench(workload: str, records: int, duration: float, concurrency: int, value_size: int, r: int | None,
          w: int | None, distribution: str, load: bool, operations: int | None, bench_seed: int | None,
          target_rate: float | None, arrival: str, coordination: str, read_fanout: str, as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Run a YCSB core workload against a running cluster: ops/s and latency p50/p99/p99.9
    per operation, with a live progress line on stderr."""
    import asyncio
    import time

    from ..bench import BenchConfig, run_bench

    config = BenchConfig(workload=workload.lower(), records=records, duration=duration, concurrency=concurrency,
                         value_size=value_size, r=r, w=w, distribution=distribution, load=load,
                         max_ops=operations, timeout=timeout, seed=bench_seed, target_rate=target_rate,
                         arrival=arrival, coordination=coordination, read_fanout=read_fanout)
    tty = sys.stderr.isatty()
    last = [0.0]

    def progress(line: str) -> None:  # a live line on a terminal, a line every 5 s in a log
        now = time.monotonic()
        if tty or now - last[0] >= 5.0:
            last[0] = now
            click.echo(("\r\033[K" + line) if tty else line, err=True, nl=not tty)

    try:
        result = asyncio.run(run_bench(seeds_of(seed), config, progress, curve=CURVE_KEYS[0] if CURVE_KEYS else None))
    except DynqError as exc:
        fail(exc)
    if tty:
        click.echo("", err=True)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.text())
    if result.total_ops == 0:
        sys.exit(1)

