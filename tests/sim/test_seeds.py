"""CI seeds: the committed corpus, then a few hundred rotating seeds of the ci profile
within a wall-time budget, in parallel processes; any failure fails the test with every
failing seed and its reproduction command. A coverage check asserts that each fault kind
and the main repair paths fired somewhere in the batch (a simulator gone soft is caught).

Knobs (environment): ``DYNQ_SIM_SEEDS`` (most seeds, 300), ``DYNQ_SIM_BUDGET_S`` (wall
seconds for the rotating batch, 420), ``DYNQ_SIM_JOBS`` (processes, 2), ``DYNQ_SIM_BASE``
(first rotating seed; default derived from the commit, so each commit explores new seeds).
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest

from dynq.sim.harness import DEFAULT_FAULTS, run_seed

CORPUS = Path(__file__).with_name("seeds.txt")
SEEDS = int(os.environ.get("DYNQ_SIM_SEEDS", "300"))
BUDGET_S = float(os.environ.get("DYNQ_SIM_BUDGET_S", "420"))
JOBS = int(os.environ.get("DYNQ_SIM_JOBS", "2"))
MIN_SEEDS = 20  # fewer in the budget: the simulator (or the machine) is too slow to trust the batch
COVERED = ("hinted_writes", "hints_replayed", "read_repairs", "ae_keys_repaired", "commit_failures",
           "tombstones_reaped", "membership_changes", "wipes", "buckets_created", "bucket_writes", "lww_keys", "dt_ops", "expired_reclaimed")
"""Node paths (and harness faults) that must fire somewhere in a batch of MIN_SEEDS or more."""

pytestmark = pytest.mark.sim


def corpus() -> list[tuple[int, str, bool]]:
    """(seed, profile, with the buckets workload): ``no-buckets`` marks seeds found before
    buckets were simulated, so that they replay the run that found them."""
    out = []
    for line in CORPUS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            seed, *rest = line.split()
            profile = next((r for r in rest if r != "no-buckets"), "ci")
            out.append((int(seed), profile, "no-buckets" not in rest))
    return out


def rotating_base() -> int:
    if "DYNQ_SIM_BASE" in os.environ:
        return int(os.environ["DYNQ_SIM_BASE"])
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        head = "0"
    return 1_000_000 + int(head[:6] or "0", 16) * 1000


def _run(seed: int, profile: str, buckets: bool = True, ttl: bool = False, dt: bool = False) -> dict[str, Any]:
    return run_seed(seed, profile, buckets=buckets, ttl=ttl, dt=dt).summary()


def rotating_workloads(seed: int) -> tuple[bool, bool]:
    """(ttl, data types) of a rotating seed: one seed in five runs the ttl workload and one
    in three the data-type workload (a pure function of the seed, so each replays)."""
    return seed % 5 == 2, seed % 3 == 0


def _failure(s: dict[str, Any]) -> str:
    bad = [f"{n}: {v['problems'][:3]}" for n, v in s["verdicts"].items() if not v["ok"]]
    return f"seed {s['seed']}: {s['error'] or '; '.join(bad)}\n    reproduce: {s['replay']}"


@pytest.mark.timeout(1800)
def test_corpus_seeds_pass() -> None:
    """Every seed that ever failed passes now (each was a bug, fixed)."""
    failures = [_failure(s) for s in (_run(seed, profile, buckets) for seed, profile, buckets in corpus())
                if not s["ok"]]
    assert not failures, "\n".join(failures)


@pytest.mark.timeout(BUDGET_S + 600)  # the budget, plus the seeds still running when it ran out
def test_rotating_seeds_pass_and_cover_the_fault_paths() -> None:
    """Up to SEEDS new seeds within BUDGET_S: all pass; the batch exercised every fault kind
    and the hint, read-repair, anti-entropy and failed-commit paths."""
    base = rotating_base()
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=JOBS, mp_context=multiprocessing.get_context("fork")) as pool:
        pending: set[Future[dict[str, Any]]] = set()
        next_seed = base
        while next_seed < base + SEEDS or pending:
            while (len(pending) < JOBS and next_seed < base + SEEDS
                   and time.monotonic() - started < BUDGET_S):
                pending.add(pool.submit(_run, next_seed, "ci", True, *rotating_workloads(next_seed)))
                next_seed += 1
            if not pending:
                break
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            results.extend(f.result() for f in done)
    wall = time.monotonic() - started
    failures = [_failure(s) for s in sorted(results, key=lambda s: s["seed"]) if not s["ok"]]
    print(f"\nsim: {len(results)} seeds from {base} in {wall:.0f}s ({len(results) / wall * 60:.0f} seeds/min), "
          f"{len(failures)} failed")
    assert not failures, f"{len(failures)} of {len(results)} seeds failed:\n" + "\n".join(failures)
    assert len(results) >= MIN_SEEDS, f"only {len(results)} seeds ran in {BUDGET_S}s"
    faults: dict[str, int] = {}
    coverage: dict[str, int] = {}
    for s in results:
        for k, v in s["faults"].items():
            faults[k] = faults.get(k, 0) + v
        for k, v in s["coverage"].items():
            coverage[k] = coverage.get(k, 0) + v
    print(f"sim: faults {faults}\nsim: coverage {coverage}")
    assert not [f for f in DEFAULT_FAULTS if not faults.get(f)], faults
    assert not [c for c in COVERED if not coverage.get(c)], coverage


@pytest.mark.timeout(900)
def test_seeds_replay_to_the_same_trace_hash() -> None:
    """Determinism self-check: a few seeds run twice give equal trace hashes."""
    base = rotating_base()
    for seed in (base, base + 1):
        assert run_seed(seed).trace_hash == run_seed(seed).trace_hash, seed


TTL_SEEDS = (1000, 1003, 1005, 1006)
"""Seeds of the ttl workload run on every commit (skews of 0, 2 and 60 s among them)."""


def test_ttl_workload_seeds_pass_and_reclaim() -> None:
    """Puts with ttls of 1-5 s under the seeds' faults: no read returns a value after its
    expiry, nothing superseded comes back (an expired object reclaimed too early would
    bring an older value back), no acknowledged write without a ttl is lost; and expired
    objects were reclaimed somewhere (the path ran)."""
    results = [run_seed(seed, "ci", ttl=True) for seed in TTL_SEEDS]
    failures = [f"{r.replay_command()}: {r.summary()['verdicts']}" for r in results if not r.ok]
    assert not failures, "\n".join(failures)
    with_ttl = sum(r.summary()["verdicts"]["siblings"]["counts"]["with_ttl"] for r in results)
    assert with_ttl > 50
    assert sum(r.coverage.get("expired_reclaimed", 0) for r in results) > 0
