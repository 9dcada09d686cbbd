"""Buckets, the pure parts: properties and their checks, storage keys, the cluster
state carrying buckets, preference lists and transfers per n, last-write-wins, and
the listing's coverage plan."""

from __future__ import annotations

import pytest
from dynq_client import buckets as b
from dynq_client.buckets import BucketError, BucketProps, Buckets, new_bucket
from dynq_client.errors import InvalidRequest, ProtocolError
from dynq_client.listing import plan_coverage
from dynq_client.ring import Member, new_ring
from dynq_client.routing import RoutingTable
from dynq_client.versions import Sibling, VersionedObject, last_write_wins, merge
from hypothesis import given, settings
from hypothesis import strategies as st

from dynq.cluster.membership import (
    ClusterState,
    MembershipError,
    Staged,
    plan,
    plan_transfers,
    transfer_from_wire,
)

MEMBERS = [Member(f"n{i}", f"tcp://127.0.0.1:{7000 + i}") for i in range(1, 6)]


def state5() -> ClusterState:
    return ClusterState(new_ring(MEMBERS, q=16, n=3))


def test_new_bucket_defaults_quorums_to_the_cluster_capped_at_n() -> None:
    """r and w default to the cluster's, never more than the bucket's n."""
    props = new_bucket("cache", n=1, members=5, default_r=2, default_w=2)
    assert (props.n, props.r, props.w, props.pw, props.conflict) == (1, 1, 1, 0, "siblings")
    assert new_bucket("ledger", n=5, members=5, default_r=3, default_w=3).r == 3


@pytest.mark.parametrize("kw, message", [
    ({"n": 6}, "n must be an integer between 1 and 5"),
    ({"n": 0}, "n must be"),
    ({"n": 3, "r": 4}, "r must be an integer between 1 and 3"),
    ({"n": 3, "w": 0}, "w must be"),
    ({"n": 3, "pw": 4}, "pw must be"),
    ({"n": 3, "conflict": "newest"}, "conflict must be one of siblings, lww"),
    ({"n": 3, "max_siblings": 0}, "max_siblings"),
])
def test_bad_properties_are_refused_with_the_reason(kw: dict[str, object], message: str) -> None:
    """Every out-of-range property is a BucketError (an InvalidRequest) naming it."""
    with pytest.raises(BucketError, match=message):
        new_bucket("x", members=5, **kw)  # type: ignore[arg-type]
    assert issubclass(BucketError, InvalidRequest)


@pytest.mark.parametrize("name", ["", "a b", "default", "x" * 65, "ü"])
def test_bad_names_are_refused(name: str) -> None:
    """Names are 1-64 of [A-Za-z0-9_.-]; "default" is taken by the implicit bucket."""
    with pytest.raises(BucketError):
        new_bucket(name, n=1, members=5)


def test_n_cannot_change_and_unknown_properties_are_named() -> None:
    """`bucket set` refuses n and names properties it does not know."""
    props = new_bucket("carts", n=3, members=5)
    with pytest.raises(BucketError, match="n cannot change"):
        b.changed(props, {"n": 5})
    with pytest.raises(BucketError, match="unknown bucket properties: colour"):
        b.changed(props, {"colour": "red"})
    assert b.changed(props, {"r": 1, "conflict": "lww"}) == BucketProps("carts", 3, 1, 2, 0, "lww")


def test_props_round_trip_and_keep_properties_of_newer_versions() -> None:
    """Wire form round-trips; a property this version does not know survives (append-only)."""
    props = BucketProps("carts", 3, 2, 2, 1, "lww", 10, ttl=60)
    assert BucketProps.from_wire("carts", props.to_wire()) == props
    newer = BucketProps.from_wire("carts", {**props.to_wire(), "future": [1, 2]})
    assert newer.to_wire()["future"] == [1, 2]
    with pytest.raises(ProtocolError):
        BucketProps.from_wire("carts", {"n": 3, "r": 9, "w": 1})


@given(st.binary(min_size=1, max_size=40), st.sampled_from(["default", "a", "carts", "x" * 64]))
def test_storage_keys_split_back(key: bytes, bucket: str) -> None:
    """A storage key names its bucket and key; the default bucket's keys are unchanged."""
    if bucket == b.DEFAULT and key.startswith(b.MARK):
        return
    skey = b.storage_key(bucket, key)
    assert b.split(skey) == (bucket, key)
    assert b.bucket_of(skey) == bucket
    if bucket == b.DEFAULT:
        assert skey == key


def test_storage_keys_of_a_bucket_are_one_range() -> None:
    """Every key of a bucket sorts within [prefix, range_end(prefix)), no other bucket's does."""
    lo = b.prefix("carts")
    hi = b.range_end(lo)
    for key in (b"", b"\x00", b"zzz", b"\xff" * 10):
        assert lo <= b.storage_key("carts", key) < hi
    for other in ("cart", "carts2", "cartt", "default"):
        skey = b.storage_key(other, b"k")
        assert not lo <= skey < hi


def test_default_keys_that_look_like_bucket_keys_are_refused() -> None:
    with pytest.raises(InvalidRequest, match="may not start"):
        b.check_default_key(b"\x00Bxyz")
    b.check_default_key(b"\x00A")  # only the marker itself is reserved


