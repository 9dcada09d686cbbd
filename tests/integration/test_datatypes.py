"""Data types on a real 3-node cluster: ops through the sync and async clients, a replica
down and back (hinted deltas, then a read after the join), observed-remove through a
handle's context, typed buckets refusing plain puts (and the reverse), deletes, listing,
membership and size of a set, anti-entropy of typed keys, and the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any, Iterator

import pytest
from dynq_client import AsyncClient, Client, ValueTooLarge, WrongDataType
from dynq_client import crdt
from dynq_client.buckets import storage_key
from dynq_client.versions import encode_object, update

from dynq.cluster.membership import ClusterState
from dynq.localcluster import LocalCluster
from tests.conftest import make_cluster, wait_for, wait_known_down, wait_unreachable

pytestmark = pytest.mark.integration

FAST = """
[membership]
gossip_interval_ms = 200
"""

NO_AE = """
[anti_entropy]
enabled = false
"""

TYPES = ("counter", "set", "map", "register", "flag")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three nodes (n=3, R=W=2), a bucket of each type and a plain one; background
    anti-entropy off, so what replicas hold is what the write path and repairs did."""
    c = make_cluster(tmp_path_factory.mktemp("dt"), 3, extra_config=FAST + NO_AE)
    c.start_all()
    try:
        c.wait_ready()
        with c.client() as db:
            for t in TYPES:
                db.call("n1", "bucket_create", {"name": f"{t}s", "props": {"datatype": t}})
            db.call("n1", "bucket_create", {"name": "plain", "props": {}})
        yield c
    finally:
        c.stop_all()


