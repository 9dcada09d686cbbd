"""Dotted version vectors (dynq_client.versions): merge algebra, causality and the codecs.

Most properties run over *realistic* objects: a few actors each hold a replica of one key,
and a random history of coordinated writes (``update`` on the coordinator's own replica,
with the context of some earlier, possibly stale or empty, read) and replica syncs
(``merge``) produces every state the test looks at.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import msgpack
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dynq_client.errors import InvalidContext, InvalidRequest, ProtocolError
from dynq_client.protocol import Limits, packb
from dynq_client.versions import (
    EMPTY,
    MAX_ACTOR_LEN,
    Sibling,
    VersionedObject,
    covers,
    decode_context,
    decode_object,
    descends,
    encode_context,
    encode_object,
    merge,
    merge_all,
    object_to_wire,
    update,
)

ACTORS = ("a", "b", "c")

PROPERTY = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- realistic histories ------------------------------------------------------------------


@dataclass
class Write:
    """One coordinated write: the sibling it minted and the context it was based on."""

    sibling: Sibling
    context: dict[str, int]


@dataclass
class History:
    replicas: dict[str, VersionedObject | None]
    states: list[VersionedObject] = field(default_factory=list)  # every state any replica held
    reads: list[VersionedObject | None] = field(default_factory=list)  # what a reader could see
    writes: list[Write] = field(default_factory=list)
    now_ms: int = 0  # the time of the latest coordinated write (coordinators drop siblings expired by then)

    def final(self) -> VersionedObject:
        return merge_all(self.replicas.values()) or EMPTY

    def covered_by_some_context(self, dot: tuple[str, int]) -> bool:
        return any(covers(w.context, *dot) for w in self.writes)


def _record(h: History) -> None:
    for obj in h.replicas.values():
        if obj is not None:
            h.states.append(obj)
        h.reads.append(obj)


@st.composite
def histories(draw: st.DrawFn, max_ops: int = 14) -> History:
    """A random run of one key on three replicas: coordinated puts/deletes and syncs.

    An actor only mints dots from its own replica's state (which includes every dot it
    minted before), exactly as a dynq coordinator writes locally first.
    """
    h = History(replicas={actor: None for actor in ACTORS})
    h.reads.append(None)
    for step in range(draw(st.integers(0, max_ops))):
        kind = draw(st.sampled_from(("put", "put", "put", "delete", "sync", "sync")))
        if kind in ("put", "delete"):
            actor = draw(st.sampled_from(ACTORS))
            # The read the writer based its context on: any earlier state of any replica
            # (possibly stale, possibly nothing), or a quorum read merging two of them.
            read = h.reads[draw(st.integers(0, len(h.reads) - 1))]
            if draw(st.booleans()):
                read = merge(read, h.reads[draw(st.integers(0, len(h.reads) - 1))])
            context = dict(read.clock) if read is not None else {}
            value = None if kind == "delete" else f"{actor}{step}".encode()
            # some puts expire a few steps later (a coordinator drops siblings expired by its now)
            expires = 1000 + step + draw(st.integers(1, 6)) if value is not None and draw(st.booleans()) else 0
            h.now_ms = 1000 + step
            new = update(h.replicas[actor], context, actor, value, h.now_ms, expires)
            h.replicas[actor] = new
            minted = next(s for s in new.siblings if s.dot == (actor, new.clock[actor]))
            h.writes.append(Write(minted, context))
            for other in ACTORS:  # replicate the new object to some of the others
                if other != actor and draw(st.booleans()):
                    h.replicas[other] = merge(h.replicas[other], new)
        else:
            src, dst = draw(st.permutations(ACTORS))[:2]
            h.replicas[dst] = merge(h.replicas[dst], h.replicas[src])
            if draw(st.booleans()):
                h.replicas[src] = merge(h.replicas[src], h.replicas[dst])
        _record(h)
    return h


@st.composite
def history_and_objects(draw: st.DrawFn, count: int) -> tuple[History, list[VersionedObject]]:
    """A history and ``count`` objects taken from it (any states, EMPTY allowed)."""
    h = draw(histories())
    pool = [EMPTY, *h.states]
    return h, [pool[draw(st.integers(0, len(pool) - 1))] for _ in range(count)]


def copy_of(obj: VersionedObject) -> VersionedObject:
    """An equal but distinct object (defeats any identity short-cut in merge)."""
    return VersionedObject(dict(obj.clock), tuple(Sibling(*s.dot, s.timestamp_ms, s.value, s.expires_ms)
                                                  for s in obj.siblings))


def dots(obj: VersionedObject | None) -> set[tuple[str, int]]:
    return {s.dot for s in obj.siblings} if obj is not None else set()


def well_formed(obj: VersionedObject) -> None:
    ds = [s.dot for s in obj.siblings]
    assert len(ds) == len(set(ds)), "duplicate dots"
    assert ds == sorted(ds), "siblings not in canonical dot order"
    assert all(covers(obj.clock, *d) for d in ds), "a sibling's dot is not in the clock"
    assert all(isinstance(c, int) and c > 0 for c in obj.clock.values())


# --- merge algebra ------------------------------------------------------------------------


@PROPERTY
@given(history_and_objects(2))
def test_merge_is_commutative(ho: tuple[History, list[VersionedObject]]) -> None:
    """merge(a, b) and merge(b, a) are equal objects with identical encodings."""
    _, (a, b) = ho
    ab, ba = merge(a, b), merge(b, a)
    assert ab == ba
    assert encode_object(ab) == encode_object(ba)
    well_formed(ab)


@PROPERTY
@given(history_and_objects(3))
def test_merge_is_associative(ho: tuple[History, list[VersionedObject]]) -> None:
    """merge(merge(a, b), c) == merge(a, merge(b, c))."""
    _, (a, b, c) = ho
    assert merge(merge(a, b), c) == merge(a, merge(b, c))


@PROPERTY
@given(history_and_objects(1))
def test_merge_is_idempotent(ho: tuple[History, list[VersionedObject]]) -> None:
    """Merging an object with itself (same instance or an equal copy) returns it unchanged."""
    _, (a,) = ho
    assert merge(a, a) == a
    assert merge(a, copy_of(a)) == a
    assert merge(copy_of(a), a) == a


@PROPERTY
@given(history_and_objects(1))
def test_merge_with_nothing_is_identity(ho: tuple[History, list[VersionedObject]]) -> None:
    """None and EMPTY are identities of merge on either side."""
    _, (a,) = ho
    assert merge(a, None) == a
    assert merge(None, a) == a
    assert merge(a, EMPTY) == a
    assert merge(EMPTY, a) == a


def test_merge_of_nothing() -> None:
    """merge(None, None) is EMPTY and merge_all of nothing (or only Nones) is None."""
    assert merge(None, None) == EMPTY
    assert merge_all([]) is None
    assert merge_all([None, None]) is None


@PROPERTY
@given(history_and_objects(3))
def test_merge_result_descends_both_sides(ho: tuple[History, list[VersionedObject]]) -> None:
    """The merged clock has seen everything either side had seen (and nothing more)."""
    _, (a, b, _c) = ho
    m = merge(a, b)
    assert descends(m.clock, a.clock) and descends(m.clock, b.clock)
    assert set(m.clock) == set(a.clock) | set(b.clock)
    assert dots(m) <= dots(a) | dots(b)


@settings(max_examples=40, deadline=None)
@given(history_and_objects(4))
def test_merge_all_is_order_independent(ho: tuple[History, list[VersionedObject]]) -> None:
    """merge_all over any permutation of the same objects gives equal objects and equal bytes."""
    _, objs = ho
    first = merge_all(objs)
    assert first is not None
    for perm in itertools.permutations(objs):
        other = merge_all(perm)
        assert other == first
        assert encode_object(other) == encode_object(first)


def test_merge_is_commutative_over_conflicting_copies_of_one_dot() -> None:
    """Two different siblings claiming one dot (corrupt input) still merge to the same result either way."""
    clock = {"a": 1}
    variants = [
        VersionedObject(clock, (Sibling("a", 1, 5, b"x"),)),
        VersionedObject(clock, (Sibling("a", 1, 6, b"x"),)),
        VersionedObject(clock, (Sibling("a", 1, 5, b"y"),)),
        VersionedObject(clock, (Sibling("a", 1, 5, None),)),
        VersionedObject(clock, (Sibling("a", 1, 5, b""),)),
    ]
    for a, b in itertools.permutations(variants, 2):
        assert merge(a, b) == merge(b, a)
        assert encode_object(merge(a, b)) == encode_object(merge(b, a))
    for a, b, c in itertools.permutations(variants, 3):
        assert merge(merge(a, b), c) == merge(a, merge(b, c))


# --- causality: what survives ---------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(histories(max_ops=20))
def test_no_acknowledged_write_disappears(h: History) -> None:
    """Every write whose dot no later context covered is still a sibling after all replicas
    merge, unless it had expired (a coordinator may drop an expired sibling it keeps)."""
    final = h.final()
    well_formed(final)
    written = {w.sibling.dot: w.sibling for w in h.writes}
    for dot, sibling in written.items():
        if not h.covered_by_some_context(dot) and not sibling.expired(h.now_ms):
            assert dot in dots(final), f"write {sibling} vanished without being superseded"
    # ...and the final state invents nothing: every sibling is a write, unchanged.
    for s in final.siblings:
        assert written[s.dot] == s


@settings(max_examples=120, deadline=None)
@given(histories(), st.data())
def test_put_with_read_context_supersedes_exactly_what_was_read(h: History, data: st.DataObject) -> None:
    """A put based on a read removes exactly the read's siblings; a write made after the read survives."""
    read = data.draw(st.sampled_from(h.reads), label="read")
    writer = data.draw(st.sampled_from(ACTORS), label="writer")
    concurrent_actor = data.draw(st.sampled_from(ACTORS), label="concurrent_actor")
    # A concurrent blind write, made after the read (so the read's context cannot cover it).
    concurrent = update(h.replicas[concurrent_actor], {}, concurrent_actor, b"concurrent", 5000)
    h.replicas[concurrent_actor] = concurrent
    concurrent_dot = (concurrent_actor, concurrent.clock[concurrent_actor])
    context = dict(read.clock) if read is not None else {}
    put = update(h.replicas[writer], context, writer, b"put", 5001)
    h.replicas[writer] = put
    put_dot = (writer, put.clock[writer])

    final = h.final()
    assert not dots(read) & dots(final), "a sibling the reader saw survived its replacement"
    assert put_dot in dots(final)
    assert concurrent_dot in dots(final), "a write the reader never saw was lost"
    assert b"put" in final.values and b"concurrent" in final.values


