"""The fault checkers on hand-made histories: each violation must be caught, and correct
histories (including unknown outcomes either way) must pass. Pure, no processes."""

from __future__ import annotations

from dynq_client import NotEnoughReplicas, QuorumError, QuorumTimeout, StorageError, Timeout, TooManySiblings, Unavailable
from tests.faults.checker import check_convergence, check_hints_drained, check_set_adds, check_siblings, check_ttl
from tests.faults.history import FAIL, OK, UNKNOWN, History, classify


def adds(*entries: tuple[str, int, str]) -> History:
    h = History()
    for key, element, outcome in entries:
        h.complete(h.invoke(0, "add", key, element), outcome)
    return h


def test_classify_only_guaranteed_failures_as_fail() -> None:
    """Only errors that guarantee 'executed nowhere' are fail; timeouts and partial quorums unknown."""
    assert classify(Unavailable("no node")) == FAIL
    assert classify(StorageError("disk full")) == FAIL
    assert classify(TooManySiblings("x")) == FAIL
    assert classify(Timeout("t")) == UNKNOWN
    assert classify(QuorumTimeout("put failed", required=2, succeeded=0)) == UNKNOWN
    assert classify(QuorumError("put failed: 1 of 2", required=2, succeeded=1)) == UNKNOWN
    assert classify(NotEnoughReplicas("put failed: w=3 but only 2 replicas are reachable", required=3,
                                      succeeded=0)) == FAIL
    # a plain quorum error, even with nothing counted, may have landed somewhere
    assert classify(QuorumError("put failed: w=3 but only 2 replicas are reachable", required=3, succeeded=0)) == UNKNOWN
    assert classify(QuorumError("put failed: 0 of 2 required replicas succeeded", required=2, succeeded=0)) == UNKNOWN
    assert classify(RuntimeError("bug")) == UNKNOWN


def test_set_adds_pass_with_unknowns_either_way() -> None:
    """Acknowledged adds present, unknown adds present or absent: ok."""
    h = adds(("k", 1, OK), ("k", 2, UNKNOWN), ("k", 3, UNKNOWN), ("k", 4, FAIL))
    v = check_set_adds(h, {"k": {1, 2}})
    assert v.ok, v
    assert v.counts["acknowledged"] == 1 and v.counts["unknown"] == 2 and v.counts["lost"] == 0


def test_set_adds_catch_a_lost_acknowledged_add() -> None:
    """The Riak-LWW failure: an acknowledged add missing from the final read."""
    h = adds(("k", 1, OK), ("k", 2, OK), ("j", 3, OK))
    v = check_set_adds(h, {"k": {1}, "j": {3}})
    assert not v.ok and v.counts["lost"] == 1
    assert "k: acknowledged adds lost: [2]" in v.problems[0]


def test_set_adds_catch_a_key_lost_entirely() -> None:
    """A key missing from the final state loses all its acknowledged adds."""
    v = check_set_adds(adds(("k", 1, OK)), {})
    assert not v.ok and v.counts["lost"] == 1


def test_set_adds_catch_elements_from_nowhere_and_failed_adds() -> None:
    """An element nobody added, or one whose add was guaranteed not executed, must not be read."""
    h = adds(("k", 1, OK), ("k", 2, FAIL))
    v = check_set_adds(h, {"k": {1, 2}})
    assert not v.ok and "failed adds" in v.problems[0]
    v = check_set_adds(h, {"k": {1, 99}})
    assert not v.ok and "never-added" in v.problems[0]


def test_set_adds_never_completed_counts_as_unknown() -> None:
    """An add invoked but never completed (test stopped) may be present or absent."""
    h = History()
    h.invoke(0, "add", "k", 5)
    assert check_set_adds(h, {"k": {5}}).ok and check_set_adds(h, {}).ok
    assert check_set_adds(h, {}).counts["unknown"] == 1


def put(h: History, key: str, value: str, outcome: str, covers: tuple[str, ...] = ()) -> None:
    h.complete(h.invoke(0, "put", key, value, covers), outcome)


def delete(h: History, key: str, outcome: str, covers: tuple[str, ...]) -> None:
    h.complete(h.invoke(0, "delete", key, None, covers), outcome)


