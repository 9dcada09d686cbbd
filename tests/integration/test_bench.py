"""`dynq bench` against a real 3-node cluster: JSON shape, and that operations happened."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dynq.localcluster import LocalCluster

pytestmark = pytest.mark.integration


def dynq_command() -> list[str]:
    script = Path(sys.executable).parent / "dynq"
    return [str(script)] if script.exists() else [sys.executable, "-m", "dynq"]


@pytest.mark.parametrize("workload", ["a", "f"])
def test_bench_runs_a_workload_and_reports_json(cluster3: LocalCluster, workload: str) -> None:
    """Load 300 records, run briefly with 8 in flight: ops happened, no errors, every op has
    its latency percentiles, and the load phase inserted every record."""
    out = subprocess.run(
        dynq_command() + ["bench", "--workload", workload, "--records", "300", "--duration", "1.5",
                          "--concurrency", "8", "--value-size", "100", "--json", "--seed", cluster3.seeds[0]],
        capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(out.stdout)
    assert result["workload"] == workload and result["records"] == 300
    assert result["load"]["ops"] == 300 and result["load"]["errors"] == 0
    assert result["total"]["ops"] > 0 and result["total"]["errors"] == 0
    expected = {"a": {"read", "update"}, "f": {"read", "rmw"}}[workload]
    assert set(result["ops"]) == expected
    for stats in result["ops"].values():
        assert stats["count"] > 0
        assert 0 < stats["p50_ms"] <= stats["p99_ms"] <= stats["p999_ms"] <= stats["max_ms"]
    assert result["not_found"] == 0


def test_bench_read_only_without_load_and_op_bound(cluster3: LocalCluster) -> None:
    """Workload C with --no-load and --operations: stops at the bound; text output names the op."""
    out = subprocess.run(
        dynq_command() + ["bench", "--workload", "c", "--records", "50", "--duration", "30", "--no-load",
                          "--operations", "200", "--concurrency", "4", "--distribution", "uniform",
                          "--seed", cluster3.seeds[0]],
        capture_output=True, text=True, timeout=120, check=True,
    )
    assert "workload C" in out.stdout and "read" in out.stdout
    assert "run: 200 ops" in out.stdout


@pytest.mark.parametrize("coordination, fanout", [("server", "quorum"), ("client", "all")])
def test_bench_read_coordination_options(cluster3: LocalCluster, coordination: str, fanout: str) -> None:
    """--coordination server / --read-fanout all: reads still find every loaded key."""
    out = subprocess.run(
        dynq_command() + ["bench", "--workload", "c", "--records", "60", "--duration", "30",
                          "--operations", "150", "--concurrency", "4", "--coordination", coordination,
                          "--read-fanout", fanout, "--json", "--seed", cluster3.seeds[0]],
        capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(out.stdout)
    assert result["coordination"] == coordination and result["read_fanout"] == fanout
    assert result["ops"]["read"]["count"] == 150 and result["not_found"] == 0
    assert result["total"]["errors"] == 0


@pytest.mark.parametrize("workload, load", [("w", False), ("c", True)])
def test_bench_open_loop_completes_and_reports(cluster3: LocalCluster, workload: str, load: bool) -> None:
    """--target-rate with a small bound (200/s for 1.5 s, a cap of 16 in flight): the run
    finishes, every scheduled request was issued and reported, no errors. No timings asserted."""
    out = subprocess.run(
        dynq_command() + ["bench", "--workload", workload, "--records", "100", "--duration", "1.5",
                          "--target-rate", "200", "--concurrency", "16", "--value-size", "100",
                          "--load" if load else "--no-load", "--json", "--seed", cluster3.seeds[0]],
        capture_output=True, text=True, timeout=120, check=True,
    )
    result = json.loads(out.stdout)
    loop = result["open_loop"]
    assert loop["target_rate"] == 200 and loop["arrival"] == "poisson"
    assert loop["issued"] > 0 and loop["unfinished"] == 0 and loop["late"] >= 0
    assert result["total"]["ops"] == loop["issued"] and result["total"]["errors"] == 0
    (name, stats), = result["ops"].items()
    assert name == {"w": "insert", "c": "read"}[workload]
    assert 0 < stats["p50_ms"] <= stats["p99_ms"] <= stats["max_ms"]
    assert result["not_found"] == 0
