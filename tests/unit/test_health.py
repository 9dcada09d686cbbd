"""Peer health (dynq_client.health), sloppy-quorum target choice and QuorumTally.substitute."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynq_client.health import Health, PeerState, sloppy_targets
from dynq_client.quorum import QuorumState, QuorumTally

UP, SUSPECT, DOWN = PeerState.UP, PeerState.SUSPECT, PeerState.DOWN
PENDING, SUCCEEDED, FAILED = QuorumState.PENDING, QuorumState.SUCCEEDED, QuorumState.FAILED


# --- Health: concrete cases ------------------------------------------------------------------


def test_unknown_peer_is_up_and_usable() -> None:
    """A peer never heard of is up and usable, and does not appear in down() or snapshot()."""
    h = Health()
    assert h.state("x") is UP
    assert h.usable("x", 0.0) and h.usable("x", 1e9)
    assert h.down() == [] and h.snapshot() == {} and h.transitions == 0


def test_unreachable_marks_down_at_once() -> None:
    """A single unreachable outcome marks a peer down (and not usable right away)."""
    h = Health(timeouts_to_down=3, retry_after=5.0)
    h.unreachable("a", 10.0)
    assert h.state("a") is DOWN
    assert not h.usable("a", 10.0)
    assert h.down() == ["a"]


def test_one_timeout_makes_suspect_but_still_usable() -> None:
    """One timeout (below timeouts_to_down) makes a peer suspect, which is still usable."""
    h = Health(timeouts_to_down=2)
    h.timeout("a", 1.0)
    assert h.state("a") is SUSPECT
    assert h.usable("a", 1.0)
    assert h.down() == []


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_consecutive_timeouts_make_down(k: int) -> None:
    """Exactly timeouts_to_down consecutive timeouts mark a peer down, fewer leave it suspect."""
    h = Health(timeouts_to_down=k, retry_after=1.0)
    for i in range(k - 1):
        h.timeout("a", float(i))
        assert h.state("a") is SUSPECT
    h.timeout("a", float(k))
    assert h.state("a") is DOWN
    assert not h.usable("a", float(k))


def test_success_resets_timeout_count_and_marks_up() -> None:
    """A success marks the peer up and resets the consecutive-timeout count."""
    h = Health(timeouts_to_down=2)
    h.timeout("a", 1.0)
    assert h.state("a") is SUSPECT
    h.success("a", 2.0)
    assert h.state("a") is UP
    h.timeout("a", 3.0)  # count restarted: one timeout again, not two
    assert h.state("a") is SUSPECT
    h.timeout("a", 4.0)
    assert h.state("a") is DOWN
    h.success("a", 5.0)
    assert h.state("a") is UP and h.usable("a", 5.0)
    h.timeout("a", 6.0)
    assert h.state("a") is SUSPECT


def test_success_revives_a_down_peer() -> None:
    """A reply from a down peer marks it up and usable immediately, before retry_after."""
    h = Health(retry_after=100.0)
    h.unreachable("a", 1.0)
    h.success("a", 2.0)
    assert h.state("a") is UP and h.usable("a", 2.0) and h.down() == []


def test_down_peer_retried_once_per_retry_after_window() -> None:
    """A down peer is unusable until retry_after has passed, then usable once per window."""
    h = Health(retry_after=2.0)
    h.unreachable("a", 10.0)
    assert not h.usable("a", 10.0)
    assert not h.usable("a", 11.75)
    assert h.usable("a", 12.0)  # exactly retry_after later: one request may try it
    assert not h.usable("a", 12.0)  # ... but only one
    assert not h.usable("a", 13.75)
    assert h.usable("a", 14.0)  # a new window opens retry_after after the last retry
    assert not h.usable("a", 14.0)
    assert h.state("a") is DOWN  # usable() alone never changes the state
    assert h.transitions == 1


def test_failed_retry_keeps_peer_down_until_next_window() -> None:
    """After a retry window is used, an unreachable outcome keeps the peer down for another window."""
    h = Health(retry_after=2.0)
    h.unreachable("a", 0.0)
    assert h.usable("a", 3.0)
    h.unreachable("a", 3.5)
    assert h.state("a") is DOWN
    assert not h.usable("a", 4.5)
    assert h.usable("a", 5.0)


def test_late_retry_window_is_measured_from_the_retry() -> None:
    """A retry long after retry_after re-arms the wait from that retry, not from going down."""
    h = Health(retry_after=2.0)
    h.unreachable("a", 0.0)
    assert h.usable("a", 100.0)
    assert not h.usable("a", 101.0)
    assert h.usable("a", 102.0)


def test_timeout_never_revives_a_down_peer() -> None:
    """A timeout is a failure: it must not turn a down peer back into a usable (suspect) one."""
    h = Health(timeouts_to_down=2, retry_after=2.0)  # the node's settings
    h.unreachable("a", 0.0)
    h.timeout("a", 1.0)  # e.g. the node's probe ping timed out
    assert h.state("a") is DOWN
    assert not h.usable("a", 1.0)
    assert h.down() == ["a"]


def test_down_is_sorted() -> None:
    """down() lists exactly the down peers, sorted by name."""
    h = Health(timeouts_to_down=1)
    for name in ["m", "c", "z", "a"]:
        h.unreachable(name, 0.0)
    h.timeout("q", 0.0)
    h.success("b", 0.0)
    h.success("z", 1.0)
    assert h.down() == ["a", "c", "m", "q"]


def test_snapshot_values_are_state_strings() -> None:
    """snapshot() maps every known peer to its state's string value, in name order."""
    h = Health(timeouts_to_down=2)
    h.unreachable("c", 0.0)
    h.timeout("b", 0.0)
    h.success("a", 0.0)
    snap = h.snapshot()
    assert snap == {"a": "up", "b": "suspect", "c": "down"}
    assert list(snap) == ["a", "b", "c"]
    assert all(isinstance(v, str) for v in snap.values())