def test_siblings_concurrent_blind_writes_must_all_survive() -> None:
    """Blind writes cover nothing: every acknowledged one must be a sibling at the end."""
    h = History()
    put(h, "k", "a", OK)
    put(h, "k", "b", OK)
    put(h, "k", "c", UNKNOWN)
    assert check_siblings(h, {"k": {"a", "b"}}).ok
    v = check_siblings(h, {"k": {"b", "c"}})  # last-write-wins behaviour
    assert not v.ok and v.counts["lost"] == 1 and "['a']" in v.problems[0]


def test_siblings_a_covering_write_may_replace() -> None:
    """A write with the context of a read that saw 'a' supersedes 'a'; it then must not come back."""
    h = History()
    put(h, "k", "a", OK)
    put(h, "k", "b", OK, covers=("a",))
    assert check_siblings(h, {"k": {"b"}}).ok
    v = check_siblings(h, {"k": {"a", "b"}})
    assert not v.ok and v.counts["resurrected"] == 1


def test_siblings_unknown_covering_write_excuses_either_way() -> None:
    """If the covering write's outcome is unknown, the covered value may be present or absent."""
    h = History()
    put(h, "k", "a", OK)
    put(h, "k", "b", UNKNOWN, covers=("a",))
    assert check_siblings(h, {"k": {"a"}}).ok
    assert check_siblings(h, {"k": {"b"}}).ok
    assert check_siblings(h, {"k": {"a", "b"}}).ok


def test_siblings_failed_covering_write_excuses_nothing() -> None:
    """A write guaranteed not executed covers nothing: the value it would have replaced must stay."""
    h = History()
    put(h, "k", "a", OK)
    put(h, "k", "b", FAIL, covers=("a",))
    assert check_siblings(h, {"k": {"a"}}).ok
    v = check_siblings(h, {"k": set()})
    assert not v.ok and v.counts["lost"] == 1
    v = check_siblings(h, {"k": {"a", "b"}})
    assert not v.ok and v.counts["phantom"] == 1


def test_siblings_deleted_keys_stay_deleted() -> None:
    """A key whose every write an acknowledged delete covered must read as absent."""
    h = History()
    put(h, "k", "a", OK)
    put(h, "k", "b", UNKNOWN)
    delete(h, "k", OK, covers=("a", "b"))
    assert check_siblings(h, {}).ok
    v = check_siblings(h, {"k": {"b"}})
    assert not v.ok and v.counts["undeleted"] == 1 and v.counts["resurrected"] == 1


def test_siblings_rewrite_after_delete_must_survive() -> None:
    """write / delete / rewrite: the rewrite (acknowledged, covered by nothing) must be there."""
    h = History()
    put(h, "k", "a", OK)
    delete(h, "k", OK, covers=("a",))
    put(h, "k", "a2", OK, covers=())
    assert check_siblings(h, {"k": {"a2"}}).ok
    v = check_siblings(h, {})
    assert not v.ok and v.counts["lost"] == 1


def test_siblings_value_from_nowhere() -> None:
    """Nothing may be read that was never written."""
    v = check_siblings(History(), {"k": {"zzz"}})
    assert not v.ok and v.counts["phantom"] == 1


def test_convergence_catches_a_divergent_replica() -> None:
    """Equal digests on every replica pass; one replica differing (or holding nothing) fails."""
    assert check_convergence({"k": {"n1": b"x", "n2": b"x", "n3": b"x"}}).ok
    v = check_convergence({"k": {"n1": b"x", "n2": b"x", "n3": None}, "j": {"n1": b"y", "n2": b"y"}})
    assert not v.ok and v.counts["divergent"] == 1 and "n3: nothing" in v.problems[0]
    assert not check_convergence({7: {"n1": b"root-a", "n4": b"root-b"}}).ok  # Merkle roots per partition


def test_hints_must_drain() -> None:
    """Any node still holding hints after heal fails the check."""
    assert check_hints_drained({"n1": 0, "n2": 0}).ok
    v = check_hints_drained({"n1": 0, "n2": 3})
    assert not v.ok and "n2 still holds 3 hints" in v.problems[0]


def test_siblings_a_read_during_the_run_must_not_see_failed_writes() -> None:
    """A value seen by any read must come from a write that may have executed."""
    h = History()
    put(h, "k", "a", FAIL)
    h.complete(h.invoke(1, "read", "k"), OK, result=frozenset({"a"}))
    v = check_siblings(h, {})
    assert not v.ok and "during the run" in v.problems[0]