def test_put_with_context_replaces_read_siblings_keeps_concurrent_write() -> None:
    """Concrete case: two siblings read and replaced by one put, a concurrent write kept."""
    x = update(None, {}, "a", b"x", 1)
    y = update(None, {}, "b", b"y", 2)
    read = merge(x, y)
    assert read.values == [b"x", b"y"]
    z = update(y, {}, "b", b"z", 3)  # b writes again, after the read, blind
    resolved = update(x, read.clock, "a", b"xy", 4)
    assert resolved.values == [b"xy"]
    final = merge(merge(resolved, z), read)
    assert sorted(final.values) == [b"xy", b"z"]
    assert {s.dot for s in final.siblings} == {("a", 2), ("b", 2)}
    # ... and a put based on a read of that state resolves to a single sibling.
    again = update(final, final.clock, "c", b"one", 5)
    assert again.values == [b"one"] and len(again.siblings) == 1
    assert merge(again, final) == again


def test_blind_writes_on_different_actors_make_two_siblings() -> None:
    """Two empty-context writes coordinated by different actors both survive the merge."""
    a = update(None, {}, "a", b"1", 1)
    b = update(None, {}, "b", b"2", 2)
    m = merge(a, b)
    assert m.values == [b"1", b"2"]
    assert m.clock == {"a": 1, "b": 1}


