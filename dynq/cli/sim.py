"""`dynq sim`: the deterministic simulator (real nodes and clients, virtual time, seeded faults)."""

from __future__ import annotations

import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import click

PROFILES = ("ci", "soak")


def _run(seed: int, profile: str, mutation: str | None, buckets: bool = True, ttl: bool = False,
         dt: bool = False) -> dict[str, Any]:
    from dynq.sim.harness import run_seed

    return run_seed(seed, profile, mutation, buckets, ttl, dt).summary()


def _line(s: dict[str, Any]) -> str:
    o = s["options"]
    head = (f"seed {s['seed']}: {'ok' if s['ok'] else 'FAILED'}  {s['wall_s']:.2f}s wall, {s['virtual_s']:.1f}s virtual, "
            f"{s['events']} events, trace {s['trace_hash']}")
    opts = (f"  nodes={o['nodes']} n={o['n']} r={o['r']} w={o['w']} q={o['q']} clients={o['clients']} "
            f"keys={o['keys']} faults={','.join(o['faults'])} injected={s['faults']} knobs={o['knobs']}")
    lines = [head, opts]
    if o.get("buckets"):
        lines.append("  buckets: " + " ".join(f"{name}(n={n} r={r} w={w})" for name, n, r, w, _ in o["buckets"]))
    if s["error"]:
        lines.append(f"  error: {s['error']}")
    for name, v in s["verdicts"].items():
        if not v["ok"]:
            lines.append(f"  {name}: FAILED {v['counts']}")
            lines.extend(f"    {p}" for p in v["problems"][:10])
    if not s["ok"]:
        lines.append(f"  reproduce: {s['replay']}")
    return "\n".join(lines)


@click.command()
@click.option("--seeds", "count", type=click.IntRange(1), default=None, help="Run this many seeds (from --base).")
@click.option("--seed", "one", type=int, default=None, help="Run this one seed.")
@click.option("--base", type=int, default=1, show_default=True, help="The first seed of --seeds.")
@click.option("--profile", type=click.Choice(PROFILES), default="ci", show_default=True,
              help="ci: 15-30 s of faults per seed; soak: 1-4 minutes, whole-cluster power loss too.")
@click.option("--mutation", default=None, help="Run with a planted bug (see dynq.sim.mutations); it must fail.")
@click.option("--no-buckets", "no_buckets", is_flag=True,
              help="Without the buckets workload (replays seeds found before it existed).")
@click.option("--ttl", "ttl", is_flag=True,
              help="With the ttl workload: some puts expire after 1-5 s and expired objects are reclaimed "
                   "within seconds (no read may return a value after its expiry, nothing superseded returns).")
@click.option("--dt", "dt", is_flag=True,
              help="With the data-type workload: counter increments, set adds and observed removes in typed "
                   "buckets (the final counter and sets are checked against the acknowledged ops).")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="Seeds run in parallel processes.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per seed.")
@click.option("--trace-hash", "trace_only", is_flag=True, help="Print only each seed's trace hash.")
def sim(count: int | None, one: int | None, base: int, profile: str, mutation: str | None, no_buckets: bool,
        ttl: bool, dt: bool, jobs: int, as_json: bool, trace_only: bool) -> None:
    """Simulate a cluster of real nodes and clients on one virtual-time loop under seeded
    faults (crashes, power loss, partitions, clogs, slow links, full disks, failed fsyncs),
    half the seeds with named buckets (n 1/3/5, siblings or lww), then check that no
    acknowledged write was lost (lww buckets excepted), no value appeared from nowhere, one
    dot carries one value, lww copies hold one sibling, and after heal the replicas
    converged and every key is stored on exactly its bucket's n primaries. Exit code 0: every seed
    passed; 1: some failed (each failure prints its seed and a reproduction command)."""
    from dynq.sim.mutations import MUTATIONS

    if mutation is not None and mutation not in MUTATIONS:
        raise click.BadParameter(f"unknown mutation; one of: {', '.join(sorted(MUTATIONS))}", param_hint="--mutation")
    if (count is None) == (one is None):
        raise click.UsageError("give --seeds N or --seed S")
    seeds = [one] if one is not None else list(range(base, base + (count or 0)))
    started = time.perf_counter()
    failed: list[int] = []
    events = 0
    virtual = 0.0

    def report(s: dict[str, Any]) -> None:
        nonlocal events, virtual
        events += s["events"]
        virtual += s["virtual_s"]
        if not s["ok"]:
            failed.append(s["seed"])
        if trace_only:
            click.echo(f"{s['seed']} {s['trace_hash']}" if len(seeds) > 1 else s["trace_hash"])
        elif as_json:
            click.echo(json.dumps(s, sort_keys=True, default=str))
        else:
            click.echo(_line(s))
        sys.stdout.flush()

    if jobs > 1 and len(seeds) > 1:
        ctx = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
            for s in pool.map(_run, seeds, [profile] * len(seeds), [mutation] * len(seeds),
                              [not no_buckets] * len(seeds), [ttl] * len(seeds), [dt] * len(seeds)):
                report(s)
    else:
        for seed in seeds:
            report(_run(seed, profile, mutation, not no_buckets, ttl, dt))
    wall = time.perf_counter() - started
    if not trace_only:
        summary = {"seeds": len(seeds), "failed": failed, "wall_s": round(wall, 2),
                   "seeds_per_min": round(len(seeds) / wall * 60, 1), "virtual_s": round(virtual, 1),
                   "events_per_s": round(events / wall)}
        if as_json:
            click.echo(json.dumps({"summary": summary}))
        else:
            click.echo(f"{len(seeds)} seeds, {len(failed)} failed in {wall:.1f}s ({summary['seeds_per_min']} seeds/min, "
                       f"{summary['events_per_s']} events/s)" + (f": seeds {failed}" if failed else ""))
    if failed:
        sys.exit(1)
