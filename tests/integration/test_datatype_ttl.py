"""Typed keys in buckets with a ttl, on real 3-node clusters: a counter and a set read
empty once expired, an op after the expiry starts from empty on every replica (the old
increments and adds never count again), and expired typed keys are reclaimed from every
primary and stay gone through reads (read repair) and anti-entropy. No timed assertions:
every wait is for a condition, bounded."""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import pytest
from dynq_client import Client
from dynq_client import crdt

from dynq.localcluster import LocalCluster
from tests.conftest import FAST_EXPIRY, GOSSIP_FAST_NO_AE, run_dynq, running_cluster, wait_for

pytestmark = pytest.mark.integration






def local_state(db: Client, node: str, bucket: str, key: bytes) -> crdt.State | None:
    """What one node's database holds for a typed key (its whole state, nothing merged)."""
    blob = db.call(node, "inspect", {"k": key, "bk": bucket}, retry=False)["ob"]
    return None if blob is None else crdt.decode_state(blob)


def create_buckets(cluster: LocalCluster, db: Client, ttl: int) -> None:
    """A counter bucket through the CLI, a set bucket through the admin op."""
    out = run_dynq("bucket", "create", "counters", "--datatype", "counter", "--ttl", str(ttl),
               seed=cluster.addresses[0])
    assert out.returncode == 0, out.stderr
    db.call("n1", "bucket_create", {"name": "sets", "props": {"datatype": "set", "ttl": ttl}})
    wait_for("the buckets", lambda: db.refresh() or (db.bucket("counters").props() is not None
                                                      and db.bucket("sets").props() is not None))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """No background anti-entropy: expired states stay where they are (not reclaimed)."""
    with running_cluster(tmp_path_factory.mktemp("dtttl"), 3, extra_config=GOSSIP_FAST_NO_AE) as c:
        with c.client(timeout=5.0) as db:
            create_buckets(c, db, ttl=1)
        yield c


@pytest.fixture
def db(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client(timeout=5.0) as client:
        yield client


def test_an_expired_counter_and_set_read_empty_and_restart_from_empty(cluster: LocalCluster, db: Client) -> None:
    names = sorted(cluster.nodes)
    c = db.counter("counters", "hits")
    s = db.set("sets", "cart")
    written = time.time()
    c.increment(5)
    s.add(b"socks", b"shoes")
    if time.time() < written + 0.5:  # read well before the ttl (1 s): the values are there
        assert c.value() == 5 and s.value() == {b"socks", b"shoes"}
    wait_for("the counter to expire", lambda: c.value() == 0, timeout=30)
    wait_for("the set to expire", lambda: s.value() == set(), timeout=30)
    assert s.size() == 0 and not s.contains(b"socks")
    # not reclaimed here (anti-entropy is off): every replica still holds the old dots
    for name in names:
        held = local_state(db, name, "counters", b"hits")
        assert held is not None and crdt.counter_value(held.store) == 5
    c.increment(2)
    s.add(b"hat")
    assert c.value() == 2
    assert s.value() == {b"hat"}

    def replicas_reset() -> bool:
        counters = [local_state(db, n, "counters", b"hits") for n in names]
        sets = [local_state(db, n, "sets", b"cart") for n in names]
        return (all(x is not None and crdt.counter_value(x.store) == 2 for x in counters)
                and all(x is not None and set(x.store) == {b"hat"} for x in sets))

    wait_for("every replica to start from empty", replicas_reset, timeout=30)
    out = run_dynq("inspect", "hits", "--bucket", "counters", "--json", seed=cluster.addresses[0])
    primaries = [r for r in json.loads(out.stdout)["replicas"] if r["role"] == "primary"]
    assert len(primaries) == 3 and all(r["object"]["expires_ms"] > 0 for r in primaries)  # dynq inspect shows it


def stats(db: Client, name: str) -> dict[str, Any]:
    return db.call(name, "stats", {}, retry=False)


def roots(db: Client, name: str) -> dict[int, bytes]:
    return {p: root for p, root, _, _ in db.call(name, "ae_tree", {}, retry=False)["partitions"]}


def test_expired_typed_keys_are_reclaimed_everywhere_and_stay_gone(cluster_factory: Any) -> None:
    c: LocalCluster = cluster_factory(3, extra_config=FAST_EXPIRY)
    names = sorted(c.nodes)
    with c.client(timeout=5.0) as db:
        create_buckets(c, db, ttl=1)
        before = sum(stats(db, n)["anti_entropy"]["expired_reclaimed"] for n in names)
        counters = [f"c{i}".encode() for i in range(10)]
        sets = [f"s{i}".encode() for i in range(10)]
        for key in counters:
            db.counter("counters", key).increment(3)
        for key in sets:
            db.set("sets", key).add(b"x", b"y")

        def reclaimed() -> bool:
            return all(local_state(db, n, "counters", k) is None for n in names for k in counters) and \
                all(local_state(db, n, "sets", k) is None for n in names for k in sets)

        wait_for("every replica to reclaim the expired typed keys", reclaimed, timeout=60)
        after = sum(stats(db, n)["anti_entropy"]["expired_reclaimed"] for n in names)
        assert after - before == 3 * (len(counters) + len(sets))  # each key on each replica, once
        # reads (which read-repair what differs) find nothing, and bring nothing back
        assert all(db.counter("counters", k).value() == 0 for k in counters)
        assert all(db.set("sets", k).value() == set() for k in sets)
        assert reclaimed()
        wait_for("equal Merkle trees", lambda: roots(db, names[0]) == roots(db, names[1]) == roots(db, names[2]),
                 timeout=30)
        assert reclaimed()
        # a reclaimed key starts again from empty
        fresh = db.counter("counters", counters[0])
        fresh.increment(1)
        assert fresh.value() == 1
