"""Buckets on real node processes: properties through the claimant and gossip, exact
per-bucket replica placement and survival, last-write-wins, listing (also while a node
joins), export/import, get_many with a replica down, the CLI, and a database written by
the version before buckets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
from dynq_client import (
    Client,
    DynqError,
    GetResult,
    InvalidRequest,
    UnknownBucket,
)
from dynq_client import buckets as b

from dynq.cluster.membership import ClusterState
from dynq.localcluster import LocalCluster
from tests.conftest import free_ports, make_cluster, run_dynq, wait_for, wait_known_down, wait_unreachable

pytestmark = pytest.mark.integration

FAST = """
[membership]
gossip_interval_ms = 200
transfer_cleanup_delay_ms = 1000
"""

NO_AE = """
[anti_entropy]
enabled = false
tombstone_grace_s = 1
"""

REPO = Path(__file__).resolve().parents[2]
PRE_BUCKETS = "42997ca"  # main before buckets: the on-disk format of the previous version





def state_of(client: Client, address: str) -> ClusterState:
    return ClusterState.from_wire(client.call_address(address, "cluster_state", {})["state"])


def holders(client: Client, cluster: LocalCluster, bucket: str, key: bytes) -> list[str]:
    """The nodes whose database holds ``key`` of ``bucket`` (asked one by one)."""
    body: dict[str, Any] = {"k": key} if bucket == b.DEFAULT else {"k": key, "bk": bucket}
    return sorted(name for name in cluster.nodes if client.call(name, "inspect", body, retry=False)["ob"])


@pytest.fixture(scope="module")
def five(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Five nodes (ring n=3) with buckets one (n=1), three (n=3), five (n=5) and last
    (n=3, lww), made through n4, which is not the claimant. Background anti-entropy is
    off so that placement is what the write path did (repairs run when a test asks)."""
    cluster = make_cluster(tmp_path_factory.mktemp("buckets5"), 5, extra_config=FAST + NO_AE)
    cluster.start_all()
    try:
        cluster.wait_ready()
        with cluster.client() as db:
            for name, n in (("one", 1), ("three", 3), ("five", 5)):
                db.call("n4", "bucket_create", {"name": name, "props": {"n": n}})
            db.call("n4", "bucket_create", {"name": "last", "props": {"n": 3, "conflict": "lww"}})
        yield cluster
    finally:
        cluster.stop_all()


def test_a_bucket_reaches_every_node_and_client_also_one_that_was_down(five: LocalCluster) -> None:
    """A bucket made through any node is in every node's cluster state and in a client's
    routing table; a node that was down when a bucket was made learns it by gossip."""
    with five.client() as db:
        for node in five.nodes.values():
            state = wait_for(f"{node.name} to know the buckets",
                             lambda node=node: (s := state_of(db, node.address)).buckets.get("five") and s)
            assert state.buckets.get("one").n == 1 and state.buckets.get("last").conflict == "lww"
        assert db.bucket("three").props().n == 3  # type: ignore[union-attr]
        five.stop("n5")
        try:
            db.call("n2", "bucket_create", {"name": "late", "props": {"n": 2, "r": 1}})
        finally:
            five.start("n5")
        five.wait_ready(["n5"])
        wait_for("n5 to learn of 'late'", lambda: state_of(db, five.nodes["n5"].address).buckets.get("late"))
        # a client whose table predates the bucket finds it (one refresh), an unknown one is an error
        with five.client() as fresh:
            fresh.bucket("late").put("k", b"v")
            assert fresh.bucket("late").get("k").values == [b"v"]
            with pytest.raises(UnknownBucket, match="nope"):
                fresh.bucket("nope").get("k")
            with pytest.raises(InvalidRequest):
                fresh.bucket("bad name")


