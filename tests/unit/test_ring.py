"""The ring: hashing, claim (balance, minimal movement, spacing), preference lists, wire form."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynq_client.ring import (
    RING_BITS,
    Member,
    PreferenceList,
    Ring,
    RingError,
    claim,
    key_hash,
    new_ring,
    partition_of,
)

FAST = settings(max_examples=60, deadline=None)

names_st = st.lists(st.text("abcdefghij", min_size=1, max_size=3), min_size=1, max_size=12, unique=True)
q_st = st.sampled_from([64, 128, 256])


def members_of(names: list[str], weights: list[int] | None = None) -> list[Member]:
    return [
        Member(name, f"tcp://127.0.0.1:{7100 + i}", weight=weights[i] if weights else 1)
        for i, name in enumerate(names)
    ]


def nodes(count: int, prefix: str = "n") -> list[Member]:
    return members_of([f"{prefix}{i:02d}" for i in range(count)])


def exact_share(ring: Ring, name: str) -> Fraction:
    total = sum(m.weight for m in ring.members)
    return Fraction(ring.q * ring.member(name).weight, total)


def assert_within_one_of_share(ring: Ring) -> None:
    for name, count in ring.owned_counts().items():
        assert abs(count - exact_share(ring, name)) < 1, (name, count, exact_share(ring, name))


# --- hashing --------------------------------------------------------------------------


def test_key_hash_is_md5_big_endian() -> None:
    """key_hash is the MD5 digest read as a big-endian 128-bit integer."""
    for key in (b"", b"hello", b"cart:1", bytes(range(256))):
        assert key_hash(key) == int.from_bytes(hashlib.md5(key).digest(), "big")
    assert RING_BITS == 128


def test_partition_of_known_key_uses_top_bits() -> None:
    """partition_of takes the top log2(q) bits: md5(b"hello") starts 0x5d41..."""
    assert hashlib.md5(b"hello").hexdigest().startswith("5d41")
    assert partition_of(b"hello", 1) == 0
    assert partition_of(b"hello", 2) == 0  # 0x5d < 0x80
    assert partition_of(b"hello", 64) == 0x5D >> 2
    assert partition_of(b"hello", 256) == 0x5D
    assert partition_of(b"hello", 65536) == 0x5D41


@given(key=st.binary(max_size=64), bits=st.integers(0, 16))
@FAST
def test_partition_of_in_range_and_nested(key: bytes, bits: int) -> None:
    """partition_of is in 0..q-1 and halving q halves the partition (top bits, not low bits)."""
    q = 1 << bits
    p = partition_of(key, q)
    assert 0 <= p < q
    assert p == key_hash(key) >> (RING_BITS - bits)
    assert partition_of(key, 2 * q) // 2 == p


@pytest.mark.parametrize("q", [0, -4, 3, 12, 100, True])
def test_partition_of_rejects_q_not_power_of_two(q: int) -> None:
    """q must be a power of two >= 1."""
    with pytest.raises(ValueError):
        partition_of(b"k", q)


# --- claim: balance -------------------------------------------------------------------


@pytest.mark.parametrize("q", [64, 128, 256, 1024])
@pytest.mark.parametrize("count", range(1, 17))
def test_equal_weights_are_balanced(q: int, count: int) -> None:
    """Each of 1..16 equal members owns within 10% of q/members (±1 allowed: small q can't split evenly)."""
    ring = new_ring(nodes(count), q=q, n=3)
    ideal = q / count
    counts = ring.owned_counts()
    assert sum(counts.values()) == q and len(counts) == count
    for name, owned in counts.items():
        assert abs(owned - ideal) <= max(1, 0.1 * ideal), (name, owned, ideal)
    assert max(counts.values()) - min(counts.values()) <= 1


@given(weights=st.lists(st.integers(1, 8), min_size=1, max_size=10), q=st.sampled_from([16, 64, 256, 1024]))
@FAST
def test_counts_follow_weights(weights: list[int], q: int) -> None:
    """Each member owns its exact weighted share q*w/sum(w), rounded down or up (within 1)."""
    ring = new_ring(members_of([f"m{i}" for i in range(len(weights))], weights), q=q)
    assert_within_one_of_share(ring)
    assert sum(ring.owned_counts().values()) == q


def test_double_weight_owns_double() -> None:
    """A weight-2 member owns twice what a weight-1 member does when the split is exact."""
    ring = new_ring(members_of(["a", "b", "c"], [2, 1, 1]), q=64)
    assert ring.owned_counts() == {"a": 32, "b": 16, "c": 16}


def test_leftover_partitions_go_to_largest_remainder_then_name() -> None:
    """Targets use largest-remainder rounding with ties broken by name."""
    assert new_ring(nodes(3), q=64).owned_counts() == {"n00": 22, "n01": 21, "n02": 21}
    # shares 64*3/7 = 27.43, 64*2/7 = 18.29 (x2): the .43 remainder wins the leftover.
    ring = new_ring(members_of(["z", "a", "b"], [3, 2, 2]), q=64)
    assert ring.owned_counts() == {"a": 18, "b": 18, "z": 28}


# --- claim: determinism and spacing ------------------------------------------------------


@given(names=names_st, data=st.data(), q=q_st, n=st.integers(1, 4))
@FAST
def test_claim_ignores_member_order(names: list[str], data: st.DataObject, q: int, n: int) -> None:
    """claim gives the same owners whatever order the members are listed in."""
    weights = data.draw(st.lists(st.integers(1, 4), min_size=len(names), max_size=len(names)))
    members = members_of(names, weights)
    shuffled = data.draw(st.permutations(members))
    assert claim(members, q, n) == claim(shuffled, q, n)
    assert new_ring(shuffled, q, n) == new_ring(members, q, n)


def test_claim_result_is_pinned() -> None:
    """The fresh layout is a round-robin by name (a change here would re-shuffle new clusters)."""
    assert claim(nodes(4), 8, 3) == ("n00", "n01", "n02", "n03") * 2


@pytest.mark.parametrize("count", [3, 4, 5, 6, 7, 8, 9, 12, 16])
def test_fresh_ring_spaces_replicas(count: int) -> None:
    """In a fresh ring the next N partitions almost always have N distinct owners."""
    q, n = 256, 3
    ring = new_ring(nodes(count), q=q, n=n)
    crowded = [p for p in range(q) if len({ring.owners[(p + i) % q] for i in range(n)}) < n]
    # 256 partitions cannot be dealt round-robin to 3 or 5 nodes without one seam.
    assert len(crowded) <= (2 if q % count else 0)


def test_fresh_ring_spreads_zones() -> None:
    """With 3 zones of 2 nodes, windows of 3 partitions almost always span 3 zones."""
    members = [Member(f"{zone}{i}", f"tcp://h{zone}{i}:1", zone=zone) for zone in "abc" for i in (1, 2)]
    ring = new_ring(members, q=256, n=3)
    zone = {m.name: m.zone for m in members}
    mixed = [p for p in range(256) if len({zone[ring.owners[(p + i) % 256]] for i in range(3)}) < 3]
    assert len(mixed) <= 8  # 256 is not a multiple of 3, so a perfect pattern is impossible


# --- claim: minimal movement -----------------------------------------------------------


def moved(before: Ring, after: Ring) -> list[int]:
    return [p for p in range(before.q) if before.owners[p] != after.owners[p]]


@given(count=st.integers(1, 16), q=q_st, n=st.integers(1, 4), new_name=st.text("abnxz", min_size=1, max_size=4))
@FAST
def test_adding_a_member_moves_only_what_it_takes(count: int, q: int, n: int, new_name: str) -> None:
    """Adding a node moves only partitions that go to it; every other partition keeps its owner."""
    members = nodes(count)
    if any(m.name == new_name for m in members):
        new_name += "!"
    ring = new_ring(members, q=q, n=n)
    grown = ring.with_members([*members, Member(new_name, "tcp://new:1")])
    changed = moved(ring, grown)
    assert all(grown.owners[p] == new_name for p in changed)
    assert len(changed) == grown.owned_counts()[new_name]
    assert_within_one_of_share(grown)


@given(count=st.integers(2, 16), q=q_st, n=st.integers(1, 4), data=st.data())
@FAST
def test_removing_a_member_moves_only_its_partitions(count: int, q: int, n: int, data: st.DataObject) -> None:
    """Removing a node moves exactly the partitions it owned; all others keep their owner."""
    members = nodes(count)
    gone = data.draw(st.sampled_from(members))
    ring = new_ring(members, q=q, n=n)
    shrunk = ring.with_members([m for m in members if m != gone])
    assert moved(ring, shrunk) == ring.partitions_of(gone.name)
    assert gone.name not in shrunk.owners
    assert_within_one_of_share(shrunk)


@given(
    q=q_st,
    n=st.integers(1, 4),
    start=st.lists(st.integers(1, 4), min_size=1, max_size=10),
    steps=st.lists(st.tuples(st.sampled_from(["add", "remove", "reweight"]), st.integers(0, 99), st.integers(1, 4)), max_size=6),
)
@settings(max_examples=40, deadline=None)
def test_weighted_changes_move_only_surplus(
    q: int, n: int, start: list[int], steps: list[tuple[str, int, int]]
) -> None:
    """Through any sequence of weighted changes a member loses partitions only if it ends up with fewer."""
    members = {f"m{i}": Member(f"m{i}", f"tcp://m{i}:1", weight=w) for i, w in enumerate(start)}
    ring = new_ring(members.values(), q=q, n=n)
    for op, pick, weight in steps:
        name = sorted(members)[pick % len(members)]
        if op == "add":
            name = f"x{pick}"
            members[name] = Member(name, f"tcp://{name}:1", weight=weight)
        elif op == "remove" and len(members) > 1:
            del members[name]
        else:
            members[name] = Member(name, members[name].address, weight=weight)
        after = ring.with_members(members.values())
        before_counts, after_counts = Counter(ring.owners), Counter(after.owners)
        for p in moved(ring, after):
            old, new = ring.owners[p], after.owners[p]
            assert after_counts[old] < before_counts[old], (p, old, new)  # old owner shrank (or left)
            assert after_counts[new] > before_counts[new], (p, old, new)  # new owner grew
        assert_within_one_of_share(after)
        ring = after


def test_with_members_bumps_epoch_and_keeps_q_n() -> None:
    """with_members returns the next epoch with the same q and n."""
    ring = new_ring(nodes(3), q=64, n=3, epoch=7)
    nxt = ring.with_members(nodes(4))
    assert (nxt.epoch, nxt.q, nxt.n) == (8, 64, 3)
    assert ring.with_members(nodes(3)).epoch == 8  # even when nothing moves
    assert ring.with_members(nodes(3)).owners == ring.owners


def test_address_change_moves_nothing() -> None:
    """Owners are names, so a member changing address keeps all its partitions."""
    ring = new_ring(nodes(3), q=64)
    readdressed = [Member(m.name, m.address + "0") for m in ring.members]
    nxt = ring.with_members(readdressed)
    assert nxt.owners == ring.owners and nxt.member("n00").address.endswith("0")


# --- preference lists --------------------------------------------------------------------


@given(names=names_st, q=q_st, n=st.integers(1, 5), data=st.data())
@FAST
def test_preference_lists_are_distinct_and_complete(names: list[str], q: int, n: int, data: st.DataObject) -> None:
    """Primaries are min(n, members) distinct nodes, and primaries + fallbacks are every member once."""
    weights = data.draw(st.lists(st.integers(1, 4), min_size=len(names), max_size=len(names)))
    ring = new_ring(members_of(names, weights), q=q, n=n)
    everyone = sorted(names)
    for p in range(q):
        plist = ring.preference_list(p)
        assert plist.partition == p
        assert len(plist.primaries) == min(n, len(names))
        assert plist.primaries[0] == ring.owners[p]
        assert sorted(plist.primaries + plist.fallbacks) == everyone


def test_preference_list_walks_clockwise() -> None:
    """Primaries are the next distinct owners clockwise, wrapping past partition q-1; fallbacks follow."""
    ring = Ring(1, 8, 3, tuple(nodes(4)), ("n00", "n00", "n01", "n00", "n02", "n03", "n03", "n01"))
    assert ring.preference_list(0) == PreferenceList(0, ("n00", "n01", "n02"), ("n03",))
    assert ring.preference_list(6) == PreferenceList(6, ("n03", "n01", "n00"), ("n02",))


def test_preference_list_prefers_new_zones() -> None:
    """With zones the first walk skips owners in zones already taken; a second walk fills up."""
    members = (
        Member("a1", "tcp://a1:1", "za"),
        Member("a2", "tcp://a2:1", "za"),
        Member("b1", "tcp://b1:1", "zb"),
    )
    ring = Ring(1, 4, 3, members, ("a1", "a2", "b1", "a1"))
    assert ring.preference_list(0).primaries == ("a1", "b1", "a2")
    assert ring.preference_list(1).primaries == ("a2", "b1", "a1")
    assert Ring(1, 4, 2, members, ring.owners).preference_list(0).primaries == ("a1", "b1")


def test_every_preference_list_spans_three_zones() -> None:
    """With 3 zones, 6 nodes and n=3, every preference list has one replica per zone."""
    members = [Member(f"{zone}{i}", f"tcp://{zone}{i}:1", zone=zone) for zone in "xyz" for i in (1, 2)]
    for q in (64, 256):
        ring = new_ring(members, q=q, n=3)
        for p in range(q):
            plist = ring.preference_list(p)
            assert len({ring.member(name).zone for name in plist.primaries}) == 3
            assert len(set(plist.primaries)) == 3


def test_members_owning_nothing_still_serve() -> None:
    """Members with no partitions fill out the primaries when owners are too few, else end the fallbacks."""
    ring = Ring(1, 4, 2, tuple(nodes(3)), ("n00",) * 4)
    assert ring.preference_list(1) == PreferenceList(1, ("n00", "n01"), ("n02",))
    ring3 = Ring(1, 4, 1, tuple(nodes(3)), ("n01",) * 4)
    assert ring3.preference_list(0) == PreferenceList(0, ("n01",), ("n00", "n02"))
    assert ring3.owned_counts() == {"n00": 0, "n01": 4, "n02": 0}
    assert ring3.partitions_of("n00") == [] and ring3.partitions_of("n01") == [0, 1, 2, 3]


def test_fewer_members_than_n() -> None:
    """A cluster smaller than N gets one replica per node."""
    ring = new_ring(nodes(2), q=64, n=3)
    assert all(len(ring.preference_list(p).primaries) == 2 for p in range(64))
    assert ring.preference_list(0).fallbacks == ()


def test_preference_list_for_key_and_cache() -> None:
    """preference_list_for routes by partition_for, and lists are computed once per ring."""
    ring = new_ring(nodes(5), q=128)
    plist = ring.preference_list_for(b"cart:1")
    assert plist.partition == ring.partition_for(b"cart:1") == partition_of(b"cart:1", 128)
    assert ring.preference_list(plist.partition) is plist
    with pytest.raises(ValueError):
        ring.preference_list(128)


def test_member_lookup() -> None:
    """member() finds a member by name and raises KeyError for strangers."""
    ring = new_ring(nodes(3), q=64)
    assert ring.member("n01") == Member("n01", "tcp://127.0.0.1:7101")
    with pytest.raises(KeyError):
        ring.member("nope")


# --- wire form and validation ----------------------------------------------------------------


def test_wire_round_trip() -> None:
    """to_wire is plain JSON-able data and from_wire rebuilds an equal ring."""
    members = [Member("a", "tcp://a:1", "z1", 2), Member("b", "tcp://b:1"), Member("c", "tcp://c:1", "z2", 1)]
    ring = new_ring(members, q=64, n=2, epoch=5)
    wire = ring.to_wire()
    assert set(wire) == {"epoch", "q", "n", "members", "owners"}
    assert wire["members"][0] == ["a", "tcp://a:1", "z1", 2]
    back = Ring.from_wire(json.loads(json.dumps(wire)))
    assert back == ring and back.to_wire() == wire
    assert back.preference_list(3) == ring.preference_list(3)


def test_ring_constructor_normalises() -> None:
    """Ring() sorts members by name and accepts the positional form the node uses."""
    ring = new_ring(nodes(3), q=8)
    again = Ring(ring.epoch, ring.q, 2, tuple(reversed(ring.members)), ring.owners)
    assert again.members == ring.members and again.n == 2


def good_wire() -> dict[str, Any]:
    return new_ring(nodes(3), q=8, n=2).to_wire()


def corrupt(**changes: Any) -> dict[str, Any]:
    wire = good_wire()
    for key, value in changes.items():
        if value is _DROP:
            del wire[key]
        else:
            wire[key] = value
    return wire


_DROP = object()

GARBAGE: list[object] = [
    None,
    "ring",
    [1, 2, 3],
    {},
    corrupt(epoch=_DROP),
    corrupt(q=_DROP),
    corrupt(n=_DROP),
    corrupt(members=_DROP),
    corrupt(owners=_DROP),
    corrupt(epoch="1"),
    corrupt(epoch=-1),
    corrupt(epoch=True),
    corrupt(q=6, owners=good_wire()["owners"][:6]),
    corrupt(q=0, owners=[]),
    corrupt(q=8.0),
    corrupt(q=16),
    corrupt(n=0),
    corrupt(n=None),
    corrupt(members=[]),
    corrupt(members="n00"),
    corrupt(members=[["n00", "tcp://x:1", ""]]),
    corrupt(members=[["n00", "tcp://x:1", "", 1], ["n00", "tcp://y:1", "", 1]]),
    corrupt(members=[[1, "tcp://x:1", "", 1]]),
    corrupt(members=[["", "tcp://x:1", "", 1]]),
    corrupt(members=[["n00", None, "", 1]]),
    corrupt(members=[["n00", "tcp://x:1", None, 1]]),
    corrupt(members=[["n00", "tcp://x:1", "", 0]]),
    corrupt(members=[["n00", "tcp://x:1", "", "1"]]),
    corrupt(members=[{"name": "n00"}]),
    corrupt(owners="n00" * 8),
    corrupt(owners=["n00"] * 7),
    corrupt(owners=["n00"] * 7 + ["stranger"]),
    corrupt(owners=["n00"] * 7 + [3]),
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
def test_from_wire_rejects_garbage(data: object) -> None:
    """from_wire raises RingError (never another exception) for malformed rings."""
    with pytest.raises(RingError):
        Ring.from_wire(data)


def test_from_wire_ignores_unknown_fields() -> None:
    """Extra fields from a newer peer do not break parsing."""
    wire = good_wire() | {"future": [1, 2]}
    assert Ring.from_wire(wire) == Ring.from_wire(good_wire())


@pytest.mark.parametrize(
    "call",
    [
        lambda: claim([], 8, 3),
        lambda: claim(nodes(2), 12, 3),
        lambda: claim(nodes(2), 8, 0),
        lambda: claim(nodes(2), 8, 3, previous=["n00"] * 7),
        lambda: claim([Member("a", "x"), Member("a", "y")], 8, 3),
        lambda: claim([Member("a", "x", weight=0)], 8, 3),
        lambda: new_ring([], q=8),
    ],
)
def test_claim_rejects_bad_input(call: Any) -> None:
    """claim and new_ring raise RingError for no members, bad q or n, duplicates, zero weights."""
    with pytest.raises(RingError):
        call()


def test_claim_with_previous_of_departed_members_only() -> None:
    """A previous ring whose owners all left is re-dealt from scratch, balanced."""
    owners = claim(nodes(3), 64, 3, previous=["gone"] * 64)
    assert sorted(Counter(owners).values()) == [21, 21, 22]


def test_more_members_than_partitions() -> None:
    """With q < members some own nothing, yet every key still has N replicas."""
    ring = new_ring(nodes(10), q=4, n=3)
    assert sorted(ring.owned_counts().values()) == [0] * 6 + [1] * 4
    assert all(len(ring.preference_list(p).primaries) == 3 for p in range(4))
