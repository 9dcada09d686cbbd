"""Expiry carried in the object (dynq_client.versions), the leaf times the reaper finds
expired objects by (dynq.repair.trees), and conditional puts (dynq.kv.conditions)."""

from __future__ import annotations

from pathlib import Path

import apsw
import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynq_client.errors import PreconditionFailed, ProtocolError, error_from_wire
from dynq_client.versions import (
    Sibling,
    VersionedObject,
    decode_context,
    decode_object,
    encode_object,
    merge,
    update,
)
from dynq.kv.conditions import Condition, KeyQueue, check
from dynq.repair.trees import leaf_times, leaf_times_of_blob


def test_a_sibling_without_expiry_encodes_as_before() -> None:
    """Objects written without a ttl keep the 4-element sibling form, byte for byte, so
    their Merkle leaves are those of the previous version."""
    obj = update(None, {}, "a", b"v", 1000)
    assert msgpack.unpackb(encode_object(obj)) == [1, [["a", 1]], [["a", 1, 1000, b"v"]]]


def test_expiry_round_trips_and_travels_with_the_sibling() -> None:
    obj = update(None, {}, "a", b"v", 1000, expires_ms=3000)
    assert msgpack.unpackb(encode_object(obj))[2] == [["a", 1, 1000, b"v", 3000]]
    back = decode_object(encode_object(obj))
    assert back == obj and back.siblings[0].expires_ms == 3000
    # a replica that merges it holds the same expiry
    other = merge(update(None, {}, "b", b"w", 1100), back)
    assert {s.dot: s.expires_ms for s in other.siblings} == {("a", 1): 3000, ("b", 1): 0}


@pytest.mark.parametrize("sibling", [
    ["a", 1, 1000, None, 3000],  # a tombstone has no expiry
    ["a", 1, 1000, b"v", 0],  # the 5-element form is only for a real expiry
    ["a", 1, 1000, b"v", "soon"],
    ["a", 1, 1000, b"v", 3000, 1],
])
def test_malformed_expiry_is_refused(sibling: list[object]) -> None:
    with pytest.raises(ProtocolError):
        decode_object(msgpack.packb([1, [["a", 1]], [sibling]]))


def test_a_delete_never_carries_an_expiry() -> None:
    obj = update(None, {}, "a", None, 1000, expires_ms=3000)
    assert obj.siblings[0].expires_ms == 0 and obj.is_tombstone


def test_live_leaves_expired_values_out_and_keeps_the_clock() -> None:
    a = update(None, {}, "a", b"short", 1000, expires_ms=2000)
    ab = merge(a, update(None, {}, "b", b"forever", 1001))
    assert ab.live(1999).values == [b"short", b"forever"]
    seen = ab.live(2000)
    assert seen.values == [b"forever"] and seen.clock == ab.clock and seen.found
    only = a.live(2000)
    assert not only.found and only.values == [] and only.clock == a.clock


def test_an_expired_sibling_dropped_on_one_replica_stays_dropped_on_merge() -> None:
    """Dropping an expired sibling while keeping the clock supersedes it: merging with a
    replica that still holds it does not bring it back."""
    a = update(None, {}, "a", b"short", 1000, expires_ms=2000)
    b_ = merge(None, a)
    rewritten = update(a, {}, "a", b"new", 2500)  # the coordinator drops what expired by 2500
    assert [s.value for s in rewritten.siblings] == [b"new"]
    assert merge(b_, rewritten).values == [b"new"] == merge(rewritten, b_).values


def test_a_rewrite_without_ttl_before_expiry_survives_it() -> None:
    a = update(None, {}, "a", b"session", 1000, expires_ms=2000)
    again = update(a, dict(a.clock), "a", b"kept", 1500)
    assert again.live(10_000).values == [b"kept"]


def test_concurrent_writes_with_and_without_ttl_expire_each_on_its_own() -> None:
    a = update(None, {}, "a", b"ttl", 1000, expires_ms=2000)
    b_ = update(None, {}, "b", b"plain", 1000)
    both = merge(a, b_)
    assert sorted(both.live(1500).values) == [b"plain", b"ttl"]
    assert both.live(2500).values == [b"plain"]


@pytest.mark.parametrize("siblings,expected", [
    ([("a", b"v", 0)], (0, 0)),  # live, never expires
    ([("a", None, 0)], (1000, 0)),  # a plain tombstone: tombstone grace
    ([("a", b"v", 5000)], (0, 5000)),  # expires at 5000
    ([("a", b"v", 5000), ("b", b"w", 0)], (0, 0)),  # one value never expires
    ([("a", b"v", 5000), ("b", None, 0)], (0, 5000)),  # dead once the value expired
    ([("a", b"v", 5000), ("b", b"w", 7000)], (0, 7000)),  # dead when the last one expired
])
def test_leaf_times(siblings: list[tuple[str, bytes | None, int]], expected: tuple[int, int]) -> None:
    obj = VersionedObject({actor: 1 for actor, _, _ in siblings},
                          tuple(Sibling(actor, 1, 1000, value, exp) for actor, value, exp in siblings))
    assert leaf_times(obj) == expected
    assert leaf_times_of_blob(encode_object(obj)) == expected


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcde"), st.one_of(st.none(), st.binary(max_size=3)),
                          st.sampled_from([0, 0, 3000, 9000])), min_size=1, max_size=5, unique_by=lambda t: t[0]))