def test_each_bucket_places_exactly_n_replicas(five: LocalCluster) -> None:
    """N=1/3/5 buckets and the default bucket hold each key on exactly N nodes: the
    first N of the partition's preference list for that N (once hints are handed off)."""
    with five.client() as db:
        assert db.table is not None
        keys = [f"place-{i}".encode() for i in range(30)]
        for bucket, n in (("one", 1), ("three", 3), ("five", 5), (b.DEFAULT, 3)):
            handle = db.bucket(bucket)
            for key in keys:
                handle.put(key, bucket.encode(), w=n)
            for key in keys[:10]:
                expected = sorted(db.table.ring.preference_list_for(b.storage_key(bucket, key), n).primaries)
                # a node restarted by an earlier test may still look down to some: a fallback
                # then holds a hinted copy until handoff, which leaves exactly the primaries
                wait_for(f"{bucket}/{key!r} on exactly {expected}",
                         lambda key=key, bucket=bucket, expected=expected: holders(db, five, bucket, key) == expected,
                         timeout=30)
            # the same key name in two buckets is two keys
            assert handle.get(keys[0]).values == [bucket.encode()]


def test_buckets_survive_a_node_loss_as_their_n_allows(five: LocalCluster) -> None:
    """With one node down: N=3 and N=5 keys all read (and write) at their default
    quorums; N=1 keys read unless their one replica is the node that is down, and those
    come back with it."""
    with five.client() as db:
        assert db.table is not None
        keys = [f"loss-{i}".encode() for i in range(20)]
        for bucket in ("one", "three", "five"):
            for key in keys:
                db.bucket(bucket).put(key, b"before")
        five.kill("n3")
        try:
            wait_unreachable(db, "n3")
            for bucket in ("three", "five"):
                for key in keys:
                    assert db.bucket(bucket).get(key).values == [b"before"]
                    db.bucket(bucket).put(key, b"after", context=db.bucket(bucket).get(key).context)
            lost = 0
            for key in keys:
                replica = db.table.ring.preference_list_for(b.storage_key("one", key), 1).primaries[0]
                if replica == "n3":
                    lost += 1
                    try:  # its only copy is on n3: a fallback answers "not found", or nobody does
                        assert not db.bucket("one").get(key).found
                    except DynqError:
                        pass
                else:
                    assert db.bucket("one").get(key).values == [b"before"]
            assert 0 < lost < len(keys)
        finally:
            five.start("n3")
            five.wait_ready(["n3"])
        for key in keys:
            assert wait_for("n3's N=1 keys", lambda key=key: db.bucket("one").get(key).values == [b"before"])


def test_anti_entropy_repairs_and_reaps_per_bucket_n(five: LocalCluster) -> None:
    """Trees per (partition, n): a node that missed writes to an N=5 bucket (no fallback
    exists, so no hint) gets them from `dynq repair`; N=1 keys stay on their one replica
    through repair; every tree's primaries agree after; tombstones of N=1 and N=5 buckets
    past the grace period are reaped on every node."""
    seed = five.seeds[0]
    with five.client() as db:
        assert db.table is not None
        ring = db.table.ring
        five.kill("n5")
        try:
            wait_unreachable(db, "n5")
            wait_known_down(db, ["n1", "n2", "n3", "n4"], "n5")
            missed = [f"ae-{i}".encode() for i in range(30)]
            for key in missed:
                db.bucket("five").put(key, b"while n5 was down")
                db.bucket("one").put(key, b"solo")
        finally:
            five.start("n5")
            five.wait_ready(["n5"])
        wait_for("hints drained", lambda: sum(db.call(n, "stats")["hints_pending_total"] for n in five.nodes) == 0)
        assert not any(db.call("n5", "inspect", {"k": k, "bk": "five"})["ob"] for k in missed)
        repaired = run_dynq("repair", seed=seed, timeout=600)
        assert repaired.returncode == 0, repaired.stdout + repaired.stderr
        assert all(db.call("n5", "inspect", {"k": k, "bk": "five"})["ob"] for k in missed)
        for key in missed[:10]:
            assert holders(db, five, "one", key) == list(
                ring.preference_list_for(b.storage_key("one", key), 1).primaries)
        roots = {name: {int(row[0]): bytes(row[1]) for row in db.call(name, "ae_tree")["partitions"]}
                 for name in five.nodes}
        for n in (1, 3, 5):
            for partition in range(ring.q):
                tid = b.tree_id(ring.q, ring.n, partition, n)
                primaries = ring.preference_list(partition, n).primaries
                assert len({roots[x].get(tid) for x in primaries}) == 1, (partition, n)
                assert all(tid not in roots[x] for x in five.nodes if x not in primaries)
        for key in missed:
            db.bucket("five").delete(key)
            db.bucket("one").delete(key)
        time.sleep(1.5)  # past the grace period (tombstone_grace_s = 1)
        reaped = run_dynq("repair", seed=seed, timeout=600)
        assert reaped.returncode == 0, reaped.stdout + reaped.stderr
        for key in missed[:10]:
            for bucket in ("five", "one"):
                assert holders(db, five, bucket, key) == [], (bucket, key)