def test_blind_writes_on_same_actor_make_two_siblings() -> None:
    """Two empty-context writes coordinated by the same actor are siblings, with distinct dots."""
    first = update(None, {}, "a", b"1", 1)
    second = update(first, {}, "a", b"2", 2)
    assert [s.dot for s in second.siblings] == [("a", 1), ("a", 2)]
    assert second.values == [b"1", b"2"]
    assert merge(first, second) == second


def test_retried_blind_writes_do_not_drop_each_other_but_context_collapses_them() -> None:
    """Retrying a blind write adds one sibling per retry; a write with the read context collapses them."""
    obj: VersionedObject | None = None
    for i in range(5):
        obj = update(obj, {}, "a", b"v%d" % i, i)
    assert obj is not None and len(obj.siblings) == 5
    resolved = update(obj, obj.clock, "a", b"final", 9)
    assert resolved.values == [b"final"]


def test_update_context_newer_than_local_drops_siblings_it_covers() -> None:
    """A coordinator whose replica lags still honours the context: the clock absorbs it."""
    a1 = update(None, {}, "a", b"1", 1)
    b1 = update(None, {}, "b", b"2", 2)
    read = merge(a1, b1)
    put = update(a1, read.clock, "a", b"3", 3)  # a never received b's write
    assert put.clock == {"a": 2, "b": 1}
    assert put.values == [b"3"]
    assert merge(b1, put).values == [b"3"]  # b's write was seen by the reader: superseded