def test_transitions_counted_only_on_real_changes() -> None:
    """transitions counts state changes only, not repeated events that keep the state."""
    h = Health(timeouts_to_down=3)
    h.success("a", 0.0)  # new peer, already up
    h.success("a", 1.0)
    assert h.transitions == 0
    h.timeout("a", 2.0)  # up -> suspect
    assert h.transitions == 1
    h.timeout("a", 3.0)  # still suspect
    assert h.transitions == 1
    h.timeout("a", 4.0)  # suspect -> down
    assert h.transitions == 2
    h.unreachable("a", 5.0)  # still down
    h.timeout("a", 6.0)  # still down (4 timeouts)
    h.usable("a", 100.0)  # a retry is not a state change
    assert h.transitions == 2
    h.success("a", 7.0)  # down -> up
    assert h.transitions == 3
    h.unreachable("b", 8.0)  # new peer: up -> down
    assert h.transitions == 4


# --- Health: model test ------------------------------------------------------------------------


@dataclass
class _ModelPeer:
    state: PeerState = UP
    timeouts: int = 0
    since: float = 0.0


EVENTS = ("success", "unreachable", "timeout", "usable")
PEERS = ("a", "b", "c")


@settings(max_examples=300, deadline=None)
@given(
    k=st.integers(1, 3),
    retry_after=st.sampled_from([0.5, 1.0, 2.0]),
    steps=st.lists(
        st.tuples(
            st.sampled_from(EVENTS),
            st.sampled_from(PEERS),
            st.sampled_from([0.0, 0.25, 0.5, 1.0, 2.0, 3.0]),
        ),
        max_size=40,
    ),
)
def test_health_matches_model(k: int, retry_after: float, steps: list[tuple[str, str, float]]) -> None:
    """Random event sequences give the states, usability, down(), snapshot() and transitions
    of a tiny model of the module docstring's rules."""
    h = Health(timeouts_to_down=k, retry_after=retry_after)
    model: dict[str, _ModelPeer] = {}
    transitions = 0
    now = 100.0

    def become(peer: _ModelPeer, state: PeerState) -> None:
        nonlocal transitions
        if peer.state is not state:
            peer.state, peer.since = state, now
            transitions += 1

    for event, name, advance in steps:
        now += advance
        if event == "usable":
            m = model.get(name)
            expected = m is None or m.state is not DOWN or now - m.since >= retry_after
            if m is not None and m.state is DOWN and expected:
                m.since = now  # the retry uses up this window
            assert h.usable(name, now) is expected
        elif event == "success":
            m = model.setdefault(name, _ModelPeer())
            m.timeouts = 0
            become(m, UP)
            h.success(name, now)
        elif event == "unreachable":
            m = model.setdefault(name, _ModelPeer())
            become(m, DOWN)
            h.unreachable(name, now)
        else:
            m = model.setdefault(name, _ModelPeer())
            m.timeouts += 1
            if m.state is DOWN:  # a timeout never revives a down peer; it re-arms the wait
                m.since = now
            else:
                become(m, DOWN if m.timeouts >= k else SUSPECT)
            h.timeout(name, now)

        for p in PEERS:
            assert h.state(p) is (model[p].state if p in model else UP)
        assert h.down() == sorted(p for p, m in model.items() if m.state is DOWN)
        assert h.snapshot() == {p: model[p].state.value for p in sorted(model)}
        assert h.transitions == transitions


# --- sloppy_targets ----------------------------------------------------------------------------