def test_lww_bucket_keeps_one_value_under_concurrent_writes(five: LocalCluster) -> None:
    """Blind concurrent writes through different coordinators: a siblings bucket keeps
    them all, an LWW bucket keeps exactly one (the newest), everywhere."""
    with five.client() as db:
        assert db.table is not None
        for i in range(5):
            key = f"race-{i}".encode()
            clients = [five.client([five.nodes[name].address]) for name in ("n1", "n2", "n3", "n4")]
            try:
                barrier = threading.Barrier(len(clients))

                def write(client: Client, value: bytes, bucket: str) -> None:
                    barrier.wait(10)
                    client.put(key, value, bucket=bucket)

                for bucket in ("last", "three"):
                    threads = [threading.Thread(target=write, args=(c, f"{bucket}-{j}".encode(), bucket))
                               for j, c in enumerate(clients)]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join(30)
                    barrier.reset()
            finally:
                for c in clients:
                    c.close()
            assert len(db.bucket("three").get(key).values) >= 1
            got = db.bucket("last").get(key, r=3)
            assert len(got.values) == 1
            obj = db.bucket("last").get_object(key, r=3)
            assert obj is not None and len(obj.siblings) == 1
            # a write with the context of that read replaces it (no sibling either way)
            db.bucket("last").put(key, b"final")
            assert db.bucket("last").get(key, r=3).values == [b"final"]


def test_listing_returns_exactly_the_live_keys_of_a_bucket(five: LocalCluster) -> None:
    """keys() lists every live key of the bucket once: no tombstones, no other bucket's
    keys; pages resume from their token; a prefix narrows it; a small bucket is cheap."""
    with five.client() as db:
        handle = db.bucket("five")
        live = {f"list-{i:03d}".encode() for i in range(250)}
        for key in sorted(live):
            handle.put(key, b"v")
        dead = {f"list-dead-{i}".encode() for i in range(20)}
        for key in dead:
            handle.put(key, b"v")
            handle.delete(key)
        db.bucket("three").put(b"list-other", b"x")
        listed = [k for k in handle.keys(prefix=b"list-")]
        assert len(listed) == len(set(listed))
        assert set(listed) == live
        pages = list(handle.key_pages(prefix=b"list-", page_size=64))
        assert all(len(p.keys) <= 64 for p in pages) and pages[-1].token is None
        assert [k for p in pages for k in p.keys] == listed  # a stable order
        resumed = list(handle.keys(prefix=b"list-", start_after=pages[0].token))
        assert resumed == listed[len(pages[0].keys):]
        assert set(db.bucket("three").keys(prefix=b"list-")) == {b"list-other"}
        # the default bucket lists its own keys only
        db.put(b"list-default", b"d")
        assert set(db.keys(prefix=b"list-")) == {b"list-default"}
        # one node down: its partitions are read from another primary
        five.kill("n2")
        try:
            wait_unreachable(db, "n2")
            assert set(handle.keys(prefix=b"list-")) == live
        finally:
            five.start("n2")
            five.wait_ready(["n2"])


