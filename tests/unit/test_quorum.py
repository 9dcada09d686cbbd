"""Quorum bookkeeping (dynq_client.quorum): when a request is decided, and what it reports."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynq_client.errors import DynqError, QuorumError, QuorumTimeout, Timeout, error_from_wire
from dynq_client.quorum import QuorumState, QuorumTally, ReadQuorum
from dynq_client.versions import EMPTY, VersionedObject, merge, merge_all, update

from .test_versions import History, histories

PENDING, SUCCEEDED, FAILED = QuorumState.PENDING, QuorumState.SUCCEEDED, QuorumState.FAILED


# --- QuorumTally: concrete cases ----------------------------------------------------------


def test_succeeds_exactly_at_required_successes() -> None:
    """N=3 W=2: pending after one success, succeeded at the second."""
    t = QuorumTally(["a", "b", "c"], 2)
    assert t.state is PENDING and not t.decided
    assert t.success("a") is PENDING
    assert t.success("b") is SUCCEEDED
    assert t.decided and t.succeeded == ["a", "b"] and t.pending == ["c"]


def test_fails_as_soon_as_success_is_impossible() -> None:
    """N=3 R=2: one failure still leaves hope, the second makes success impossible."""
    t = QuorumTally(["a", "b", "c"], 2)
    assert t.failure("a", "down") is PENDING
    assert t.failure("b", "disk full") is FAILED
    assert t.pending == ["c"]


def test_all_required_fails_on_first_failure() -> None:
    """N=3 W=3: any single failure decides the request failed."""
    t = QuorumTally(["a", "b", "c"], 3)
    t.success("a")
    assert t.failure("c", "boom") is FAILED


def test_required_one_succeeds_on_first_success_and_fails_only_when_all_fail() -> None:
    """N=3 R=1: first success decides; failure needs every replica to fail."""
    t = QuorumTally(["a", "b", "c"], 1)
    assert t.failure("a", "x") is PENDING
    assert t.failure("b", "x") is PENDING
    assert t.failure("c", "x") is FAILED
    t2 = QuorumTally(["a", "b", "c"], 1)
    assert t2.success("b") is SUCCEEDED


def test_state_never_changes_once_decided() -> None:
    """Late successes and failures are recorded but never change a decided state."""
    t = QuorumTally(["a", "b", "c"], 2)
    t.success("a")
    t.success("b")
    assert t.failure("c", "late") is SUCCEEDED
    assert t.state is SUCCEEDED and t.errors == {"c": "late"}
    f = QuorumTally(["a", "b", "c"], 2)
    f.failure("a", "x")
    f.failure("b", "y")
    assert f.success("c") is FAILED
    assert f.state is FAILED


def test_duplicate_and_unknown_reports_are_ignored() -> None:
    """A replica counts once (first report wins); names outside the replica set do not count."""
    t = QuorumTally(["a", "b", "c"], 2)
    t.success("a")
    assert t.success("a") is PENDING
    assert t.failure("a", "contradiction") is PENDING
    assert t.success("zz") is PENDING
    assert t.failure("zz", "stranger") is PENDING
    assert t.succeeded == ["a"] and t.errors == {}
    t.failure("b", "first")
    t.failure("b", "second")
    assert t.success("b") is PENDING
    assert t.errors == {"b": "first"}
    assert t.pending == ["c"]


def test_required_must_be_positive() -> None:
    """required < 1 is rejected at construction."""
    with pytest.raises(ValueError):
        QuorumTally(["a"], 0)
    with pytest.raises(ValueError):
        QuorumTally(["a"], -1)


def test_impossible_quorum_fails_immediately() -> None:
    """required > number of replicas is decided FAILED before any reply."""
    t = QuorumTally(["a", "b"], 3)
    assert t.state is FAILED
    assert t.success("a") is FAILED and t.success("b") is FAILED


def test_error_names_failed_replicas() -> None:
    """error() is a QuorumError (not a timeout) listing every failed replica and its reason."""
    t = QuorumTally(["a", "b", "c"], 2)
    t.success("a")
    t.failure("b", "storage: disk full")
    t.failure("c", "unavailable: gone")
    err = t.error("put")
    assert type(err) is QuorumError
    assert not isinstance(err, Timeout)
    assert err.code == "quorum"
    assert err.errors == {"b": "storage: disk full", "c": "unavailable: gone"}
    assert err.required == 2 and err.succeeded == 1
    assert "put" in err.message
    text = str(err)
    assert "b: storage: disk full" in text and "c: unavailable: gone" in text


def test_timed_out_error_names_failed_and_pending_replicas() -> None:
    """error(timed_out=True) is a QuorumTimeout (also a Timeout) naming failed and silent replicas."""
    t = QuorumTally(["a", "b", "c", "d"], 3)
    t.success("a")
    t.failure("b", "boom")
    err = t.error("get", timed_out=True)
    assert isinstance(err, QuorumTimeout)
    assert isinstance(err, QuorumError) and isinstance(err, Timeout) and isinstance(err, DynqError)
    assert err.code == "quorum_timeout"
    assert err.errors["b"] == "boom"
    assert set(err.errors) == {"b", "c", "d"}
    assert "deadline" in err.errors["c"] and "deadline" in err.errors["d"]
    assert err.succeeded == 1 and err.required == 3
    for name in ("b", "c", "d"):
        assert f"{name}: " in str(err)
    # error() does not mutate the tally.
    assert t.errors == {"b": "boom"} and t.pending == ["c", "d"]


def test_error_survives_the_wire() -> None:
    """A tally's error, sent as an error reply, comes back as the same class with the same details."""
    t = QuorumTally(["a", "b", "c"], 2)
    t.failure("a", "x")
    for timed_out in (False, True):
        err = t.error("put", timed_out=timed_out)
        back = error_from_wire(err.to_wire())
        assert type(back) is type(err)
        assert isinstance(back, QuorumError)
        assert (back.required, back.succeeded, back.errors, back.message) == (
            err.required,
            err.succeeded,
            err.errors,
            err.message,
        )