# --- tombstones -----------------------------------------------------------------------------


def test_delete_is_a_tombstone() -> None:
    """update with value None yields a tombstone that reads as not found."""
    put = update(None, {}, "a", b"v", 1)
    deleted = update(put, put.clock, "a", None, 2)
    assert deleted.is_tombstone and not deleted.found
    assert deleted.values == []
    assert [s.is_tombstone for s in deleted.siblings] == [True]
    assert merge(put, deleted) == deleted
    blind = update(None, {}, "b", None, 3)
    assert blind.is_tombstone and not blind.found


def test_empty_object_is_neither_found_nor_tombstone() -> None:
    """EMPTY (no siblings at all) is not found and not a tombstone."""
    assert not EMPTY.found and not EMPTY.is_tombstone and EMPTY.values == []


def test_concurrent_delete_and_put_reads_as_the_live_value() -> None:
    """A delete concurrent with a put leaves the key found, with only the live value in .values."""
    base = update(None, {}, "a", b"old", 1)
    delete = update(base, base.clock, "a", None, 2)
    put = update(merge(None, base), base.clock, "b", b"new", 3)
    for m in (merge(delete, put), merge(put, delete)):
        assert m.found and not m.is_tombstone
        assert m.values == [b"new"]
        assert len(m.siblings) == 2 and sum(s.is_tombstone for s in m.siblings) == 1


# --- encoding -------------------------------------------------------------------------------


@PROPERTY
@given(history_and_objects(1))
def test_encode_decode_object_round_trip(ho: tuple[History, list[VersionedObject]]) -> None:
    """decode_object(encode_object(o)) == o, and re-encoding gives the same bytes."""
    _, (a,) = ho
    blob = encode_object(a)
    back = decode_object(blob)
    assert back == a
    assert encode_object(back) == blob


@PROPERTY
@given(history_and_objects(2))
def test_equal_objects_encode_to_equal_bytes(ho: tuple[History, list[VersionedObject]]) -> None:
    """Canonical encoding: equal objects built in different orders encode identically."""
    _, (a, b) = ho
    assert encode_object(merge(a, b)) == encode_object(merge(b, a))
    reversed_clock = VersionedObject(dict(reversed(list(a.clock.items()))), a.siblings)
    assert reversed_clock == a
    assert encode_object(reversed_clock) == encode_object(a)
    if a == b:
        assert encode_object(a) == encode_object(b)


def test_encoding_is_canonical_for_clock_insertion_order() -> None:
    """Clock entries are written sorted, whatever order the dict was filled in."""
    s = (Sibling("a", 1, 5, b"x"),)
    one = VersionedObject({"a": 1, "b": 2, "c": 3}, s)
    two = VersionedObject({"c": 3, "a": 1, "b": 2}, s)
    assert encode_object(one) == encode_object(two)
    assert object_to_wire(one)[1] == [["a", 1], ["b", 2], ["c", 3]]