def test_get_many_with_missing_keys_and_a_replica_down(five: LocalCluster) -> None:
    """get_many returns a result per key (found or not) with one node down, and matches
    sequential gets."""
    with five.client() as db:
        handle = db.bucket("three")
        keys = [f"many-{i}".encode() for i in range(100)]
        for key in keys[::2]:
            handle.put(key, key)
        five.kill("n1")
        try:
            wait_unreachable(db, "n1")
            wait_known_down(db, ["n2", "n3", "n4", "n5"], "n1")
            results = handle.get_many(keys + [keys[0]])
            assert list(results) == keys  # one entry per distinct key, in order
            for i, key in enumerate(keys):
                got = results[key]
                assert isinstance(got, GetResult), got
                assert got.values == ([key] if i % 2 == 0 else [])
        finally:
            five.start("n1")
            five.wait_ready(["n1"])


def test_export_import_round_trip_with_siblings(five: LocalCluster, cluster_factory: Any, tmp_path: Path) -> None:
    """dynq export writes every key with all its siblings; dynq import into a fresh
    cluster reads back identical (values, siblings, found), into another bucket too."""
    seed = five.seeds[0]
    with five.client() as db:
        handle = db.bucket("three")
        for i in range(40):
            handle.put(f"exp-{i}", f"v{i}".encode())
        for i in range(5):  # blind writes: siblings
            handle.put(f"exp-{i}", b"sibling")
        handle.delete("exp-39")
    out = tmp_path / "three.jsonl"
    exported = run_dynq("export", "three", "--out", str(out), seed=seed)
    assert exported.returncode == 0, exported.stderr
    lines = out.read_text().splitlines()
    assert json.loads(lines[0])["bucket"] == "three"
    keys_in_file = {json.loads(line)["key"] for line in lines[1:]}
    assert len(keys_in_file) == len(lines) - 1
    other = cluster_factory(3)
    oseed = other.seeds[0]
    assert run_dynq("bucket", "create", "three", "--n", "3", seed=oseed).returncode == 0
    assert run_dynq("bucket", "create", "copy", "--n", "2", seed=oseed).returncode == 0
    for target in ("three", "copy"):
        imported = run_dynq("import", str(out), "--bucket", target, seed=oseed)
        assert imported.returncode == 0, imported.stderr
    with five.client() as src, other.client() as dst:
        source_keys = sorted(src.bucket("three").keys(prefix=b"exp-"))
        assert len(source_keys) == 39
        for target in ("three", "copy"):
            assert sorted(dst.bucket(target).keys(prefix=b"exp-")) == source_keys
            for key in source_keys:
                a, c = src.bucket("three").get(key, r=3), dst.bucket(target).get(key)
                assert sorted(a.values) == sorted(c.values), key
            assert len(dst.bucket(target).get("exp-0").values) == 2