def test_set_adds_a_read_during_the_run_must_not_see_failed_adds() -> None:
    """An add whose read saw an element from a failed add is caught."""
    h = History()
    h.complete(h.invoke(0, "add", "k", 1), FAIL)
    h.complete(h.invoke(1, "add", "k", 2), OK, result=frozenset({1}))
    v = check_set_adds(h, {"k": {2}})
    assert not v.ok and "during the run" in v.problems[0]


# --- ttl -------------------------------------------------------------------------------


def ttl_history() -> tuple[History, dict[str, object]]:
    """A put with ttl 2 acknowledged at wall time 100, a put without ttl, a long-ttl put."""
    h = History()
    ops: dict[str, object] = {}
    for value, ttl in (("short", 2), ("plain", None), ("long", 3600)):
        op = h.invoke(0, "put", "k", value, ttl=ttl)
        h.complete(op, OK)
        op.invoke_wall, op.complete_wall = 99.9, 100.0
        ops[value] = op
    return h, ops


def read(h: History, key: str, values: set[str], at: float) -> None:
    op = h.invoke(1, "read", key)
    h.complete(op, OK, result=frozenset(values))
    op.invoke_wall = at


def test_ttl_passes_when_expired_values_are_gone_and_the_rest_kept() -> None:
    h, _ = ttl_history()
    read(h, "k", {"short", "plain", "long"}, at=101.0)  # before the expiry: may see it
    v = check_ttl(h, {"k": {"plain", "long"}}, checked_at=200.0)
    assert v.ok, v
    assert v.counts["with_ttl"] == 2


def test_ttl_catches_a_read_of_an_expired_value() -> None:
    h, _ = ttl_history()
    read(h, "k", {"short", "plain"}, at=102.5)  # began after 100 + 2
    v = check_ttl(h, {"k": {"plain", "long"}}, checked_at=200.0)
    assert not v.ok and v.counts["expired_read"] == 1


def test_ttl_catches_an_expired_value_after_heal_and_a_lost_unexpired_one() -> None:
    h, _ = ttl_history()
    v = check_ttl(h, {"k": {"short", "plain"}}, checked_at=200.0)
    assert not v.ok
    assert v.counts["expired_final"] == 1 and v.counts["lost"] == 1  # "long" lost


def test_ttl_gives_an_unknown_put_the_slack_of_a_late_coordinator() -> None:
    h = History()
    op = h.invoke(0, "put", "k", "late", ttl=1)
    h.complete(op, UNKNOWN)
    op.invoke_wall, op.complete_wall = 99.0, 100.0
    read(h, "k", {"late"}, at=102.0)  # it may have been minted up to the slack later
    assert check_ttl(h, {"k": set()}, checked_at=200.0).ok


def ops(*entries: tuple[str, str, int, str]) -> History:
    h = History()
    for f, key, value, outcome in entries:
        h.complete(h.invoke(0, f, key, value), outcome)
    return h


def test_counters_are_acknowledged_plus_a_subset_of_unknowns() -> None:
    """Final = acknowledged sum + any subset sum of the unknown increments; less, or a sum
    no subset gives, or counting a failed increment, is caught."""
    from tests.faults.checker import check_counters
    h = ops(("incr", "ctr/a", 2, OK), ("incr", "ctr/a", 3, UNKNOWN), ("incr", "ctr/a", 5, UNKNOWN),
            ("incr", "ctr/a", 7, FAIL))
    for final in (2, 5, 7, 10):
        assert check_counters(h, {"ctr/a": final}).ok, final
    for final in (1, 4, 9, 17):
        assert not check_counters(h, {"ctr/a": final}).ok, final


def test_or_sets_keep_unremoved_adds_and_removes_stick() -> None:
    """An acknowledged add not removed must be there, a removed one may be gone; an
    element no add wrote, or an acknowledged remove undone, is caught."""
    from tests.faults.checker import check_or_sets
    h = ops(("add", "st/a", 1, OK), ("add", "st/a", 2, OK), ("add", "st/a", 3, UNKNOWN),
            ("remove", "st/a", 2, UNKNOWN), ("add", "st/a", 4, OK), ("remove", "st/a", 4, OK))
    assert check_or_sets(h, {"st/a": {1, 2, 3}}).ok
    assert check_or_sets(h, {"st/a": {1}}).ok
    assert not check_or_sets(h, {"st/a": {2, 3}}).ok  # 1 lost
    assert not check_or_sets(h, {"st/a": {1, 9}}).ok  # 9 never added
    assert not check_or_sets(h, {"st/a": {1, 4}}).ok  # an acknowledged remove undone