def test_decode_object_canonicalises_sibling_order() -> None:
    """Siblings stored out of dot order decode into canonical order (and re-encode sorted)."""
    blob = packb([1, [["a", 2], ["b", 1]], [["b", 1, 0, b"y"], ["a", 2, 0, b"x"], ["a", 1, 0, None]]])
    obj = decode_object(blob)
    assert [s.dot for s in obj.siblings] == [("a", 1), ("a", 2), ("b", 1)]
    assert decode_object(encode_object(obj)) == obj


@PROPERTY
@given(history_and_objects(1))
def test_context_round_trip(ho: tuple[History, list[VersionedObject]]) -> None:
    """decode_context(encode_context(clock)) == clock."""
    _, (a,) = ho
    assert decode_context(encode_context(a.clock)) == a.clock


def test_absent_context_means_saw_nothing() -> None:
    """decode_context(None) and decode_context(b"") are the empty clock."""
    assert decode_context(None) == {}
    assert decode_context(b"") == {}
    assert decode_context(encode_context({})) == {}


def _obj(clock: object, siblings: object, fmt: object = 1) -> bytes:
    return packb([fmt, clock, siblings])


BAD_OBJECTS = {
    "random bytes": b"\xc1\xff\x00garbage",
    "truncated": encode_object(update(None, {}, "a", b"value", 1))[:-3],
    "trailing bytes": encode_object(update(None, {}, "a", b"value", 1)) + b"\x00",
    "not a list": packb({"clock": [], "siblings": []}),
    "int": packb(1),
    "nil": packb(None),
    "too short": packb([1, []]),
    "too long": packb([1, [], [], []]),
    "future format": _obj([], [], fmt=2),
    "format as str": _obj([], [], fmt="1"),
    "clock not a list": _obj({"a": 1}, []),
    "clock entry not a pair": _obj([["a"]], []),
    "clock entry triple": _obj([["a", 1, 2]], []),
    "clock actor not str": _obj([[b"a", 1]], []),
    "clock actor empty": _obj([["", 1]], []),
    "clock actor too long": _obj([["x" * (MAX_ACTOR_LEN + 1), 1]], []),
    "clock counter zero": _obj([["a", 0]], []),
    "clock counter negative": _obj([["a", -1]], []),
    "clock counter too big": _obj([["a", 2**63]], []),
    "clock counter float": _obj([["a", 1.0]], []),
    "clock counter bool": _obj([["a", True]], []),
    "clock duplicate actor": _obj([["a", 1], ["a", 2]], []),
    "too many clock entries": _obj([[f"n{i}", 1] for i in range(257)], []),
    "siblings not a list": _obj([["a", 1]], {"a": 1}),
    "sibling too short": _obj([["a", 1]], [["a", 1, 0]]),
    "sibling not a list": _obj([["a", 1]], ["a"]),
    "sibling actor not str": _obj([["a", 1]], [[1, 1, 0, b"v"]]),
    "sibling counter str": _obj([["a", 1]], [["a", "1", 0, b"v"]]),
    "sibling counter zero": _obj([["a", 1]], [["a", 0, 0, b"v"]]),
    "sibling timestamp str": _obj([["a", 1]], [["a", 1, "now", b"v"]]),
    "sibling timestamp float": _obj([["a", 1]], [["a", 1, 1.5, b"v"]]),
    "sibling value str": _obj([["a", 1]], [["a", 1, 0, "v"]]),
    "sibling value int": _obj([["a", 1]], [["a", 1, 0, 7]]),
    "sibling dot beyond clock": _obj([["a", 1]], [["a", 2, 0, b"v"]]),
    "sibling actor not in clock": _obj([["a", 1]], [["b", 1, 0, b"v"]]),
    "duplicate dots": _obj([["a", 1]], [["a", 1, 0, b"v"], ["a", 1, 0, b"v"]]),
    "too many siblings": _obj([["a", 1000]], [["a", i, 0, None] for i in range(1, 202)]),
}