def test_leaf_times_from_the_plain_form_agree_with_the_object(raw: list[tuple[str, bytes | None, int]]) -> None:
    """The rebuild path reads leaf times from stored bytes without building objects: it
    must find exactly what the write path computed."""
    obj = VersionedObject({actor: 1 for actor, _, _ in raw},
                          tuple(Sibling(actor, 1, 1000 + i, value, exp if value is not None else 0)
                                for i, (actor, value, exp) in enumerate(raw)))
    assert leaf_times_of_blob(encode_object(obj)) == leaf_times(obj)


def test_an_older_leaf_table_gains_the_expiry_column(tmp_path: Path) -> None:
    """A database written before TTL: its ae_leaves has no exp_ms; opening adds it."""
    from dynq.repair.trees import PartitionTrees
    from dynq.store.storage import Storage
    from dynq_client.ring import Member, new_ring

    path = tmp_path / "db.sqlite"
    conn = apsw.Connection(str(path))
    conn.execute("CREATE TABLE ae_leaves (partition INTEGER NOT NULL, segment INTEGER NOT NULL, key BLOB NOT NULL, "
                 "h BLOB NOT NULL, tomb_ms INTEGER NOT NULL, PRIMARY KEY (partition, segment, key)) WITHOUT ROWID")
    conn.execute("INSERT INTO ae_leaves VALUES (0, 0, x'6b', x'00', 0)")
    conn.close()
    storage = Storage(path)
    ring = new_ring([Member("n1", "tcp://127.0.0.1:1")], q=8, n=1)
    try:
        trees = PartitionTrees(storage, "n1", lambda: ring)
        cols = [c[1] for c in storage.conn.execute("PRAGMA table_info(ae_leaves)")]
        assert "exp_ms" in cols
        assert list(storage.conn.execute("SELECT exp_ms FROM ae_leaves")) == [(0,)]
        assert not trees.has_expired(0, 10**15)
    finally:
        storage.close()


# --- conditions ------------------------------------------------------------------------


def test_if_none_match_passes_on_nothing_a_tombstone_or_expired_values() -> None:
    none = Condition(none_match=True)
    assert check(none, None, 0) == {}
    gone = update(update(None, {}, "a", b"v", 1), {"a": 1}, "a", None, 2)
    assert check(none, gone, 10) == gone.clock  # the put supersedes the tombstone
    expired = update(None, {}, "a", b"v", 1, expires_ms=5)
    assert check(none, expired, 5) == expired.clock


def test_if_none_match_fails_on_a_live_value_with_what_it_found() -> None:
    obj = update(None, {}, "a", b"taken", 1, expires_ms=50)
    with pytest.raises(PreconditionFailed) as info:
        check(Condition(none_match=True), obj, 49)
    assert info.value.values == [b"taken"] and decode_context(info.value.context) == obj.clock


def test_if_match_passes_only_for_the_version_read() -> None:
    v1 = update(None, {}, "a", b"1", 1)
    assert check(Condition(match=dict(v1.clock)), v1, 2) == v1.clock
    v2 = update(v1, dict(v1.clock), "b", b"2", 3)
    with pytest.raises(PreconditionFailed) as info:
        check(Condition(match=dict(v1.clock)), v2, 4)
    assert info.value.values == [b"2"]
    with pytest.raises(PreconditionFailed):  # the context names a version that no longer exists
        check(Condition(match=dict(v1.clock)), None, 4)
    assert check(Condition(match={}), None, 4) == {}  # read "not found", still not found


def test_precondition_failed_round_trips_the_wire() -> None:
    err = PreconditionFailed("if_none_match: taken", values=[b"x", b"y"], context=b"ctx")
    back = error_from_wire(err.to_wire())
    assert isinstance(back, PreconditionFailed)
    assert back.values == [b"x", b"y"] and back.context == b"ctx" and back.found


def test_key_queue_runs_one_step_per_key_in_arrival_order() -> None:
    queue = KeyQueue()
    ran: list[str] = []
    releases: dict[str, object] = {}

    def step(name: str) -> object:
        def run(release: object) -> None:
            ran.append(name)
            releases[name] = release
        return run

    queue.run(b"k", step("first"))  # type: ignore[arg-type]
    queue.run(b"k", step("second"))  # type: ignore[arg-type]
    queue.run(b"other", step("elsewhere"))  # type: ignore[arg-type]
    assert ran == ["first", "elsewhere"]
    releases["first"]()  # type: ignore[operator]
    releases["first"]()  # type: ignore[operator]  # a second release changes nothing
    assert ran == ["first", "elsewhere", "second"]
    releases["second"]()  # type: ignore[operator]
    releases["elsewhere"]()  # type: ignore[operator]
    assert len(queue) == 0


def test_key_queue_releases_a_step_that_raises() -> None:
    queue = KeyQueue()

    def boom(release: object) -> None:
        raise RuntimeError("bug")

    with pytest.raises(RuntimeError):
        queue.run(b"k", boom)
    ran: list[int] = []
    queue.run(b"k", lambda release: ran.append(1))
    assert ran == [1]