@pytest.fixture
def db(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client(timeout=5.0) as client:
        yield client


def local_state(db: Client, cluster: LocalCluster, node: str, bucket: str, key: bytes) -> crdt.State | None:
    """What one node's database holds for a typed key (its whole state)."""
    blob = db.call(node, "inspect", {"k": key, "bk": bucket}, retry=False)["ob"]
    return None if blob is None else crdt.decode_state(blob)


def test_every_type_through_the_sync_client(db: Client) -> None:
    """Counter, set, register, flag and map ops read back as the type's value."""
    c = db.counter("counters", "likes")
    c.increment()
    c.increment(10)
    c.decrement(3)
    assert c.value() == 8
    s = db.set("sets", "cart")
    s.add(b"socks", b"shoes")
    s.add("hat")
    assert s.value() == {b"socks", b"shoes", b"hat"}
    assert s.contains(b"socks") and not s.contains(b"gloves")
    assert s.size() == 3
    s.remove(b"shoes")
    assert s.value() == {b"socks", b"hat"}
    r = db.register("registers", "name")
    assert r.value() is None
    r.assign(b"alice")
    r.assign(b"bob")
    assert r.value() == b"bob" and r.values() == [b"bob"]
    f = db.flag("flags", "on")
    assert f.value() is False
    f.enable()
    assert f.value() is True
    f.disable()
    assert f.value() is False
    m = db.map("maps", "user")
    m.counter("visits").increment(2)
    m.set("tags").add(b"admin")
    m.map("address").register("city").assign(b"Paris")
    m.flag("active").enable()
    assert m.value() == {"visits": 2, "tags": {b"admin"}, "address": {"city": b"Paris"}, "active": True}
    m.value()
    m.set("tags").remove()
    m.map("address").register("city").remove()
    assert m.value() == {"visits": 2, "active": True}


def test_the_async_client_and_concurrent_increments(cluster: LocalCluster) -> None:
    """100 increments in flight at once from the async client all count."""
    async def run() -> int:
        async with AsyncClient(cluster.seeds, timeout=10.0, keys=cluster.client_keys()) as adb:  # type: ignore[arg-type]
            c = adb.counter("counters", "async")
            await asyncio.gather(*(c.increment() for _ in range(100)))
            s = adb.set("sets", "async")
            await asyncio.gather(*(s.add(f"e{i}".encode()) for i in range(50)))
            assert await s.size() == 50
            return await c.value()

    assert asyncio.run(run()) == 100


def test_typed_buckets_refuse_plain_ops_and_the_reverse(db: Client) -> None:
    """A plain put or get on a typed bucket, an op on a plain bucket or of another type: WrongDataType."""
    with pytest.raises(WrongDataType):
        db.put(b"k", b"v", bucket="counters")
    with pytest.raises(WrongDataType):
        db.get(b"k", bucket="sets")
    with pytest.raises(WrongDataType):
        db.counter("plain", "k").increment()
    with pytest.raises(WrongDataType):
        db.set("counters", "k").add(b"x")
    with pytest.raises(WrongDataType):  # the node refuses too, for clients that do not check
        db.call("n1", "put", {"k": b"k", "bk": "counters", "v": b"v"})
    with pytest.raises(WrongDataType):
        db.call("n2", "dt_update", {"k": b"k", "bk": "plain", "op": ["incr", 1]})
    db.counter("counters", "k").increment()
    plain = encode_object(update(None, {}, "n9.a", b"v", 1))
    with pytest.raises(WrongDataType):  # a peer's plain object never overwrites a typed state
        db.call("n1", "replica_put", {"k": storage_key("counters", b"k"), "ob": plain})
    assert db.counter("counters", "k").value(r=3) == 1


def test_observed_remove_keeps_a_concurrent_add(db: Client) -> None:
    """A remove with a read's context removes what that read saw; an add it did not see survives."""
    reader = db.set("sets", "or")
    reader.add(b"x")
    assert reader.contains(b"x")  # the handle now holds this read's context
    other = db.set("sets", "or")
    other.add(b"x")  # concurrent with the removal below: reader never saw it
    reader.remove(b"x")
    assert db.set("sets", "or").value() == {b"x"}
    fresh = db.set("sets", "or")
    fresh.value()
    fresh.remove(b"x")
    assert db.set("sets", "or").value() == set()


def test_a_replica_down_and_back(db: Client, cluster: LocalCluster) -> None:
    """With n3 down, ops succeed on the other two replicas (W=2); once n3 is back, a
    whole read (R=3) joins the three states and repairs n3: every replica ends equal."""
    c, s = db.counter("counters", "outage"), db.set("sets", "outage")
    c.increment(5)
    s.add(b"before")
    cluster.kill("n3")
    wait_known_down(db, ["n1", "n2"], "n3")
    wait_unreachable(db, "n3")
    for i in range(10):
        c.increment()
        s.add(f"during{i}".encode())
    s.value()
    s.remove(b"before")
    assert c.value() == 15
    cluster.start("n3")
    cluster.wait_ready(["n3"])
    want = {f"during{i}".encode() for i in range(10)}
    wait_for("a read of all three replicas", lambda: c.value(r=3) == 15 and s.value(r=3) == want)

    def repaired() -> bool:
        cs = local_state(db, cluster, "n3", "counters", b"outage")
        ss = local_state(db, cluster, "n3", "sets", b"outage")
        return (cs is not None and crdt.value_of("counter", cs.store) == 15
                and ss is not None and set(ss.store) == want)

    wait_for("read repair of n3", repaired)
    states = {crdt.encode_state(st) for n in ("n1", "n2", "n3")
              if (st := local_state(db, cluster, n, "sets", b"outage")) is not None}
    assert len(states) == 1


def test_read_repair_and_anti_entropy_join_typed_keys(db: Client, cluster: LocalCluster) -> None:
    """A replica that missed deltas is repaired by a whole read (read repair) and by a
    manual anti-entropy pass (dynq repair), both through the type's join."""
    s = db.set("sets", "repair")
    s.add(b"a")
    cluster.stop("n2")
    wait_known_down(db, ["n1", "n3"], "n2")
    s.add(b"b")
    cluster.start("n2")
    cluster.wait_ready(["n2"])
    wait_for("a whole read to repair n2", lambda: s.value(r=3) == {b"a", b"b"} and (
        (st := local_state(db, cluster, "n2", "sets", b"repair")) is not None and set(st.store) == {b"a", b"b"}))


def test_delete_and_listing(db: Client) -> None:
    """Deleting a typed key (plain delete or the handle's) empties it; listing shows live typed keys."""
    for i in range(5):
        db.counter("counters", f"list{i}").increment(i + 1)
    db.delete(b"list0", bucket="counters")
    assert db.counter("counters", "list0").value() == 0
    db.counter("counters", "list1").delete()
    keys = set(db.keys(bucket="counters", prefix=b"list"))
    assert keys == {b"list2", b"list3", b"list4"}
    db.counter("counters", "list1").increment(7)  # a cleared key takes new ops
    assert db.counter("counters", "list1").value() == 7


def test_a_large_set_takes_adds_without_rewriting_itself(db: Client, cluster: LocalCluster) -> None:
    """Adds to a set of 3,000 elements send small deltas; membership and size stay cheap reads."""
    s = db.set("sets", "large")
    for chunk in range(3):
        s.add(*[f"e{chunk}-{i}".encode() for i in range(1000)])
    assert s.size() == 3000
    stats_before = db.call("n1", "stats", {})
    s.add(b"one-more")
    assert s.contains(b"one-more") and s.size() == 3001
    assert len(s.value()) == 3001
    assert stats_before is not None


def test_the_cli(cluster: LocalCluster) -> None:
    """dynq counter incr/get, set add/remove/get, map update/get print the values."""
    seed = cluster.seeds[0]

    def dynq(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "dynq", *args, "--seed", seed],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    dynq("counter", "incr", "counters", "cli", "5")
    dynq("counter", "incr", "counters", "cli")
    assert dynq("counter", "get", "counters", "cli").strip() == "6"
    dynq("set", "add", "sets", "cli", "a", "b", "c")
    dynq("set", "remove", "sets", "cli", "b")
    assert dynq("set", "get", "sets", "cli").split() == ["a", "c"]
    dynq("map", "incr", "maps", "cli", "visits", "3")
    dynq("map", "add", "maps", "cli", "tags", "x")
    dynq("map", "assign", "maps", "cli", "name", "bob")
    out = dynq("map", "get", "maps", "cli")
    assert "visits\t3" in out and "name\tbob" in out and "tags\tx" in out
    dynq("flag", "enable", "flags", "cli")
    assert dynq("flag", "get", "flags", "cli").strip() == "true"
    dynq("register", "assign", "registers", "cli", "v1")
    assert dynq("register", "get", "registers", "cli").strip() == "v1"


def test_export_and_import_of_a_typed_bucket(db: Client, cluster: LocalCluster, tmp_path: Any) -> None:
    """dynq export of a set bucket writes its states; dynq import joins them into another
    set bucket (removed elements stay removed)."""
    for i in range(3):
        db.set("sets", f"exp{i}").add(b"a", b"b")
    h = db.set("sets", "exp0")
    h.value()
    h.remove(b"b")
    db.call("n1", "bucket_create", {"name": "sets2", "props": {"datatype": "set"}})
    seed = cluster.seeds[0]
    path = tmp_path / "sets.jsonl"
    run = [sys.executable, "-m", "dynq"]
    out = subprocess.run(run + ["export", "sets", "--out", str(path), "--seed", seed], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    out = subprocess.run(run + ["import", str(path), "--bucket", "sets2", "--seed", seed], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    db.refresh()
    assert db.set("sets2", "exp0").value() == {b"a"}
    assert db.set("sets2", "exp2").value() == {b"a", b"b"}
    with pytest.raises(WrongDataType):
        db.counter("sets2", "x").value()


def test_inspect_shows_a_typed_state(db: Client, cluster: LocalCluster) -> None:
    """dynq inspect of a typed key shows each replica's type, context and value, and agreement."""
    db.counter("counters", "inspected").increment(4)
    out = subprocess.run([sys.executable, "-m", "dynq", "inspect", "inspected", "--bucket", "counters",
                          "--seed", cluster.seeds[0]], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "counter context" in out.stdout and "primaries agree" in out.stdout and "4" in out.stdout


def test_hinted_deltas_reach_the_primary(cluster_factory: Any) -> None:
    """Four nodes, n=3: with a primary of the key down, ops go to the fallback with a hint
    (a joined delta); once the primary is back, handoff replays the hint and the primary
    holds the whole state (anti-entropy off: only the hint can bring it)."""
    c: LocalCluster = cluster_factory(4, extra_config=FAST + NO_AE)
    with c.client(timeout=5.0) as db:
        db.call("n1", "bucket_create", {"name": "s", "props": {"datatype": "set"}})
        db.call("n1", "bucket_create", {"name": "c", "props": {"datatype": "counter"}})
        db.refresh()
        assert db.table is not None
        from dynq_client import buckets as b
        plist = db.table.ring.preference_list_for(b.storage_key("s", b"k"), 3)
        victim, fallback = plist.primaries[-1], plist.fallbacks[0]
        s, n = db.set("s", "k"), db.counter("c", "k")
        s.add(b"before")
        c.kill(victim)
        others = [x for x in c.nodes if x != victim]
        wait_known_down(db, others, victim)
        wait_unreachable(db, victim)
        for i in range(5):
            s.add(b"during%d" % i)
            n.increment(2)
        s.value()
        s.remove(b"before")
        held = db.call(fallback, "inspect", {"k": b"k", "bk": "s"}, retry=False)
        assert held["hints"] == [victim] and crdt.decode_state(held["ob"]).kind == "set"
        c.start(victim)
        c.wait_ready([victim])
        want = {b"during%d" % i for i in range(5)}

        def handed_off() -> bool:
            st = local_state(db, c, victim, "s", b"k")
            return st is not None and set(st.store) == want

        wait_for("the hint's joined deltas to reach the primary", handed_off)
        assert n.value(r=3) == 10
        assert s.value(r=3) == want


def test_partition_transfers_move_typed_states(cluster_factory: Any) -> None:
    """A 4th node joins a 3-node cluster while sets (one of 2,000 elements) and counters
    take ops: after the transfers every primary of every key holds the whole joined state
    (anti-entropy off: only transfers and the write path move data)."""
    from dynq_client import buckets as b
    from tests.conftest import free_ports

    c: LocalCluster = cluster_factory(3, extra_config=FAST + NO_AE)
    seed = c.seeds[0]
    with c.client(timeout=10.0) as db:
        db.call("n1", "bucket_create", {"name": "s", "props": {"datatype": "set"}})
        db.call("n1", "bucket_create", {"name": "c", "props": {"datatype": "counter"}})
        db.refresh()
        db.set("s", "big").add(*[b"e%d" % i for i in range(2000)])
        for i in range(40):
            db.set("s", f"k{i}").add(b"a", b"b")
            db.counter("c", f"k{i}").increment(i)
    address = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    c.add_node("n4", address)
    c.start("n4")
    with Client([address], timeout=2.0) as probe:
        wait_for("n4 to answer", lambda: probe.call_address(address, "ping", {}), timeout=30)

    def dynq(*args: str, at: str = seed) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dynq", *args, "--seed", at], capture_output=True,
                              text=True, timeout=180)

    assert dynq("cluster", "join", seed, at=address).returncode == 0
    assert dynq("cluster", "commit").returncode == 0
    with c.client(timeout=10.0) as db:
        for i in range(40):  # ops while partitions move
            db.counter("c", f"k{i}").increment(1)
    watched = dynq("cluster", "transfers", "--watch", "--max-wait", "120")
    assert watched.returncode == 0, watched.stdout + watched.stderr
    with c.client(timeout=10.0) as db:
        def switched() -> bool:
            states = [ClusterState.from_wire(db.call_address(n.address, "cluster_state", {})["state"])
                      for n in c.nodes.values()]
            return all(st.next_ring is None and len(st.ring.members) == 4 for st in states)

        wait_for("the new ring", switched)
        db.refresh()
        assert db.table is not None
        ring = db.table.ring

        def everywhere(bucket: str, key: bytes, check: Any) -> bool:
            primaries = ring.preference_list_for(b.storage_key(bucket, key), 3).primaries
            return all((st := local_state(db, c, node, bucket, key)) is not None and check(st) for node in primaries)

        wait_for("transferred states on every primary", lambda: everywhere(
            "s", b"big", lambda st: len(st.store) == 2000) and all(
            everywhere("c", b"k%d" % i, lambda st, i=i: crdt.value_of("counter", st.store) == i + 1)
            and everywhere("s", b"k%d" % i, lambda st: set(st.store) == {b"a", b"b"}) for i in range(40)),
            timeout=90, interval=0.5)
        assert db.set("s", "big").size() == 2000


def test_a_set_stops_growing_before_its_state_outgrows_a_message(cluster_factory: Any) -> None:
    """With 1.2 MB messages, adds of 1,000-byte elements are refused (ValueTooLarge, the
    set untouched) once the whole state would pass 3/4 of a message: what anti-entropy,
    hints, transfers and whole reads must still ship. Everything acknowledged reads back
    whole from every replica, and a removal makes room again."""
    small = "\n[limits]\nmax_message_bytes = 1200000\nmax_value_bytes = 65536\n"
    c: LocalCluster = cluster_factory(3, extra_config=FAST + small)
    with c.client(timeout=10.0) as db:
        db.call("n1", "bucket_create", {"name": "s", "props": {"datatype": "set"}})
        db.refresh()
        s = db.set("s", "grows")
        added: set[bytes] = set()
        refused = None
        for batch in range(40):  # bounded: ~17 batches fit
            elements = [b"%04d-%04d-" % (batch, i) + b"x" * 990 for i in range(50)]
            try:
                s.add(*elements)
            except ValueTooLarge as exc:
                refused = exc
                break
            added.update(elements)
        assert refused is not None and "3/4 of max_message_bytes" in str(refused)
        assert 500 <= len(added) < 2000
        assert s.value(r=3) == added and s.size() == len(added)
        for node in ("n1", "n2", "n3"):
            st = local_state(db, c, node, "s", b"grows")
            assert st is not None and set(st.store) == added
        s.value()
        gone = sorted(added)[:100]
        s.remove(*gone)
        s.add(b"room-again")
        assert s.value(r=3) == (added - set(gone)) | {b"room-again"}
