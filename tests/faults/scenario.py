"""One fault scenario, end to end: 5 nodes in namespaces, a workload, a nemesis, heal, check.

After the fault period everything is healed (partitions dropped, paused nodes continued,
killed nodes restarted, disks freed), then, each step a bounded wait that fails the
scenario if it never completes:

1. every node answers and reaches every other node;
2. hints drain to zero on every node;
3. every key is read at R=N (read repair) until every primary holds the same object
   (canonical dump from the ``inspect`` op), which gives the final state;
4. the checkers judge the history against it;
5. every partition's primaries hold equal Merkle roots (anti-entropy passes are run for
   partitions that differ, until they agree or the bound passes).
"""

from __future__ import annotations

import logging
import re
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dynq_client import Client, DynqError
from dynq_client import buckets as b
from dynq_client import crdt
from dynq_client.versions import decode_object, encode_object

from .checker import (
    Verdict,
    check_convergence,
    check_counters,
    check_hints_drained,
    check_or_sets,
    check_set_adds,
    check_siblings,
    check_ttl,
    latest_expiry,
)
from .cluster import FaultCluster
from .nemesis import Nemesis, Schedule
from .workloads import Workload, decode_set, split_key

log = logging.getLogger(__name__)

# Faster failure handling than the defaults, so a ~45 s run sees many fault cycles.
FAULT_CONFIG = """
[timeouts]
request_ms = 2000

[handoff]
probe_interval_ms = 500
replay_interval_ms = 200
"""


@dataclass
class Result:
    name: str
    seed: int
    verdicts: list[Verdict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # outside the checkers (crashed node, ...)
    events: list[tuple[float, str]] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)  # error kinds seen by clients (first words)
    wall_s: float = 0.0
    faults: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems and all(v.ok for v in self.verdicts)

    def counts(self) -> dict[str, int]:
        c = self.verdicts[0].counts if self.verdicts else {}
        return {k: c.get(k, 0) for k in ("ops", "acknowledged", "failed", "unknown", "lost")}

    def summary(self) -> str:
        c = self.counts()
        return (f"{self.name:<28} {'PASS' if self.ok else 'FAIL'}  seed {self.seed}  ops {c['ops']}  "
                f"acknowledged {c['acknowledged']}  failed {c['failed']}  unknown {c['unknown']}  "
                f"lost {c['lost']}  faults {self.faults}  wall {self.wall_s:.0f}s")

    def report(self) -> str:
        lines = [self.summary()] + [f"  {v}" for v in self.verdicts] + [f"  PROBLEM: {p}" for p in self.problems]
        lines += ["  client errors:"] + [f"    {n:6d}  {kind}" for kind, n in
                                     sorted(self.errors.items(), key=lambda kv: -kv[1])[:12]]
        lines += ["  nemesis timeline:"] + [f"    {t:7.2f}s {what}" for t, what in self.events]
        return "\n".join(lines)