@pytest.mark.parametrize("blob", BAD_OBJECTS.values(), ids=BAD_OBJECTS.keys())
def test_decode_object_rejects_garbage(blob: bytes) -> None:
    """decode_object raises ProtocolError (and only that) for anything that is not a valid object."""
    with pytest.raises(ProtocolError):
        decode_object(blob)


def test_decode_object_honours_limits() -> None:
    """Clock-entry and sibling limits come from the Limits passed in."""
    blob = encode_object(merge(update(None, {}, "a", b"1", 1), update(None, {}, "b", b"2", 1)))
    decode_object(blob)
    with pytest.raises(ProtocolError):
        decode_object(blob, Limits(max_clock_entries=1))
    with pytest.raises(ProtocolError):
        decode_object(blob, Limits(max_siblings=0))


# Regression: booleans are ints to Python (True == 1 == 1.0), so without an exact type check
# they slipped through; the decoded object then compared equal to the genuine one but
# re-encoded to different bytes (breaking canonical encoding).
NON_CANONICAL_OBJECTS = {
    "sibling counter bool": _obj([["a", 1]], [["a", True, 0, b"v"]]),
    "sibling timestamp bool": _obj([["a", 1]], [["a", 1, True, b"v"]]),
    "format bool": _obj([], [], fmt=True),
    "format float": _obj([], [], fmt=1.0),
}


@pytest.mark.parametrize("blob", NON_CANONICAL_OBJECTS.values(), ids=NON_CANONICAL_OBJECTS.keys())
def test_decode_object_rejects_bools_and_floats_posing_as_ints(blob: bytes) -> None:
    """Wrong-typed integers are rejected, so every accepted object re-encodes to the same bytes."""
    with pytest.raises(ProtocolError):
        decode_object(blob)


def _ctx(body: object, fmt: object = 1) -> bytes:
    return packb([fmt, body])


BAD_CONTEXTS = {
    "random bytes": b"\xc1garbage",
    "truncated": encode_context({"a": 1, "b": 2})[:-1],
    "trailing bytes": encode_context({"a": 1}) + b"\x90",
    "an object, not a context": encode_object(update(None, {}, "a", b"v", 1)),
    "not a list": packb({"a": 1}),
    "str": packb("context"),
    "too long": packb([1, [], []]),
    "future format": _ctx([], fmt=2),
    "clock not a list": _ctx({"a": 1}),
    "entry not a pair": _ctx([["a", 1, 1]]),
    "actor bytes": _ctx([[b"a", 1]]),
    "actor empty": _ctx([["", 1]]),
    "actor too long": _ctx([["x" * (MAX_ACTOR_LEN + 1), 1]]),
    "counter zero": _ctx([["a", 0]]),
    "counter negative": _ctx([["a", -5]]),
    "counter too big": _ctx([["a", 2**63]]),
    "counter bool": _ctx([["a", True]]),
    "counter str": _ctx([["a", "1"]]),
    "format bool": _ctx([], fmt=True),
    "format float": _ctx([], fmt=1.0),
    "duplicate actor": _ctx([["a", 1], ["a", 1]]),
    "too many entries": _ctx([[f"n{i}", 1] for i in range(257)]),
}


@pytest.mark.parametrize("blob", BAD_CONTEXTS.values(), ids=BAD_CONTEXTS.keys())
def test_decode_context_rejects_garbage(blob: bytes) -> None:
    """decode_context raises InvalidContext (an InvalidRequest) for anything dynq did not make."""
    with pytest.raises(InvalidContext) as info:
        decode_context(blob)
    assert isinstance(info.value, InvalidRequest)
    assert info.value.code == "bad_context"


def _deep_list(depth: int) -> bytes:
    """msgpack for ``depth`` nested one-element lists around nil, built by hand."""
    return b"\x91" * depth + b"\xc0"