# --- QuorumTally: model-based ---------------------------------------------------------------


@st.composite
def tally_scenarios(draw: st.DrawFn) -> tuple[list[str], int, list[tuple[str, bool]]]:
    n = draw(st.integers(1, 5))
    replicas = [f"n{i}" for i in range(n)]
    required = draw(st.integers(1, n + 1))
    names = st.sampled_from([*replicas, "stranger"])
    events = draw(st.lists(st.tuples(names, st.booleans()), max_size=12))
    return replicas, required, events


@settings(max_examples=300, deadline=None)
@given(tally_scenarios())
def test_tally_matches_model(scenario: tuple[list[str], int, list[tuple[str, bool]]]) -> None:
    """Over any order of success/failure reports, the tally decides exactly when a simple model does."""
    replicas, required, events = scenario
    n = len(replicas)
    tally = QuorumTally(replicas, required)
    # The model: first report per known replica counts; decided at the first moment
    # successes reach `required` or failures exceed n - required; never changes after.
    reported: dict[str, bool] = {}
    state = FAILED if required > n else PENDING
    assert tally.state is state
    for i, (name, ok) in enumerate(events):
        got = tally.success(name) if ok else tally.failure(name, f"err{i}")
        if name in replicas and name not in reported:
            reported[name] = ok
            successes = sum(reported.values())
            failures = len(reported) - successes
            if state is PENDING:
                if successes >= required:
                    assert successes == required  # decided exactly at the threshold
                    state = SUCCEEDED
                elif failures > n - required:
                    assert failures == n - required + 1  # ... and as early as possible
                    state = FAILED
        assert got is state and tally.state is state
        assert tally.decided == (state is not PENDING)
    assert tally.succeeded == [r for r, ok in reported.items() if ok]
    assert set(tally.errors) == {r for r, ok in reported.items() if not ok}
    assert tally.pending == [r for r in replicas if r not in reported]
    if state is PENDING:  # undecided: both outcomes must still be possible
        assert len(tally.succeeded) < required
        assert len(tally.errors) <= n - required

    err = tally.error("op")
    assert type(err) is QuorumError
    assert err.errors == tally.errors and err.succeeded == len(tally.succeeded) and err.required == required
    timeout = tally.error("op", timed_out=True)
    assert isinstance(timeout, QuorumTimeout) and isinstance(timeout, Timeout)
    assert set(timeout.errors) == set(tally.errors) | set(tally.pending)
    for name in timeout.errors:
        assert f"{name}: " in str(timeout)


