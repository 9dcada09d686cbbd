"""Property tests of the data types' joins (dynq_client.crdt): commutative, associative,
idempotent; replicas that receive the same deltas in any order, with duplicates, converge;
observed-remove and enable-wins semantics; the encoding round-trips canonically; a key's
expiry (ttl buckets) joins by max and an op on an expired state starts from empty."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from dynq_client import crdt
from dynq_client.crdt import COUNTER, FLAG, MAP, REGISTER, SET, State, apply_op, bottom, join
from dynq_client.errors import InvalidRequest, ProtocolError

ACTORS = ["a", "b", "c"]
ELEMS = [b"x", b"y", b"z"]


def op_strategy(kind: str, depth: int = 0) -> st.SearchStrategy[list[Any]]:
    if kind == COUNTER:
        return st.builds(lambda n: ["incr", n], st.integers(-5, 5))
    if kind == SET:
        return st.one_of(st.builds(lambda xs: ["add", xs], st.lists(st.sampled_from(ELEMS), min_size=1, max_size=2)),
                         st.builds(lambda xs: ["rem", xs], st.lists(st.sampled_from(ELEMS), min_size=1, max_size=2)),
                         st.just(["clear"]))
    if kind == REGISTER:
        return st.builds(lambda v: ["assign", v], st.sampled_from(ELEMS))
    if kind == FLAG:
        return st.sampled_from([["enable"], ["disable"]])
    sub_kinds = [COUNTER, SET, FLAG, REGISTER] + ([MAP] if depth < 1 else [])
    return st.one_of(
        *[st.builds(lambda name, op, t=t: ["update", name, t, op], st.sampled_from(["f", "g"]), op_strategy(t, depth + 1))
          for t in sub_kinds],
        st.builds(lambda name, t: ["remove_field", name, t], st.sampled_from(["f", "g"]), st.sampled_from(sub_kinds)),
    )


KINDS = [COUNTER, SET, MAP, REGISTER, FLAG]


@st.composite
def histories(draw: st.DrawFn, kind: str, expiring: bool = False) -> tuple[list[State], list[State]]:
    """Ops run at random replicas (each applies its own deltas and sometimes receives
    others'); returns the replicas' states and every delta minted. ``expiring``: ops
    carry a ttl and run at random times, so some apply to expired states."""
    replicas = {a: bottom(kind) for a in ACTORS}
    deltas: list[State] = []
    for _ in range(draw(st.integers(0, 12))):
        actor = draw(st.sampled_from(ACTORS))
        if deltas and draw(st.booleans()):  # deliver some earlier delta first
            replicas[actor] = join(replicas[actor], draw(st.sampled_from(deltas)))
        op = draw(op_strategy(kind))
        if expiring:
            delta = apply_op(replicas[actor], op, actor, draw(st.integers(0, 30)), None,
                             draw(st.sampled_from([0, 5, 10])))
        else:
            delta = apply_op(replicas[actor], op, actor, draw(st.integers(0, 3)))
        replicas[actor] = join(replicas[actor], delta)
        deltas.append(delta)
    return list(replicas.values()), deltas


def same(a: State, b: State) -> bool:
    """Equal states (the expiry included; ``touched`` is not part of a state)."""
    return (crdt.encode_state(State(a.kind, a.ctx, a.store, None, a.expires_ms))
            == crdt.encode_state(State(b.kind, b.ctx, b.store, None, b.expires_ms)))


@pytest.mark.parametrize("expiring", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_join_is_commutative_associative_idempotent(kind: str, expiring: bool, data: st.DataObject) -> None:
    """The three laws on states reached by real ops, for every type (and with expiry)."""
    states, _ = data.draw(histories(kind, expiring))
    a, b, c = states
    assert same(join(a, b), join(b, a))
    assert same(join(join(a, b), c), join(a, join(b, c)))
    assert same(join(a, a), a)


@pytest.mark.parametrize("expiring", [False, True])
@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_replicas_converge_whatever_the_delivery_order(kind: str, expiring: bool, data: st.DataObject) -> None:
    """Every replica that joins the same deltas, in any order and duplicated, ends equal
    (and equal to a replica that joined the coordinators' full states)."""
    states, deltas = data.draw(histories(kind, expiring))
    full = bottom(kind)
    for s in states:
        full = join(full, s)
    for _ in range(2):
        order = data.draw(st.permutations(deltas + data.draw(st.lists(st.sampled_from(deltas), max_size=4))
                                          if deltas else []))
        replica = bottom(kind)
        for d in order:
            replica = join(replica, d)
        # the replicas' states are joins of deltas only, so joining every delta gives them all
        assert same(replica, join(replica, full)) or same(replica, full)
        assert crdt.value_of(kind, replica.store) == crdt.value_of(kind, join(replica, full).store)


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_context_stays_compact(data: st.DataObject) -> None:
    """Once every delta has arrived the cloud is empty: no per-element tombstones remain."""
    _, deltas = data.draw(histories(SET))
    replica = bottom(SET)
    for d in data.draw(st.permutations(deltas)):
        replica = join(replica, d)
    assert not replica.ctx.cloud


def test_observed_remove_keeps_a_concurrent_add() -> None:
    """A remove takes effect on the adds it observed; a concurrent add of the same element wins."""
    a, b = bottom(SET), bottom(SET)
    add1 = apply_op(a, ["add", [b"x"]], "a", 0)
    a = join(a, add1)
    b = join(b, add1)
    seen = b.ctx  # the reader's context at b
    concurrent_add = apply_op(a, ["add", [b"x"]], "a", 0)
    a = join(a, concurrent_add)
    remove = apply_op(b, ["rem", [b"x"]], "b", 0, observed=seen)
    b = join(b, remove)
    assert crdt.value_of(SET, b.store) == set()
    assert crdt.value_of(SET, join(a, b).store) == {b"x"}
    assert crdt.value_of(SET, join(join(bottom(SET), remove), add1).store) == set()


def test_enable_wins_and_counter_sums() -> None:
    """A disable does not cancel an enable it did not observe; increments of actors add up."""
    f = bottom(FLAG)
    e1 = apply_op(f, ["enable"], "a", 0)
    disabled = apply_op(join(f, e1), ["disable"], "b", 0)
    e2 = apply_op(join(f, e1), ["enable"], "a", 0)
    assert crdt.value_of(FLAG, join(join(join(f, e1), disabled), e2).store) is True
    c = bottom(COUNTER)
    for actor, n in [("a", 5), ("b", -2), ("a", 1)]:
        c = join(c, apply_op(c, ["incr", n], actor, 0))
    assert crdt.value_of(COUNTER, c.store) == 4


def test_counter_skipping_a_delta_does_not_double_count() -> None:
    """A replica that misses an actor's middle increment counts that actor's newest total once."""
    c = bottom(COUNTER)
    d1 = apply_op(c, ["incr", 5], "a", 0)
    c = join(c, d1)
    d2 = apply_op(c, ["incr", 2], "a", 0)
    c = join(c, d2)
    d3 = apply_op(c, ["incr", 3], "a", 0)
    replica = join(join(bottom(COUNTER), d1), d3)
    assert crdt.value_of(COUNTER, replica.store) == 10


def test_map_fields_nest_and_remove() -> None:
    """A map holds typed fields, nested maps too; removing a field drops what was observed."""
    m = bottom(MAP)
    for op in (["update", "likes", COUNTER, ["incr", 3]], ["update", "tags", SET, ["add", [b"a", b"b"]]],
               ["update", "addr", MAP, ["update", "city", REGISTER, ["assign", b"Paris"]]],
               ["update", "on", FLAG, ["enable"]]):
        m = join(m, apply_op(m, op, "a", 1))
    assert crdt.value_of(MAP, m.store) == {"likes": 3, "tags": {b"a", b"b"}, "addr": {"city": b"Paris"}, "on": True}
    m = join(m, apply_op(m, ["remove_field", "tags", SET], "b", 2))
    assert "tags" not in crdt.value_of(MAP, m.store)


def test_register_keeps_concurrent_values_and_reads_the_newest() -> None:
    """Concurrent assignments both survive; value() is the newest by timestamp."""
    r = bottom(REGISTER)
    x = apply_op(r, ["assign", b"old"], "a", 10)
    y = apply_op(r, ["assign", b"new"], "b", 20)
    both = join(join(r, x), y)
    assert crdt.register_values(both.store) == [b"new", b"old"]
    later = apply_op(both, ["assign", b"z"], "a", 5)
    assert crdt.register_values(join(both, later).store) == [b"z"]


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_encoding_round_trips(kind: str, data: st.DataObject) -> None:
    """decode(encode(s)) == s, and the encoding is canonical."""
    states, deltas = data.draw(histories(kind))
    for s in states + deltas:
        blob = crdt.encode_state(s)
        assert crdt.is_state_blob(blob)
        back = crdt.decode_state(blob)
        assert crdt.encode_state(back) == blob


def test_bad_states_and_ops_are_refused() -> None:
    """A store dot outside the context, or a malformed op, is a typed error."""
    bad = crdt.packb(["dt", "flag", [[], []], [["a", 1]], None])
    with pytest.raises(ProtocolError):
        crdt.decode_state(bad)
    for kind, op in [(COUNTER, ["incr", "1"]), (COUNTER, ["add", [b"x"]]), (SET, ["add", []]),
                     (MAP, ["update", "f", "nope", ["incr", 1]]), (REGISTER, ["assign", 1]), (FLAG, "enable")]:
        with pytest.raises(InvalidRequest):
            crdt.check_op(kind, op)


def test_a_remove_takes_effect_where_the_add_has_not_arrived() -> None:
    """A reader saw x on other replicas; the coordinator of its remove never got the add.
    The remove carries the dots the reader saw, so once the add arrives it stays removed."""
    add = apply_op(bottom(SET), ["add", [b"x"]], "a", 0)
    reader_view = join(bottom(SET), add)
    coordinator = bottom(SET)  # missed the add
    seen = [crdt.dots_to_wire(reader_view.store[b"x"])]
    op = crdt.check_op(SET, ["rem", [b"x"], seen])
    remove = apply_op(coordinator, op, "b", 0, observed=reader_view.ctx)
    assert crdt.value_of(SET, join(join(coordinator, remove), add).store) == set()
    # without the observed dots, the remove would have removed nothing there
    blind = apply_op(coordinator, ["rem", [b"x"]], "b", 0, observed=reader_view.ctx)
    assert crdt.value_of(SET, join(join(coordinator, blind), add).store) == {b"x"}
    # dots the caller's context does not cover are ignored (it cannot remove what it never saw)
    other = apply_op(bottom(SET), ["add", [b"x"]], "c", 0)
    forged = [crdt.dots_to_wire(other.store[b"x"])]
    ineffective = apply_op(coordinator, ["rem", [b"x"], forged], "b", 0, observed=reader_view.ctx)
    assert crdt.value_of(SET, join(join(coordinator, ineffective), other).store) == {b"x"}


def test_observed_dots_are_checked() -> None:
    """Malformed observed dots (wrong shape, not one list per element) are InvalidRequest."""
    for op in (["rem", [b"x"], [["a", 1]]], ["rem", [b"x", b"y"], [[]]], ["disable", "x"],
               ["clear", [["a", 0]]]):
        kind = FLAG if op[0] == "disable" else SET
        with pytest.raises(InvalidRequest):
            crdt.check_op(kind, op)


# --- expiry (ttl buckets) ------------------------------------------------------------------------


def test_every_op_slides_the_expiry_and_join_takes_the_max() -> None:
    a = apply_op(bottom(COUNTER), ["incr", 1], "a", 1000, None, 500)
    assert a.expires_ms == 1500
    b = apply_op(a, ["incr", 1], "b", 1200, None, 500)
    assert b.expires_ms == 1700
    assert join(a, b).expires_ms == join(b, a).expires_ms == 1700
    assert apply_op(bottom(COUNTER), ["incr", 1], "a", 1000).expires_ms == 0  # no ttl: never
    assert crdt.decode_state(crdt.encode_state(b)).expires_ms == 1700
    plain = State(COUNTER, a.ctx, a.store)  # a key that never expires encodes as before expiry existed
    assert crdt.encode_state(plain)[:4] == crdt.STATE_PREFIX
    assert len(crdt.state_to_wire(plain)[2]) == 2


def test_an_expired_counter_reads_zero_and_restarts_from_zero() -> None:
    """The old increments of every actor, the coordinator's own included, never count again."""
    s = bottom(COUNTER)
    for actor, now in (("a", 0), ("b", 10), ("a", 20)):
        s = join(s, apply_op(s, ["incr", 5], actor, now, None, 100))
    assert crdt.value_of(COUNTER, crdt.visible(s, 119).store) == 15
    assert crdt.value_of(COUNTER, crdt.visible(s, 120).store) == 0
    delta = apply_op(s, ["incr", 2], "a", 500, None, 100)
    assert delta.expires_ms == 600
    fresh = join(s, delta)
    assert crdt.value_of(COUNTER, fresh.store) == 2
    # a replica that missed the reset joins the delta and forgets the old increments too
    assert crdt.value_of(COUNTER, join(delta, s).store) == 2


def test_an_expired_set_reads_empty_and_an_add_after_it_starts_from_empty() -> None:
    s = bottom(SET)
    old = apply_op(s, ["add", [b"x", b"y"]], "a", 0, None, 100)
    s = join(s, old)
    assert crdt.value_of(SET, crdt.visible(s, 50).store) == {b"x", b"y"}
    seen = crdt.visible(s, 100)
    assert crdt.value_of(SET, seen.store) == set() and seen.ctx == s.ctx
    delta = apply_op(s, ["add", [b"z"]], "b", 200, None, 100)
    assert delta.touched is None  # it removes every element: joined as a whole state
    fresh = join(s, delta)
    assert crdt.value_of(SET, fresh.store) == {b"z"}
    assert crdt.value_of(SET, join(fresh, old).store) == {b"z"}  # the old add delivered late: still removed
    assert not crdt.is_expired(fresh, 250)


def test_an_op_on_an_expired_map_removes_every_field() -> None:
    s = bottom(MAP)
    s = join(s, apply_op(s, ["update", "f", COUNTER, ["incr", 3]], "a", 0, None, 10))
    s = join(s, apply_op(s, ["update", "g", FLAG, ["enable"]], "a", 0, None, 10))
    delta = apply_op(s, ["update", "g", FLAG, ["enable"]], "a", 50, None, 10)
    assert delta.touched is not None and ("f", COUNTER) in delta.touched
    assert crdt.value_of(MAP, join(s, delta).store) == {"g": True}