def test_all_primaries_usable() -> None:
    """When every primary is usable the targets are the primaries in order, with no hints."""
    ok = {"a", "b", "c", "d", "e"}
    assert sloppy_targets(("a", "b", "c"), ("d", "e"), 3, ok.__contains__) == [
        ("a", None), ("b", None), ("c", None)
    ]


def test_down_primary_replaced_by_first_usable_fallback_with_hint() -> None:
    """An unusable primary is stood in for by the first usable fallback, hinted for it."""
    ok = {"a", "c", "d", "e"}
    assert sloppy_targets(("a", "b", "c"), ("d", "e"), 3, ok.__contains__) == [
        ("a", None), ("c", None), ("d", "b")
    ]


def test_hint_order_follows_down_primaries_order() -> None:
    """Fallbacks are hinted for the down primaries in preference-list order."""
    ok = {"b", "x", "y", "z"}
    assert sloppy_targets(("a", "b", "c"), ("x", "y", "z"), 3, ok.__contains__) == [
        ("b", None), ("x", "a"), ("y", "c")
    ]


def test_unusable_fallbacks_are_skipped() -> None:
    """A down fallback is passed over for the next usable one."""
    ok = {"a", "b", "y"}
    assert sloppy_targets(("a", "b", "c"), ("x", "y", "z"), 3, ok.__contains__) == [
        ("a", None), ("b", None), ("y", "c")
    ]


def test_no_fallback_when_no_primary_is_down() -> None:
    """Fallbacks are neither used nor even asked about when every primary is usable."""
    asked: list[str] = []

    def usable(name: str) -> bool:
        asked.append(name)
        return True

    result = sloppy_targets(("a", "b"), ("x", "y"), 2, usable)
    assert result == [("a", None), ("b", None)]
    assert asked == ["a", "b"]


def test_fewer_targets_when_fallbacks_run_out() -> None:
    """With too few usable fallbacks the result is shorter than N and some primaries go unhinted."""
    ok = {"a", "x"}
    assert sloppy_targets(("a", "b", "c"), ("w", "x"), 3, ok.__contains__) == [("a", None), ("x", "b")]
    assert sloppy_targets(("a", "b", "c"), (), 3, ok.__contains__) == [("a", None)]
    assert sloppy_targets(("a", "b", "c"), ("w", "x"), 3, lambda _: False) == []


def test_never_more_than_n_targets() -> None:
    """The result never exceeds N, however many usable fallbacks there are."""
    result = sloppy_targets(("a", "b"), ("x", "y", "z"), 2, {"x", "y", "z"}.__contains__)
    assert result == [("x", "a"), ("y", "b")]
    result = sloppy_targets(("a", "b", "c"), ("x", "y", "z"), 3, {"a", "x", "y", "z"}.__contains__)
    assert len(result) == 3


def test_usable_asked_at_most_once_per_node() -> None:
    """usable is called at most once per node (Health.usable spends a retry window per call)."""
    h = Health(retry_after=1.0)
    for name in ("a", "b", "x", "y"):
        h.unreachable(name, 0.0)
    now = 5.0  # every down node may be retried once
    result = sloppy_targets(("a", "b", "c"), ("x", "y", "z"), 3, lambda n: h.usable(n, now))
    assert result == [("a", None), ("b", None), ("c", None)]
    # the retries were spent on a and b only: the fallbacks' windows are still open
    assert not h.usable("a", now) and not h.usable("b", now)
    assert h.usable("x", now) and h.usable("y", now)


@st.composite
def _preference(draw: st.DrawFn) -> tuple[tuple[str, ...], tuple[str, ...], int, frozenset[str]]:
    n = draw(st.integers(1, 5))
    names = draw(st.lists(st.sampled_from("abcdefghijkl"), unique=True, max_size=12))
    n_primaries = draw(st.integers(0, min(n, len(names))))  # the ring gives at most N primaries
    primaries, fallbacks = tuple(names[:n_primaries]), tuple(names[n_primaries:])
    ok = frozenset(draw(st.sets(st.sampled_from(names))) if names else set())
    return primaries, fallbacks, n, ok


@settings(max_examples=400, deadline=None)
@given(_preference())
def test_sloppy_targets_properties(pref: tuple[tuple[str, ...], tuple[str, ...], int, frozenset[str]]) -> None:
    """Hints name distinct down primaries, usable primaries come unhinted, no node repeats, and
    the size is min(N, #usable primaries + min(#down primaries, #usable fallbacks))."""
    primaries, fallbacks, n, ok = pref
    asked: list[str] = []

    def usable(name: str) -> bool:
        asked.append(name)
        return name in ok

    result = sloppy_targets(primaries, fallbacks, n, usable)
    nodes = [node for node, _ in result]
    hints = [hint for _, hint in result if hint is not None]
    up = [p for p in primaries if p in ok]
    down = [p for p in primaries if p not in ok]
    usable_fallbacks = [f for f in fallbacks if f in ok]

    assert len(nodes) == len(set(nodes))
    assert len(result) <= n
    assert len(result) == min(n, len(up) + min(len(down), len(usable_fallbacks)))
    assert result[: len(up)] == [(p, None) for p in up]  # usable primaries first, in order
    assert all(node in usable_fallbacks for node, hint in result if hint is not None)
    assert all(hint in down for hint in hints)
    assert len(hints) == len(set(hints))
    assert hints == down[: len(hints)]  # hints follow the order of the down primaries
    stand_ins = [node for node, hint in result if hint is not None]
    assert stand_ins == usable_fallbacks[: len(stand_ins)]  # first usable fallbacks, in order
    assert all(node in ok for node in nodes)
    assert len(asked) == len(set(asked))