# --- ReadQuorum -----------------------------------------------------------------------------


def test_read_quorum_merges_and_finds_stale_replicas() -> None:
    """merged is the merge of every object received; stale_replicas are those that differ from it."""
    old = update(None, {}, "a", b"old", 1)
    new = update(old, old.clock, "a", b"new", 2)
    other = update(None, {}, "b", b"other", 3)
    q = ReadQuorum(["a", "b", "c", "d"], 2)
    assert q.merged is None and q.stale_replicas() == []
    assert q.reply("a", new) is PENDING
    assert q.merged == new and q.stale_replicas() == []
    assert q.reply("b", old) is SUCCEEDED
    assert q.merged == new and q.stale_replicas() == ["b"]
    q.reply("c", None)  # late reply: still merged, and "c" holds nothing so it is stale
    q.reply("d", other)
    assert q.merged == merge(new, other)
    assert q.stale_replicas() == ["a", "b", "c", "d"]  # nobody holds both siblings yet
    q2 = ReadQuorum(["a", "b"], 2)
    q2.reply("a", merge(new, other))
    q2.reply("b", new)
    assert q2.stale_replicas() == ["b"]
    assert q.state is SUCCEEDED


def test_read_quorum_of_nothing() -> None:
    """Replicas that all hold nothing give merged None and no repair targets."""
    q = ReadQuorum(["a", "b"], 2)
    q.reply("a", None)
    assert q.reply("b", None) is SUCCEEDED
    assert q.merged is None and q.stale_replicas() == []


def test_read_quorum_ignores_duplicate_unknown_and_failed_replies() -> None:
    """A second reply, a reply from a stranger or from a replica that already failed changes nothing."""
    first = update(None, {}, "a", b"1", 1)
    second = update(None, {}, "b", b"2", 2)
    q = ReadQuorum(["a", "b", "c"], 2)
    q.reply("a", first)
    q.reply("a", second)
    q.reply("zz", second)
    q.failure("b", "down")
    q.reply("b", second)
    assert q.objects == {"a": first}
    assert q.merged == first
    assert q.succeeded == ["a"] and q.errors == {"b": "down"}
    assert q.state is PENDING


@st.composite
def read_scenarios(draw: st.DrawFn) -> tuple[History, list[tuple[str, VersionedObject | None | str]], int]:
    h = draw(histories())
    names = ["r0", "r1", "r2", "r3"]
    pool: list[VersionedObject | None] = [None, EMPTY, *h.states, *h.replicas.values()]
    events: list[tuple[str, VersionedObject | None | str]] = []
    for name in draw(st.lists(st.sampled_from([*names, "stranger"]), max_size=8)):
        if draw(st.integers(0, 4)) == 0:
            events.append((name, "fail"))
        else:
            events.append((name, pool[draw(st.integers(0, len(pool) - 1))]))
    return h, events, draw(st.integers(1, 4))


@settings(max_examples=120, deadline=None)
@given(read_scenarios())
def test_read_quorum_matches_model(scenario: tuple[History, list[tuple[str, VersionedObject | None | str]], int]) -> None:
    """After any replies, merged is the merge of each replica's first object and stale_replicas are exactly those differing from it."""
    _, events, required = scenario
    replicas = ["r0", "r1", "r2", "r3"]
    q = ReadQuorum(replicas, required)
    received: dict[str, VersionedObject | None] = {}
    failed: set[str] = set()
    for name, what in events:
        if isinstance(what, str):
            q.failure(name, "down")
            if name in replicas and name not in received:
                failed.add(name)
        else:
            q.reply(name, what)
            if name in replicas and name not in received and name not in failed:
                received[name] = what
        assert q.objects == received
        assert q.merged == merge_all(received.values())
        assert q.succeeded == list(received)
    merged = q.merged
    if merged is None:
        assert q.stale_replicas() == []
        return
    stale = q.stale_replicas()
    assert stale == [r for r, obj in received.items() if obj != merged]
    for r, obj in received.items():
        repaired = merge(obj, merged)
        assert repaired == merged  # read repair brings every replica up to the merge
        if r not in stale:
            assert obj == merged