def wait_for(what: str, predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except DynqError as exc:
            log.debug("%s: %s", what, exc)
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def run_scenario(
    name: str,
    tmp_path: Path,
    seed: int,
    duration: float,
    workload_kind: str,
    make_nemesis: Callable[[FaultCluster], Nemesis],
    *,
    tmpfs_node: str | None = None,
    quiet: tuple[float, float] = (2.0, 5.0),
    faulty: tuple[float, float] = (4.0, 10.0),
    extra_checks: Callable[[FaultCluster, Client, Workload, Result], None] | None = None,
    before_check: Callable[[FaultCluster], None] | None = None,
    buckets: dict[str, int | dict[str, object]] | None = None,
    config: str = "",
) -> Result:
    t0 = time.monotonic()
    rng = random.Random(f"{seed}/{name}")
    result = Result(name, seed)
    cluster = FaultCluster.create(tmp_path / "cluster", nodes=5, tmpfs_node=tmpfs_node,
                                  extra_config=FAULT_CONFIG + config)
    schedule: Schedule | None = None
    workload: Workload | None = None
    try:
        cluster.start_all()
        cluster.wait_ready(timeout=60)
        if buckets:  # made through the claimant; every node knows them before the workload starts
            with Client(cluster.seeds, timeout=10.0) as client:
                for name, n in buckets.items():
                    client.call("n1", "bucket_create", {"name": name, "props": n if isinstance(n, dict) else {"n": n}})
                for member in cluster.nodes:
                    if not wait_for(f"{member} to know the buckets", lambda member=member: all(
                            name in client.call(member, "cluster_state")["state"].get("buckets", {})
                            for name in buckets), timeout=30):
                        result.problems.append(f"{member} never learned the buckets")
        workload = Workload(workload_kind, cluster.seeds, random.Random(rng.getrandbits(64)), duration=duration,
                            buckets=tuple(buckets or ()))
        nemesis = make_nemesis(cluster)
        schedule = Schedule(nemesis, random.Random(rng.getrandbits(64)), duration, quiet, faulty)
        workload.start()
        schedule.start()
        time.sleep(duration)
        schedule.stop()
        history = workload.stop()
        history.dump(tmp_path / "history.jsonl")
        result.events, result.faults = schedule.events, nemesis.faults
        for op in history.ops:
            if op.error:
                kind = f"{op.f} {op.outcome}: " + re.sub(r"[0-9]+", "N", op.error)[:90]
                result.errors[kind] = result.errors.get(kind, 0) + 1
        if schedule.error is not None:
            result.problems.append(f"nemesis failed: {schedule.error!r}")
        if before_check is not None:
            before_check(cluster)
        heal_and_check(cluster, workload, history, result, extra_checks)
    finally:
        result.wall_s = time.monotonic() - t0
        try:  # on an error mid-run: no thread may touch the cluster while it is torn down
            if schedule is not None:
                schedule.halt()
            if workload is not None:
                workload.halt()
            if not result.ok:
                result.problems.append(f"history: {tmp_path / 'history.jsonl'}; node logs under {cluster.data_dir}")
                for node in cluster.nodes.values():
                    result.problems.append(f"log tail of {node.name}:\n{node.log_tail(15)}")
        finally:
            cluster.close()
    return result


def heal_and_check(cluster: FaultCluster, workload: Workload, history: object, result: Result,
                   extra_checks: Callable[[FaultCluster, Client, Workload, Result], None] | None) -> None:
    for name, code in cluster.exited():
        result.problems.append(f"node {name} exited by itself (code {code}):\n{cluster.nodes[name].log_tail(20)}")
        cluster.start(name)
    try:
        cluster.wait_ready(timeout=60)
    except RuntimeError as exc:
        result.problems.append(f"cluster not ready after heal: {exc}")
        return
    names = list(cluster.nodes)
    with Client(cluster.seeds, timeout=5.0) as client:
        pending: dict[str, int] = {}

        def drained() -> bool:
            pending.update({n: int(client.call(n, "stats")["hints_pending_total"]) for n in names})
            return not any(pending.values())

        wait_for("hints drained", drained, timeout=120)
        result.verdicts.append(check_hints_drained(pending))
        if workload.kind == "ttl":  # check once every short ttl has certainly passed
            expiries = [t for op in workload.history.ops if op.f == "put" and op.ttl and op.ttl < 600
                        and (t := latest_expiry(op)) is not None]
            time.sleep(max(0.0, max(expiries, default=0.0) - time.time()))
        if workload.kind == "crdt":  # data types: read through their handles, judged by their checkers
            counters, sets, views = converge_typed(client, workload.key_names, timeout=120)
            result.verdicts.insert(0, check_or_sets(workload.history, sets))
            result.verdicts.insert(0, check_counters(workload.history, counters))
            result.verdicts.append(check_convergence(views))
            result.verdicts.append(check_convergence(merkle_roots(client, timeout=180)))
            if extra_checks is not None:
                extra_checks(cluster, client, workload, result)
            return
        final, views = converge(client, workload.key_names, timeout=120)
        if workload.kind == "ttl":
            strs = {k: {v.decode() for v in values} for k, values in final.items()}
            result.verdicts.insert(0, check_ttl(workload.history, strs, time.time()))
        elif workload.kind == "set-add":
            sets = {k: set().union(*(decode_set(v) for v in values)) for k, values in final.items()}
            result.verdicts.insert(0, check_set_adds(workload.history, sets))
        else:
            strs = {k: {v.decode() for v in values} for k, values in final.items()}
            result.verdicts.insert(0, check_siblings(workload.history, strs))
        result.verdicts.append(check_convergence(views))
        result.verdicts.append(check_convergence(merkle_roots(client, timeout=180)))
        if extra_checks is not None:
            extra_checks(cluster, client, workload, result)


def merkle_roots(client: Client, timeout: float) -> dict[str, dict[str, bytes | None]]:
    """Per tree (partition, and n of buckets), each primary's Merkle root, once they agree
    (bounded): a tree whose roots differ gets a repair pass (anti-entropy, as `dynq repair`
    runs it) and is looked at again. Returns the last roots seen, for the convergence check."""
    client.refresh()
    assert client.table is not None
    ring = client.table.ring
    trees = [(b.tree_id(ring.q, ring.n, p, n), ring.preference_list(p, n).primaries, f"partition {p}"
              + ("" if n == ring.n else f" n={n}")) for n in client.table.buckets.ns(ring.n) for p in range(ring.q)]
    views: dict[str, dict[str, bytes | None]] = {}
    deadline = time.monotonic() + timeout
    while True:
        roots: dict[str, dict[int, bytes]] = {}
        for member in ring.members:
            try:
                rows = client.call(member.name, "ae_tree", {})["partitions"]
                roots[member.name] = {int(row[0]): bytes(row[1]) for row in rows}
            except DynqError:
                roots[member.name] = {}
        differing = []
        for tid, primaries, label in trees:
            view = {node: roots[node].get(tid) for node in primaries}
            views[label] = view
            if len(set(view.values())) > 1:
                differing.append((tid, primaries[0]))
        if not differing or time.monotonic() > deadline:
            return views
        for partition, node in differing:
            try:
                client.call(node, "ae_repair", {"p": partition})
            except DynqError:
                pass


def converge(client: Client, keys: list[str], timeout: float) -> tuple[dict[str, list[bytes]], dict[str, dict[str, bytes | None]]]:
    """Read every key at R=N until all its primaries hold the same object (read repair is
    the only repair until anti-entropy exists). Returns the final values of each key and the
    last per-primary canonical dumps (for the convergence check)."""
    assert client.table is not None
    ring = client.table.ring
    views: dict[str, dict[str, bytes | None]] = {}
    final: dict[str, list[bytes]] = {}
    last_read: dict[str, list[bytes]] = {}  # for keys that never converge: what a quorum read says
    todo = list(keys)
    deadline = time.monotonic() + timeout
    def where(key: str) -> tuple[str | None, bytes, int, tuple[str, ...]]:
        """bucket, key, n and primaries of a history key name"""
        assert client.table is not None
        bucket, raw = split_key(key)
        props = client.table.buckets.get(bucket) if bucket else None
        n = ring.n if props is None else props.n
        skey = b.storage_key(bucket or b.DEFAULT, raw.encode())
        return bucket, raw.encode(), n, ring.preference_list_for(skey, n).primaries

    while todo and time.monotonic() < deadline:
        for key in list(todo):
            bucket, raw, n, _ = where(key)
            try:
                last_read[key] = client.get(raw, r=n, bucket=bucket).values
            except DynqError:
                continue
        time.sleep(0.3)  # read repair is sent after the last replica answered
        for key in list(todo):
            view: dict[str, bytes | None] = {}
            bucket, raw, n, primaries = where(key)
            body = {"k": raw} if bucket is None else {"k": raw, "bk": bucket}
            for node in primaries:
                try:
                    blob = client.call(node, "inspect", body)["ob"]
                except DynqError as exc:
                    view[node] = f"unreachable: {exc}".encode()
                    continue
                view[node] = None if blob is None else encode_object(decode_object(blob))
            views[key] = view
            if len(set(view.values())) == 1:
                todo.remove(key)
                blob = next(iter(view.values()))
                final[key] = [] if blob is None else decode_object(blob).live(int(time.time() * 1000)).values
    for key in todo:
        final[key] = last_read.get(key, [])
    return final, views


def converge_typed(client: Client, keys: list[str], timeout: float) -> tuple[
        dict[str, int], dict[str, set[int]], dict[str, dict[str, bytes | None]]]:
    """:func:`converge` for the crdt workload's keys: a whole read at R=N through the
    type's handle (which read-repairs with the join) until every primary holds the same
    state. Returns the counters' values, the sets' elements and the last per-primary states."""
    assert client.table is not None
    ring = client.table.ring
    views: dict[str, dict[str, bytes | None]] = {}
    counters: dict[str, int] = {}
    sets: dict[str, set[int]] = {}
    todo = list(keys)
    deadline = time.monotonic() + timeout
    while todo and time.monotonic() < deadline:
        for key in list(todo):
            bucket, raw = split_key(key)
            assert bucket is not None
            try:
                if bucket == "ctr":
                    counters[key] = client.counter(bucket, raw).value(r=3)
                else:
                    sets[key] = {int(x) for x in client.set(bucket, raw).value(r=3)}
            except DynqError:
                continue
        time.sleep(0.3)  # read repair is sent after the last replica answered
        for key in list(todo):
            bucket, raw = split_key(key)
            assert bucket is not None
            view: dict[str, bytes | None] = {}
            for node in ring.preference_list_for(b.storage_key(bucket, raw.encode()), 3).primaries:
                try:
                    view[node] = client.call(node, "inspect", {"k": raw.encode(), "bk": bucket})["ob"]
                except DynqError as exc:
                    view[node] = f"unreachable: {exc}".encode()
            views[key] = view
            if len(set(view.values())) == 1:
                todo.remove(key)
                blob = next(iter(view.values()))
                if blob is not None:
                    state = crdt.decode_state(blob)
                    if bucket == "ctr":
                        counters[key] = crdt.value_of(crdt.COUNTER, state.store)
                    else:
                        sets[key] = {int(x) for x in state.store}
    return counters, sets, views