def test_bucket_cli(five: LocalCluster) -> None:
    """dynq bucket create/show/list/set/keys and --bucket on put/get/delete/inspect, with
    clear errors: n refused by set, n above the member count, unknown buckets."""
    seed = five.seeds[0]
    made = run_dynq("bucket", "create", "cli", "--n", "2", "--conflict", "lww", seed=seed)
    assert made.returncode == 0 and "n=2" in made.stdout and "conflict=lww" in made.stdout, made.stderr
    shown = json.loads(run_dynq("bucket", "show", "cli", "--json", seed=seed).stdout)
    assert shown["n"] == 2 and shown["r"] == 2
    assert run_dynq("bucket", "set", "cli", "--r", "1", seed=seed).returncode == 0
    wait_for("r=1 everywhere", lambda: json.loads(run_dynq("bucket", "show", "cli", "--json", seed=seed).stdout)["r"] == 1)
    refused = run_dynq("bucket", "set", "cli", "--n", "3", seed=seed)
    assert refused.returncode == 2 and "n cannot change" in refused.stderr
    too_big = run_dynq("bucket", "create", "huge", "--n", "6", seed=seed)
    assert too_big.returncode == 2 and "between 1 and 5" in too_big.stderr, too_big.stderr
    bad = run_dynq("bucket", "create", "bad", "--n", "2", "--r", "3", seed=seed)
    assert bad.returncode == 2 and "r must be" in bad.stderr
    listed = run_dynq("bucket", "list", seed=seed).stdout
    assert listed.splitlines()[0].startswith("default") and "cli" in listed
    assert run_dynq("put", "--bucket", "cli", "ck", "cv", seed=seed).returncode == 0
    assert run_dynq("get", "--bucket", "cli", "ck", seed=seed).stdout.strip() == "cv"
    assert run_dynq("get", "ck", seed=seed).returncode == 1  # not in the default bucket
    inspected = json.loads(run_dynq("inspect", "--bucket", "cli", "ck", "--json", seed=seed).stdout)
    assert inspected["n"] == 2 and sum(1 for r in inspected["replicas"] if r.get("object")) == 2
    assert run_dynq("bucket", "keys", "cli", seed=seed).stdout.split() == ["ck"]
    assert run_dynq("keys", "cli", "--prefix", "c", seed=seed).stdout.split() == ["ck"]  # the spelling
    assert run_dynq("keys", "cli", "--prefix", "x", seed=seed).stdout.split() == []
    assert run_dynq("delete", "--bucket", "cli", "ck", seed=seed).returncode == 0
    assert run_dynq("bucket", "keys", "cli", seed=seed).stdout.split() == []
    unknown = run_dynq("get", "--bucket", "nope", "k", seed=seed)
    assert unknown.returncode == 2 and "no bucket called 'nope'" in unknown.stderr


def test_listing_while_a_node_joins(cluster_factory: Any) -> None:
    """A bucket listed over and over while a 4th node joins and partitions move (n=1,
    n=2 and the default n=3 all move): every listing returns exactly the live keys; after
    the switch each key of each bucket sits on exactly its n replicas."""
    cluster: LocalCluster = cluster_factory(3, extra_config=FAST + NO_AE)
    seed = cluster.seeds[0]
    with cluster.client(timeout=10.0) as db:
        db.call("n1", "bucket_create", {"name": "solo", "props": {"n": 1}})
        db.call("n1", "bucket_create", {"name": "pair", "props": {"n": 2}})
        expected: dict[str, set[bytes]] = {}
        for bucket in ("solo", "pair", b.DEFAULT):
            handle = db.bucket(bucket)
            keys = {f"j{i:04d}".encode() for i in range(600)}
            for key in sorted(keys):
                handle.put(key, b"v", w=1)
            for key in sorted(keys)[:50]:
                handle.delete(key)
            expected[bucket] = keys - set(sorted(keys)[:50])
    address = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    cluster.add_node("n4", address)
    cluster.start("n4")
    with Client([address], timeout=2.0) as probe:
        wait_for("n4 to answer", lambda: probe.call_address(address, "ping", {}), timeout=30)
    assert run_dynq("cluster", "join", seed, seed=address).returncode == 0
    committed = run_dynq("cluster", "commit", seed=seed)
    assert committed.returncode == 0, committed.stderr
    listings = 0
    with cluster.client(timeout=10.0) as db:
        while True:
            state = state_of(db, seed)
            for bucket in ("solo", "pair", b.DEFAULT):
                assert set(db.bucket(bucket).keys(page_size=100)) == expected[bucket], (bucket, state.version)
            listings += 1
            if state.next_ring is None or listings > 200:
                break
        assert listings > 1 or state.next_ring is None
    watched = run_dynq("cluster", "transfers", "--watch", "--max-wait", "120", seed=seed, timeout=180)
    assert watched.returncode == 0, watched.stdout + watched.stderr
    with cluster.client(timeout=10.0) as db:
        wait_for("the new ring", lambda: all(state_of(db, n.address).next_ring is None and len(
            state_of(db, n.address).ring.members) == 4 for n in cluster.nodes.values()))
        db.refresh()
        assert db.table is not None
        for bucket, n in (("solo", 1), ("pair", 2), (b.DEFAULT, 3)):
            assert set(db.bucket(bucket).keys()) == expected[bucket]
            sample = sorted(expected[bucket])[:15]

            def placed(bucket: str = bucket, n: int = n, sample: list[bytes] = sample) -> bool:
                assert db.table is not None
                return all(holders(db, cluster, bucket, key) == sorted(
                    db.table.ring.preference_list_for(b.storage_key(bucket, key), n).primaries) for key in sample)

            wait_for(f"{bucket}: exactly n replicas after the join", placed, timeout=60, interval=0.5)