# --- QuorumTally.substitute --------------------------------------------------------------------


def test_substitute_pending_replica_then_succeed_through_it() -> None:
    """A pending replica can be replaced, and the substitute's success counts toward the quorum."""
    t = QuorumTally(["a", "b", "c"], 2)
    assert t.success("a") is PENDING
    assert t.substitute("b", "x")
    assert t.replicas == ("a", "x", "c")  # order kept
    assert t.pending == ["x", "c"]
    assert t.success("b") is PENDING  # the replaced replica no longer counts
    assert t.success("x") is SUCCEEDED
    assert t.succeeded == ["a", "x"]


def test_substitute_failed_replica_forgets_its_error() -> None:
    """Replacing a failed replica drops its error, so the tally can still succeed via the substitute."""
    t = QuorumTally(["a", "b", "c"], 2)
    assert t.failure("b", "unreachable") is PENDING
    assert t.substitute("b", "x")
    assert t.errors == {} and t.replicas == ("a", "x", "c")
    assert t.failure("c", "boom") is PENDING  # only one error counted now, not two
    assert t.success("a") is PENDING
    assert t.success("x") is SUCCEEDED
    assert t.succeeded == ["a", "x"] and t.errors == {"c": "boom"}


def test_substitute_too_late_when_a_failure_decided() -> None:
    """With W=N the first failure decides the tally, so that replica can no longer be replaced."""
    t = QuorumTally(["a", "b", "c"], 3)
    assert t.failure("b", "unreachable") is FAILED
    assert not t.substitute("b", "x")
    assert t.errors == {"b": "unreachable"}


def test_substitute_refused_once_decided() -> None:
    """No substitution once the tally has succeeded or failed."""
    t = QuorumTally(["a", "b", "c"], 1)
    t.success("a")
    assert t.decided and not t.substitute("b", "x")
    f = QuorumTally(["a", "b", "c"], 2)
    f.failure("a", "e")
    f.failure("b", "e")
    assert f.state is FAILED and not f.substitute("c", "x")
    assert f.replicas == ("a", "b", "c")


def test_substitute_refused_for_succeeded_unknown_or_duplicate() -> None:
    """Refused for a replica that succeeded, a non-replica, or a substitute already among replicas."""
    t = QuorumTally(["a", "b", "c"], 3)
    t.success("a")
    assert not t.substitute("a", "x")
    assert not t.substitute("z", "x")
    assert not t.substitute("b", "c")
    assert not t.substitute("b", "a")
    assert not t.substitute("b", "b")
    assert t.replicas == ("a", "b", "c") and t.state is PENDING
    assert t.substitute("b", "x") and t.replicas == ("a", "x", "c")
    assert not t.substitute("b", "y")  # b is no longer a replica
    assert t.substitute("x", "b")  # b may come back once it left
    assert t.replicas == ("a", "b", "c")


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 5),
    data=st.data(),
)
def test_substitute_keeps_order_and_counts(n: int, data: st.DataObject) -> None:
    """Substituting never reorders replicas, keeps successes, and leaves the tally undecided."""
    replicas = [f"r{i}" for i in range(n)]
    required = data.draw(st.integers(1, n))
    t = QuorumTally(replicas, required)
    for r in replicas:
        outcome = data.draw(st.sampled_from(["ok", "fail", "none"]))
        if outcome == "ok":
            t.success(r)
        elif outcome == "fail":
            t.failure(r, "e")
    target = data.draw(st.sampled_from(replicas))
    before = (t.replicas, list(t.succeeded), dict(t.errors), t.state)
    done = t.substitute(target, "spare")
    expected_ok = before[3] is PENDING and target not in before[1]
    assert done is expected_ok
    if done:
        assert t.replicas == tuple("spare" if r == target else r for r in before[0])
        assert t.succeeded == before[1]
        assert t.errors == {r: e for r, e in before[2].items() if r != target}
        assert t.state is PENDING and "spare" in t.pending
    else:
        assert (t.replicas, t.succeeded, t.errors, t.state) == before
