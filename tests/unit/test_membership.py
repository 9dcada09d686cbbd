"""Cluster state, plans, transfers and gossip merge, without sockets."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynq.cluster.failure_detector import PhiAccrualDetector
from dynq.cluster.gossip import Heartbeat, gossip_address
from dynq.cluster.membership import (
    ClusterState,
    MembershipError,
    Staged,
    Transfer,
    claimant,
    commit,
    initial_state,
    member_from_wire,
    newest,
    plan,
    plan_transfers,
)
from dynq_client.ring import Member


def members(*names: str, zone: str = "") -> list[Member]:
    return [Member(name, f"tcp://127.0.0.1:{7100 + 10 * i}", zone) for i, name in enumerate(names)]


def three() -> ClusterState:
    return initial_state(members("n1", "n2", "n3"), q=64, n=3)


N4 = Member("n4", "tcp://127.0.0.1:7400")


def check_covers(old: ClusterState, new_ring_state: ClusterState, transfers: tuple[Transfer, ...]) -> None:
    """Every node entering a partition's preference list receives it from a node that held it,
    and every node leaving one hands its copy to a node of the new list."""
    assert new_ring_state.next_ring is not None
    for p in range(old.ring.q):
        before = old.ring.preference_list(p).primaries
        after = new_ring_state.next_ring.preference_list(p).primaries
        incoming = {t.target for t in transfers if t.partition == p}
        outgoing = {t.source for t in transfers if t.partition == p}
        assert {x for x in after if x not in before} <= incoming
        assert {x for x in before if x not in after} <= outgoing
        for t in transfers:
            if t.partition == p:
                assert t.source in before and t.target in after


def test_join_plan_moves_only_to_the_new_node_and_balances() -> None:
    state = three()
    staged = Staged().join(state, N4)
    the_plan = plan(state, staged)
    assert the_plan.transfers and all(t.target == "n4" for t in the_plan.transfers)
    counts = the_plan.next_ring.owned_counts()
    assert all(abs(c - 16) <= 1.6 for c in counts.values()), counts
    moved = [p for p in range(64) if the_plan.next_ring.owners[p] != state.ring.owners[p]]
    assert moved and all(the_plan.next_ring.owners[p] == "n4" for p in moved)
    new = commit(state, staged, the_plan.id)
    assert new.version == state.version + 1 and new.joining == ("n4",) and new.leaving == ()
    check_covers(state, new, new.transfers)
    assert new.status_of("n4") == "joining" and new.status_of("n1") == "valid"


def test_transfers_done_switch_to_the_next_ring() -> None:
    state = three()
    new = commit(state, Staged().join(state, N4))
    assert new.next_ring is not None
    current = new
    for t in new.transfers:
        assert current.next_ring is not None and "n4" in {m.name for m in current.members}
        current = current.transfer_done(t)
        assert current.transfer_done(t) is current  # reporting twice is harmless
    assert current.next_ring is None and current.transfers == ()
    assert [m.name for m in current.ring.members] == ["n1", "n2", "n3", "n4"]
    assert current.version == new.version + len(new.transfers)
    assert current.ring.owners == new.next_ring.owners


def test_pending_replicas_are_the_incoming_ones() -> None:
    state = three()
    new = commit(state, Staged().join(state, N4))
    for p in range(64):
        assert new.pending_replicas(p) == (("n4",) if any(t.partition == p for t in new.transfers) else ())
        assert new.is_replica("n4", p) == bool(new.pending_replicas(p))
    assert state.pending_replicas(0) == ()


def test_leave_hands_everything_off() -> None:
    state = initial_state(members("n1", "n2", "n3", "n4"), q=64, n=3)
    new = commit(state, Staged().leave(state, "n2"))
    assert new.leaving == ("n2",) and new.status_of("n2") == "leaving"
    check_covers(state, new, new.transfers)
    held_by_n2 = {p for p in range(64) if "n2" in state.ring.preference_list(p).primaries}
    assert held_by_n2 == {t.partition for t in new.transfers if t.source == "n2"}


def test_shrinking_below_n_still_hands_off() -> None:
    """With fewer nodes than N, a leaving node has no replacement, but its copy still goes somewhere."""
    state = initial_state(members("n1", "n2"), q=8, n=3)
    target = state.ring.with_members(members("n1"))
    transfers = plan_transfers(state.ring, target)
    assert {t.source for t in transfers} == {"n2"} and {t.target for t in transfers} == {"n1"}
    assert len(transfers) == 8


def test_staging_errors_are_clear() -> None:
    state = three()
    with pytest.raises(MembershipError, match="already a member"):
        Staged().join(state, state.ring.member("n1"))
    with pytest.raises(MembershipError, match="exists already"):
        Staged().join(state, Member("n1", "tcp://127.0.0.1:9999"))
    with pytest.raises(MembershipError, match="already uses the address"):
        Staged().join(state, Member("n9", state.ring.member("n2").address))
    with pytest.raises(MembershipError, match="fewer than n = 3"):
        Staged().leave(state, "n3")
    with pytest.raises(MembershipError, match="not a member"):
        Staged().leave(state, "n7")
    with pytest.raises(MembershipError, match="nothing is staged"):
        plan(state, Staged())
    staged = Staged().join(state, N4)
    with pytest.raises(MembershipError, match="plan changed"):
        commit(state, staged, "deadbeef")
    # Leaving after a join is staged is fine; withdrawing a staged join too.
    assert Staged().join(state, N4).leave(state, "n4") == Staged()
    busy = commit(state, staged)
    with pytest.raises(MembershipError, match="still in progress"):
        plan(busy, Staged().join(busy, Member("n5", "tcp://127.0.0.1:7500")))


def test_wire_roundtrip_and_rejection() -> None:
    state = three()
    new = commit(state, Staged().join(state, N4))
    for s in (state, new):
        back = ClusterState.from_wire(s.to_wire())
        assert back == s and back.digest == s.digest
    assert Staged.from_wire(Staged().join(state, N4).to_wire()) == Staged().join(state, N4)
    bad = new.to_wire()
    bad["transfers"] = [[999, "n1", "n4"]]
    with pytest.raises(MembershipError):
        ClusterState.from_wire(bad)
    bad = new.to_wire()
    bad["transfers"] = [[1, "n1", "nobody"]]
    with pytest.raises(MembershipError):
        ClusterState.from_wire(bad)
    without_next = state.to_wire()
    without_next["transfers"] = [[1, "n1", "n2"]]
    with pytest.raises(MembershipError, match="without a next ring"):
        ClusterState.from_wire(without_next)
    for junk in (None, 3, "x", {"ring": "nope"}, {"ring": state.ring.to_wire(), "transfers": "x"}):
        with pytest.raises(MembershipError):
            ClusterState.from_wire(junk)


def test_gossip_merge_is_commutative_associative_idempotent() -> None:
    state = three()
    a = commit(state, Staged().join(state, N4))
    b = commit(state, Staged().join(state, Member("n5", "tcp://127.0.0.1:7500")))  # a racing fork
    c = a.transfer_done(a.transfers[0])
    for x, y in itertools.product((state, a, b, c), repeat=2):
        assert newest(x, y) == newest(y, x)
        assert newest(x, x) == x
    for x, y, z in itertools.product((state, a, b, c), repeat=3):
        assert newest(newest(x, y), z) == newest(x, newest(y, z))
    assert newest(a, b) in (a, b) and a.version == b.version  # a fork resolves the same way everywhere
    assert claimant(state) == "n1"


@settings(max_examples=40, deadline=None)
@given(
    start=st.integers(min_value=1, max_value=6),
    joins=st.integers(min_value=0, max_value=3),
    leaves=st.integers(min_value=0, max_value=3),
    n=st.integers(min_value=1, max_value=3),
    zoned=st.booleans(),
)
def test_any_change_is_covered_by_its_transfers(start: int, joins: int, leaves: int, n: int, zoned: bool) -> None:
    names = [f"n{i}" for i in range(start)]
    ms = [Member(x, f"tcp://127.0.0.1:{8000 + i}", f"z{i % 2}" if zoned else "") for i, x in enumerate(names)]
    state = initial_state(ms, q=32, n=n)
    staged = Staged()
    for i in range(joins):
        staged = staged.join(state, Member(f"j{i}", f"tcp://127.0.0.1:{9000 + i}", f"z{i % 3}" if zoned else ""))
    for name in names[:leaves]:
        try:
            staged = staged.leave(state, name)
        except MembershipError:
            break
    if not staged:
        return
    new = commit(state, staged)
    if new.next_ring is None:  # nothing had to move
        assert new.transfers == ()
        return
    check_covers(state, new, new.transfers)


def test_phi_accrual_rises_with_silence() -> None:
    fd = PhiAccrualDetector(expected_interval=1.0, threshold=8.0)
    assert fd.phi("a", 0.0) == 0.0  # never heard: no opinion
    t = 0.0
    for _ in range(20):
        fd.heartbeat("a", t)
        t += 1.0
    last = t - 1.0
    assert fd.phi("a", last + 0.5) < 1.0
    assert not fd.is_suspect("a", last + 1.5)
    assert fd.phi("a", last + 3.0) < fd.phi("a", last + 4.0) < fd.phi("a", last + 6.0)
    assert fd.is_suspect("a", last + 10.0)
    fd.heartbeat("a", last + 10.0)
    assert not fd.is_suspect("a", last + 10.5)
    fd.forget("a")
    assert fd.known() == []


def test_phi_accrual_tolerates_jitter_it_has_seen() -> None:
    steady, jittery = PhiAccrualDetector(1.0), PhiAccrualDetector(1.0)
    t1 = t2 = 0.0
    for i in range(50):
        steady.heartbeat("a", t1)
        jittery.heartbeat("a", t2)
        t1 += 1.0
        t2 += 0.2 if i % 2 else 1.8
    assert jittery.phi("a", t2 - (0.2 if 50 % 2 else 1.8) + 3.0) < steady.phi("a", t1 - 1.0 + 3.0)


def test_heartbeat_decoding_rejects_junk() -> None:
    hb = Heartbeat("n1", "tcp://127.0.0.1:7100", 7, b"12345678", 3)
    assert Heartbeat.from_wire(hb.to_wire()) == hb
    for junk in (b"", b"\xc1", b"\x93\x01\x02\x03", b"x" * 5000, b"\x81\xa1n\x01"):
        assert Heartbeat.from_wire(junk) is None
    assert gossip_address("tcp://127.0.0.1:7100") == "tcp://127.0.0.1:7101"
    assert gossip_address("tcp://[::1]:7100") == "tcp://[::1]:7101"


_junk = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.text(max_size=20), st.binary(max_size=20),
              st.floats(allow_nan=True)),
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.sampled_from(["ring", "next", "transfers", "planned", "epoch", "q", "n",
                                                             "members", "owners", "joins", "leaves", "x"]),
                                            inner, max_size=6)),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(data=_junk)
def test_fuzz_cluster_state_parsers_raise_only_membership_errors(data: object) -> None:
    """A forged or garbled state, staged change or member from a peer is refused with a
    MembershipError, never another exception (the node turns it into a clear error)."""
    for parse in (ClusterState.from_wire, Staged.from_wire, member_from_wire):
        try:
            parse(data)
        except MembershipError:
            pass


@settings(max_examples=200, deadline=None)
@given(transfers=st.lists(st.tuples(st.integers(-5, 70), st.sampled_from(["n1", "n4", "zz", ""]),
                                    st.sampled_from(["n1", "n4", "zz"])), max_size=4),
       planned=st.one_of(st.integers(-3, 100), st.booleans(), st.none()))
def test_fuzz_near_valid_states(transfers: list[tuple[int, str, str]], planned: object) -> None:
    """Valid rings with forged transfer lists: accepted only when every transfer names a
    real partition and members, and the result round-trips."""
    state = three()
    new = commit(state, Staged().join(state, N4))
    wire = new.to_wire()
    wire["transfers"] = [list(t) for t in transfers]
    wire["planned"] = planned
    try:
        parsed = ClusterState.from_wire(wire)
    except MembershipError:
        return
    assert all(0 <= t.partition < 64 and t.source in {"n1", "n4"} and t.target in {"n1", "n4"}
               for t in parsed.transfers)
    assert ClusterState.from_wire(parsed.to_wire()) == parsed