def test_a_database_from_the_previous_version_serves_its_keys(cluster_factory: Any, tmp_path: Path) -> None:
    """Nodes of the version before buckets write keys; the same data directories under
    this version serve them in the default bucket, and take buckets beside them."""
    old_tree = tmp_path / "old"
    old_tree.mkdir()
    try:
        archive = subprocess.run(["git", "-C", str(REPO), "archive", PRE_BUCKETS, "dynq", "client"],
                                 capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the previous version is not in this checkout's git history: {exc}")
    subprocess.run(["tar", "-x", "-C", str(old_tree)], input=archive, check=True, timeout=60)
    cluster = make_cluster(tmp_path / "cluster", 3)
    old_env = {"PYTHONPATH": f"{old_tree}{os.pathsep}{old_tree / 'client'}"}
    cluster.write_configs()
    for name in cluster.nodes:
        # -P: not the working directory (this checkout) first on the path, the old tree
        cluster.command = (lambda n: [sys.executable, "-P", "-m", "dynq", "node", "start",  # type: ignore[method-assign]
                                      "--config", str(cluster.nodes[n].config_path)])
        cluster.start(name, env=old_env)
    try:
        cluster.wait_ready()
        probe = subprocess.run([sys.executable, "-P", "-c", "import dynq.kv.listing"], env={**os.environ, **old_env},
                               capture_output=True, text=True, timeout=60)
        assert probe.returncode != 0, "the old tree must not have buckets (is PYTHONPATH honoured?)"
        with cluster.client() as db:
            for i in range(200):
                db.put(f"old-{i}", f"v{i}".encode())
            db.put(b"old-0", b"sibling")  # a blind write: two siblings
            db.delete(b"old-199")
    finally:
        cluster.stop_all()
    del cluster.command  # the current version from here on
    for name in cluster.nodes:
        cluster.start(name)
    try:
        cluster.wait_ready()
        with cluster.client() as db:
            for i in range(1, 199):
                assert db.get(f"old-{i}", r=3).values == [f"v{i}".encode()]
            assert sorted(db.get(b"old-0").values) == [b"sibling", b"v0"]
            assert not db.get(b"old-199").found
            assert set(db.keys(prefix=b"old-")) == {f"old-{i}".encode() for i in range(199)}
            db.call("n2", "bucket_create", {"name": "new", "props": {"n": 2}})
            db.bucket("new").put(b"old-1", b"bucketed")
            assert db.get(b"old-1").values == [b"v1"] and db.bucket("new").get(b"old-1").values == [b"bucketed"]
            result = subprocess.run([sys.executable, "-m", "dynq", "repair", "--seed", cluster.seeds[0]],
                                    capture_output=True, text=True, timeout=300)
            assert result.returncode == 0, result.stdout + result.stderr
    finally:
        cluster.stop_all()