def test_a_state_without_buckets_keeps_its_wire_form_and_digest() -> None:
    """Old states have no 'buckets': their digest must not change (gossip would fork)."""
    state = state5()
    assert "buckets" not in state.to_wire()
    assert ClusterState.from_wire(state.to_wire()).digest == state.digest


def test_with_bucket_makes_a_newer_state_that_round_trips() -> None:
    """A bucket change is a new version (gossip spreads it; replies carry the epoch)."""
    state = state5()
    new = state.with_bucket(new_bucket("carts", n=5, members=5))
    assert new.version == state.version + 1 and new.ring.owners == state.ring.owners
    back = ClusterState.from_wire(new.to_wire())
    assert back == new and back.buckets.get("carts") == new.buckets.get("carts")
    assert back.digest == new.digest
    assert new.n_values() == [3, 5]
    with pytest.raises(MembershipError, match="n = 6 but the cluster has 5 members"):
        state.with_bucket(BucketProps("big", 6, 1, 1))


def test_routing_table_carries_buckets_and_reads_old_tables() -> None:
    state = state5().with_bucket(new_bucket("carts", n=1, members=5))
    table = RoutingTable(state.ring, 2, 2, 1024, 1 << 20, state.buckets)
    back = RoutingTable.from_wire(table.to_wire())
    assert back.bucket("carts") == state.buckets.get("carts")
    old = table.to_wire()
    del old["buckets"]
    assert RoutingTable.from_wire(old).buckets == Buckets()


@settings(max_examples=50)
@given(st.integers(min_value=0, max_value=15), st.integers(min_value=1, max_value=5),
       st.integers(min_value=1, max_value=5))
def test_smaller_n_preference_lists_are_prefixes(partition: int, n1: int, n2: int) -> None:
    """The primaries for a smaller n are the first ones for a bigger n, each list has
    exactly n distinct members, and the fallbacks are everyone else."""
    ring = new_ring(MEMBERS, q=16, n=3)
    small, big = sorted((n1, n2))
    a, c = ring.preference_list(partition, small), ring.preference_list(partition, big)
    assert c.primaries[:small] == a.primaries
    assert len(set(c.primaries)) == big
    assert set(c.primaries) | set(c.fallbacks) == {m.name for m in MEMBERS}
    assert ring.preference_list(partition, 3) is ring.preference_list(partition)


def test_transfers_are_planned_per_n() -> None:
    """A join moves, for each n in use, exactly what that n's preference lists need."""
    ring = new_ring(MEMBERS[:4], q=16, n=3)
    grown = ring.with_members(MEMBERS)
    transfers = plan_transfers(ring, grown, [3, 1, 4])
    assert {t.n for t in transfers} == {0, 1, 4}
    for n in (1, 4):
        for p in range(16):
            entering = set(grown.preference_list(p, n).primaries) - set(ring.preference_list(p, n).primaries)
            targets = {t.target for t in transfers if t.partition == p and t.n == n}
            assert targets == entering
    for t in transfers:
        assert transfer_from_wire(t.to_wire(), 16) == t


def test_plans_and_leaves_respect_bucket_n() -> None:
    """A plan moves every n's data; a leave that would leave fewer members than a
    bucket's n is refused."""
    state = state5().with_bucket(new_bucket("ledger", n=5, members=5))
    with pytest.raises(MembershipError, match="fewer than n = 5 replicas per key of some bucket"):
        Staged().leave(state, "n5")
    staged = Staged().join(state, Member("n6", "tcp://127.0.0.1:7006"))
    assert any(t.n == 5 for t in plan(state, staged).transfers)


def test_a_new_n_cannot_appear_during_a_transition() -> None:
    """Transfers were planned for the n values in use: a bucket with another n waits."""
    state = ClusterState(new_ring(MEMBERS[:4], q=16, n=3)).begin(MEMBERS)
    assert state.next_ring is not None
    with pytest.raises(MembershipError, match="in progress"):
        state.with_bucket(new_bucket("x", n=2, members=4))
    state.with_bucket(new_bucket("y", n=3, members=4))


def test_last_write_wins_keeps_the_newest_sibling_and_converges() -> None:
    """LWW keeps the sibling with the newest timestamp; resolving before or after a merge
    with a third replica gives the same object."""
    a = VersionedObject({"x": 1}, (Sibling("x", 1, 100, b"old"),))
    c = VersionedObject({"y": 1}, (Sibling("y", 1, 200, b"new"),))
    merged = merge(a, c)
    assert len(merged.siblings) == 2
    resolved = last_write_wins(merged)
    assert resolved.values == [b"new"] and resolved.clock == {"x": 1, "y": 1}
    assert last_write_wins(merge(resolved, a)) == resolved
    assert last_write_wins(merge(a, resolved)) == resolved


def test_coverage_reads_each_partition_once_from_a_primary() -> None:
    """Every partition from `first` on is in exactly one run, served by a primary for n,
    skipping nodes that are not usable; runs are few (sticky)."""
    ring = new_ring(MEMBERS, q=16, n=3)
    for n in (1, 3, 5):
        runs = plan_coverage(ring, n, lambda name: name != "n2", first=3)
        covered = [p for _, parts in runs for p in parts]
        assert covered == list(range(3, 16))
        for node, parts in runs:
            for p in parts:
                assert node in ring.preference_list(p, n).primaries
                if n > 1:
                    assert node != "n2"
        if n == 5:
            assert len(runs) == 1