# Regression: error messages used repr() of the offending entry, and on CPython 3.11 repr of
# a list nested ~1000 deep (msgpack accepts up to 1024 levels) raises RecursionError.
@pytest.mark.parametrize("where", ["context entry", "object clock entry", "sibling field"])
def test_decoders_survive_deeply_nested_invalid_entries(where: str) -> None:
    """A deeply nested (but msgpack-legal) bad entry still gives InvalidContext / ProtocolError."""
    nest = _deep_list(1020)
    if where == "context entry":
        with pytest.raises(InvalidContext):
            decode_context(b"\x92\x01\x91" + nest)
    elif where == "object clock entry":
        with pytest.raises(ProtocolError):
            decode_object(b"\x93\x01\x91" + nest + b"\x90")
    else:
        head = b"\x93\x01" + packb([["a", 1]]) + b"\x91\x94" + packb("a") + b"\x01\x00"
        with pytest.raises(ProtocolError):
            decode_object(head + nest)


# --- fuzzing --------------------------------------------------------------------------------

# msgpack-able values, biased toward the shapes the decoders look for.
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.sampled_from(["a", "b", "", "x" * 129]),
    st.binary(max_size=8),
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=25,
)
_pairs = st.lists(st.tuples(st.sampled_from(["a", "b", "c", ""]), st.integers(-1, 4)).map(list), max_size=4)
_siblings = st.lists(
    st.tuples(st.sampled_from(["a", "b", "z"]), st.integers(-1, 5), _scalars, st.none() | st.binary(max_size=4) | _scalars).map(list),
    max_size=4,
)
_object_like = st.tuples(st.sampled_from([1, 1, 2, 0]), _pairs | _values, _siblings | _values).map(list)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_decode_object_bytes_only_raises_protocol_error(blob: bytes) -> None:
    """decode_object on arbitrary bytes either decodes or raises ProtocolError, nothing else."""
    try:
        obj = decode_object(blob)
    except ProtocolError:
        return
    well_formed(obj)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_decode_context_bytes_only_raises_invalid_context(blob: bytes) -> None:
    """decode_context on arbitrary bytes either decodes or raises InvalidContext, nothing else."""
    try:
        clock = decode_context(blob)
    except InvalidContext:
        return
    assert all(isinstance(k, str) and isinstance(v, int) and v > 0 for k, v in clock.items())


@settings(max_examples=150, deadline=None)
@given(_object_like | _values)
def test_fuzz_decode_object_structured(value: object) -> None:
    """Near-miss objects either decode into a well-formed object that round-trips, or raise ProtocolError."""
    try:
        obj = decode_object(packb(value))
    except ProtocolError:
        return
    well_formed(obj)
    assert decode_object(encode_object(obj)) == obj


@settings(max_examples=120, deadline=None)
@given(st.tuples(st.sampled_from([1, 1, 0]), _pairs | _values).map(list) | _values)
def test_fuzz_decode_context_structured(value: object) -> None:
    """Near-miss contexts either decode to a valid clock or raise InvalidContext."""
    try:
        clock = decode_context(packb(value))
    except InvalidContext:
        return
    assert decode_context(encode_context(clock)) == clock


@settings(max_examples=100, deadline=None)
@given(history_and_objects(1), st.data())
def test_fuzz_mutated_encodings(ho: tuple[History, list[VersionedObject]], data: st.DataObject) -> None:
    """Flipping, cutting or extending a valid encoding never raises anything but ProtocolError."""
    _, (a,) = ho
    blob = bytearray(encode_object(a))
    assume(blob)
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    mutated = bytes(blob[:cut]) + data.draw(st.binary(max_size=4))
    for decoder, allowed in ((decode_object, ProtocolError), (decode_context, InvalidContext)):
        try:
            decoder(mutated)
        except allowed:
            pass


def test_msgpack_of_encodings_is_plain() -> None:
    """The stored form is plain msgpack: [format, [[actor, counter]...], [[actor, counter, ts, value]...]]."""
    obj = update(update(None, {}, "b", b"v", 7), {}, "a", None, 8)
    assert msgpack.unpackb(encode_object(obj)) == [1, [["a", 1], ["b", 1]], [["a", 1, 8, None], ["b", 1, 7, b"v"]]]
