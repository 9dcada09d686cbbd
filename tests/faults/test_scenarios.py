"""Jepsen-style fault scenarios: 5 nodes in network namespaces, concurrent clients, one
nemesis each, then heal and check that no acknowledged write was lost (see scenario.py).

Each scenario runs ~45 s of faults in the CI profile (``--profile long``: 10 min) from one
seed, printed with its counts at the end of the session and in every failure."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from dynq_client import Client, DynqError
from dynq_client.versions import decode_object

from .cluster import FaultCluster
from .conftest import RESULTS
from .nemesis import Crash, DiskFull, Either, Nemesis, Partition, Pause, Wipe
from .scenario import Result, run_scenario, wait_for
from .workloads import CRDT_BUCKETS, Workload

pytestmark = [pytest.mark.integration, pytest.mark.faults, pytest.mark.timeout(1800)]


def finish(result: Result) -> None:
    RESULTS.append(result.summary())
    print(result.report())
    if not result.ok:
        pytest.fail(f"{result.name} failed (repeat with --fault-seed {result.seed}):\n{result.report()}")


@pytest.fixture
def run(netns_ready: None, tmp_path: Path, fault_seed: int, profile_duration: float) -> Any:
    def go(name: str, workload: str, nemesis: Any, **kw: Any) -> Result:
        result = run_scenario(name, tmp_path, fault_seed, profile_duration, workload, nemesis, **kw)
        finish(result)
        return result
    return go


def test_isolated_node_set_add(run: Any) -> None:
    """One node at a time cut off from its peers: no acknowledged add is lost."""
    run("partition-isolate/set-add", "set-add", lambda c: Partition(c, ("isolate",)))


def test_majority_minority_split_blind_writes(run: Any) -> None:
    """Random 2/3 splits while clients write blindly: concurrent writes all survive as siblings."""
    run("partition-split/siblings", "siblings", lambda c: Partition(c, ("majority",)))


def test_bridge_and_flapping_partitions_cycles(run: Any) -> None:
    """Non-transitive (bridge) and short flapping partitions under write/delete/rewrite cycles:
    nothing acknowledged lost, deleted keys stay deleted."""
    run("partition-bridge-flap/cycle", "cycle", lambda c: Partition(c, ("bridge", "flap")),
        quiet=(0.5, 2.0), faulty=(1.0, 4.0))


def test_kill_restart_writes_while_replicas_down(run: Any) -> None:
    """kill -9 of up to two nodes (restarted with the same command line) while clients keep
    writing through fallbacks and hints: nothing acknowledged lost, hints drain."""
    run("kill-restart/set-add", "set-add", lambda c: Crash(c, max_down=2))


def test_kill_restart_cycles(run: Any) -> None:
    """Writes and deletes while replicas are down (kill -9, restart): deletes stick, no loss."""
    run("kill-restart/cycle", "cycle", lambda c: Crash(c, max_down=2))


def test_pause_longer_than_failure_detection(run: Any) -> None:
    """SIGSTOP one node for 4-10 s (failure detection takes ~2 timeouts of 2 s), SIGCONT:
    the paused node's queued work and late replies lose nothing."""
    run("pause/siblings", "siblings", lambda c: Pause(c))


def test_disk_full_then_space_returns(run: Any) -> None:
    """One node's data directory on a small tmpfs that fills up: its writes fail with a
    storage error naming the disk, it stays up, and it takes writes again once space returns."""
    victim = "n2"

    def checks(cluster: FaultCluster, client: Client, workload: Workload, result: Result) -> None:
        stats = client.call(victim, "stats")
        if not stats["commit_failures"]:
            result.problems.append(f"{victim} never failed a commit: the disk never filled?")
        errors = [op.error for op in workload.history.ops if op.error]
        answered_storage = stats["errors"].get("storage", 0)  # refused with the disk named
        if stats["commit_failures"] and not answered_storage \
                and not any("full" in e.lower() or "storage" in e for e in errors):
            result.problems.append("no error named the full disk (clients retry such writes elsewhere)")
        assert client.table is not None
        key = next(k for k in (f"after-full-{i}" for i in range(1000))
                   if client.table.ring.preference_list_for(k.encode()).primaries[0] == victim)
        try:
            client.put(key, b"space is back", w=3)
        except DynqError as exc:
            result.problems.append(f"{victim} does not take writes after space returned: {exc}")

    run("disk-full/set-add", "set-add", lambda c: DiskFull(c, victim), tmpfs_node=victim,
        extra_checks=checks)


