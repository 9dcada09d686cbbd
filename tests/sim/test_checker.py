"""The simulator's bucket checks as pure functions: what each accepts and what it flags
(the seeds only show that they pass, the mutations that they can fail)."""

from __future__ import annotations

from dynq.sim.buckets import history_key, history_key_of, storage_key_of
from dynq.sim.checker import check_datatypes, check_lww, check_placement, check_siblings, subset_sums
from dynq.sim.history import FAIL, OK, UNKNOWN, History
from dynq_client import buckets as b
from dynq_client.versions import update


def test_history_keys_name_the_bucket_and_round_trip_through_storage_keys() -> None:
    """Default-bucket keys keep their bare name (old histories unchanged); named ones are bucket/key."""
    assert history_key(b.DEFAULT, "k1") == "k1"
    assert history_key("lww3-0", "k1") == "lww3-0/k1"
    for hkey in ("k1", "lww3-0/k1", "siblings1-2/k0"):
        assert history_key_of(storage_key_of(hkey)) == hkey
    assert storage_key_of("lww3-0/k1") == b.storage_key("lww3-0", b"k1")


def test_lww_copies_with_one_sibling_pass_and_two_fail() -> None:
    """One value (or one tombstone) per copy is resolved; two concurrent siblings are not."""
    one = update(None, {}, "n1.a", b"v1", 1)
    two = update(one, {}, "n2.b", b"v2", 2)  # no context: concurrent, a second sibling
    assert check_lww([("n1", "lww3-0/k", one)]).ok
    verdict = check_lww([("n1", "lww3-0/k", one), ("n2", "lww3-0/k", two)])
    assert not verdict.ok and "n2" in verdict.problems[0] and verdict.counts == {"copies": 2}


def test_placement_accepts_exactly_the_primaries_or_nowhere() -> None:
    """Held by its n primaries, or by nobody: fine; a copy on a non-primary, a missing
    primary, or fewer distinct primaries than n: flagged."""
    ok = check_placement({"k": (3, ("n1", "n2", "n3"), {"n1", "n2", "n3"}),
                          "one/k": (1, ("n2",), {"n2"}), "never": (3, ("n1", "n2", "n3"), set())})
    assert ok.ok and ok.counts == {"keys": 3, "stored": 2}
    extra = check_placement({"k": (3, ("n1", "n2", "n4"), {"n1", "n2", "n3", "n4"})})
    assert not extra.ok and "not a primary: ['n3']" in extra.problems[0]
    missing = check_placement({"five/k": (5, ("n1", "n2", "n3", "n4", "n5"), {"n1", "n2", "n3", "n4"})})
    assert "missing on: ['n5']" in missing.problems[0]
    short = check_placement({"five/k": (5, ("n1", "n2", "n3"), set())})
    assert "3 primaries for n=5" in short.problems[0]


def test_an_lww_key_may_lose_an_acknowledged_write_but_not_read_two_values() -> None:
    """The no-loss rule holds for siblings keys and not for lww keys; an lww read of two
    values fails either way, as do phantoms."""
    h = History(clock=lambda: 0.0)
    for key in ("s/k", "l/k"):
        for value in (f"{key}-a", f"{key}-b"):
            h.complete(h.invoke("c1", "put", key, value), OK)
    final = {"s/k": {"s/k-a"}, "l/k": {"l/k-b"}}  # each lost one acknowledged write
    verdict = check_siblings(h, final, lww={"l/k"})
    assert [p.split(":")[0] for p in verdict.problems] == ["s/k"]
    assert verdict.counts["lost"] == 1 and verdict.counts["lww_keys"] == 1
    h.complete(h.invoke("c1", "read", "l/k"), OK, result=frozenset({"l/k-a", "l/k-b"}))
    again = check_siblings(h, {"s/k": {"s/k-a", "s/k-b"}, "l/k": {"l/k-b"}}, lww={"l/k"})
    assert not again.ok and "last-write-wins bucket returned 2 values" in again.problems[0]
    assert again.counts["lww_unresolved_reads"] == 1


def _dt_history(*ops: tuple[str, str, str, str]) -> History:
    h = History(lambda: 0.0)
    for f, key, value, outcome in ops:
        h.complete(h.invoke("c1", f, key, value), outcome)
    return h


def test_counter_is_acked_increments_plus_a_subset_of_unknown_ones() -> None:
    """Acked increments always count, failed ones never, unknown ones any subset (either sign)."""
    h = _dt_history(("incr", "dtc/d0", "5", OK), ("incr", "dtc/d0", "-3", UNKNOWN),
                    ("incr", "dtc/d0", "4", FAIL), ("incr", "dtc/d0", "2", UNKNOWN))
    for good in (5, 2, 7, 4):
        assert check_datatypes(h, {"dtc/d0": good})[0].ok, good
    for bad in (9, 3, 0, 6):
        assert not check_datatypes(h, {"dtc/d0": bad})[0].ok, bad
    assert subset_sums([1, -2]) == {0, 1, -2, -1}


def test_counter_with_many_unknown_increments_is_checked_by_range() -> None:
    """Past EXACT_UNKNOWN unknown increments only the span [negatives, positives] is checked."""
    h = _dt_history(*[("incr", "dtc/d0", "1", UNKNOWN)] * 201, ("incr", "dtc/d0", "-1", UNKNOWN))
    assert check_datatypes(h, {"dtc/d0": 150})[0].ok
    assert check_datatypes(h, {"dtc/d0": -1})[0].ok
    assert not check_datatypes(h, {"dtc/d0": 202})[0].ok


def test_set_flags_lost_adds_unwritten_elements_and_undone_removes() -> None:
    """An acked add not removed must stay; an element no add wrote or an acked remove undone is flagged."""
    h = _dt_history(("add", "dts/d0", "e1", OK), ("add", "dts/d0", "e2", OK), ("add", "dts/d0", "e3", UNKNOWN),
                    ("remove", "dts/d0", "e2", OK), ("add", "dts/d0", "e4", FAIL))
    assert check_datatypes(h, {"dts/d0": {"e1"}})[1].ok
    assert check_datatypes(h, {"dts/d0": {"e1", "e3"}})[1].ok
    assert not check_datatypes(h, {"dts/d0": set()})[1].ok  # e1 lost
    assert not check_datatypes(h, {"dts/d0": {"e1", "e2"}})[1].ok  # the acked remove undone
    assert not check_datatypes(h, {"dts/d0": {"e1", "e4"}})[1].ok  # e4's add failed: nothing wrote it
    assert not check_datatypes(h, None)[1].ok


def test_replicas_that_disagree_with_the_final_read_are_flagged() -> None:
    """Every primary must hold what the R=N read returned (a replica missing a key counts as bottom)."""
    h = _dt_history(("incr", "dtc/d0", "5", OK), ("add", "dts/d0", "e1", OK))
    final = {"dtc/d0": 5, "dts/d0": {"e1"}}
    same = {"dtc/d0": {"n1": 5, "n2": 5}, "dts/d0": {"n1": {b"e1"}, "n2": {b"e1"}}}
    assert check_datatypes(h, final, same)[2].ok
    assert not check_datatypes(h, final, {"dtc/d0": {"n1": 5, "n2": 4}})[2].ok
    assert not check_datatypes(h, final, {"dts/d0": {"n1": {b"e1"}, "n2": None}})[2].ok