def test_wiped_database_restarted_empty(run: Any) -> None:
    """One node loses its database (kill -9, files deleted, restarted as a new actor), again and
    again: the other replicas keep every acknowledged add and repair it."""
    run("wipe-db/set-add", "set-add", lambda c: Wipe(c, "n3"), quiet=(4.0, 8.0), faulty=(2.0, 4.0))


def test_buckets_of_n_1_3_5_kill_restart(run: Any) -> None:
    """Buckets of N=1, 3 and 5 on the 5 nodes under kill -9 and restart of up to two nodes
    (set-add): no acknowledged add lost in any bucket, each bucket's primaries converge,
    hints drain, every (partition, n) tree agrees."""
    run("buckets-n135-kill/set-add", "set-add", lambda c: Crash(c, max_down=2),
        buckets={"one": 1, "three": 3, "five": 5})


def test_counters_and_sets_under_partitions_and_kills(run: Any) -> None:
    """Data types (a counter bucket and a set bucket) under partitions and kill -9: each
    counter ends at its acknowledged increments plus some of the unknown ones; every
    acknowledged add not removed since is in its set, no element no add wrote, no
    acknowledged remove undone; the replicas' states and trees agree."""
    run("partition-kill/crdt", "crdt", lambda c: Either(c, [Partition(c, ("isolate", "majority")), Crash(c, max_down=2)]),
        buckets=dict(CRDT_BUCKETS))


TTL_CONFIG = """
[anti_entropy]
expiry_grace_s = 1
expiry_interval_ms = 250
"""


def test_short_ttls_under_partitions_and_kills(run: Any) -> None:
    """Writes with ttls of 1-3 s (and long ones, and none) while nodes are partitioned or
    killed, expired objects reclaimed a second after expiry: no read ever returns a value
    after its expiry, nothing unexpired and acknowledged is lost, and after heal nothing
    expired is readable and the replicas' trees agree."""
    def reclaimed(cluster: FaultCluster, client: Client, workload: Workload, result: Result) -> None:
        """Expired objects do not stay: once every replica holds the same (dead) object
        and no hint names it, the reclaimer deletes it everywhere (bounded wait)."""
        assert client.table is not None
        ring = client.table.ring
        left: list[str] = []

        def none_left() -> bool:
            left.clear()
            horizon = time.time() * 1000 - 1000 - 5000  # the grace, and a few reclaim rounds
            for key in workload.key_names:
                for node in ring.preference_list_for(key.encode()).primaries:
                    blob = client.call(node, "inspect", {"k": key.encode()})["ob"]
                    dead = decode_object(blob).dead_since_ms() if blob else 0
                    if dead and dead < horizon:
                        left.append(f"{key}@{node}")
            return not left

        if not wait_for("expired objects reclaimed", none_left, timeout=60):
            result.problems.append(f"expired objects never reclaimed: {left[:20]}")

    run("partition-kill/ttl", "ttl", lambda c: Either(c, [Partition(c, ("isolate", "majority")), Crash(c, max_down=2)]),
        config=TTL_CONFIG, extra_checks=reclaimed)


def test_the_checks_catch_lost_writes_end_to_end(netns_ready: None, tmp_path: Path, fault_seed: int) -> None:
    """The pipeline can fail: a short set-add run, then every node's database deleted before
    the final read. The checker must report the acknowledged adds as lost."""
    def wipe_everything(cluster: FaultCluster) -> None:
        for name in cluster.nodes:
            cluster.kill(name)
            cluster.wipe(name)
        cluster.start_all()

    result = run_scenario("negative: all databases wiped", tmp_path, fault_seed, 5.0, "set-add", Nemesis,
                          before_check=wipe_everything)
    RESULTS.append(result.summary() + "   (expected to FAIL: proves the checks can fail)")
    assert not result.ok
    assert result.counts()["lost"] == result.counts()["acknowledged"] > 0
