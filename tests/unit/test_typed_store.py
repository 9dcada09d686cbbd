"""The node's storage of typed keys on a real SQLite file (dynq.kv.typed_store): joining
deltas and whole states in any order gives the pure join; a set's delta touches only its
elements' rows; the header's count and digest follow; the element rows go with the header."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Iterator

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from dynq_client import crdt
from dynq_client.crdt import COUNTER, SET, State, apply_op, bottom, join
from dynq_client.errors import StorageError
from dynq_client.protocol import packb, unpackb
from dynq_client.versions import VersionedObject

from dynq.kv.typed_store import TypedStore
from dynq.store import set_rows
from dynq.store.storage import Storage


KEYS = itertools.count()


class Local:
    """The local writer: straight into storage's group commit (no hints bound, no watchers)."""

    max_hints = 1000

    def __init__(self, storage: Storage, loop: asyncio.AbstractEventLoop) -> None:
        self.storage = storage
        self.loop = loop

    def stage_local(self, key: bytes, obj: VersionedObject, blob: bytes, done: object,
                    hint_for: str | None = None) -> None:
        self.storage.stage(key, 0, obj, blob, done, self.loop, hint_for)  # type: ignore[arg-type]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[TypedStore, asyncio.AbstractEventLoop]]:
    loop = asyncio.new_event_loop()
    storage = Storage(tmp_path / "db.sqlite", synchronous="normal")
    yield TypedStore(storage, Local(storage, loop), storage.limits), loop
    storage.close()
    loop.close()


def commit(typed: TypedStore, loop: asyncio.AbstractEventLoop, key: bytes, state: State) -> None:
    errors: list[StorageError | None] = []
    typed.join(key, state, errors.append)
    loop.run_until_complete(asyncio.sleep(0))
    assert errors == [None]


def same(a: State | None, b: State) -> bool:
    assert a is not None
    return crdt.encode_state(State(a.kind, a.ctx, a.store)) == crdt.encode_state(State(b.kind, b.ctx, b.store))


def test_a_delta_touches_only_its_element(store: tuple[TypedStore, asyncio.AbstractEventLoop]) -> None:
    """An add to a set of 2,000 elements writes one row; size and digest follow."""
    typed, loop = store
    state = bottom(SET)
    big = apply_op(state, ["add", [b"e%d" % i for i in range(2000)]], "a", 0)
    commit(typed, loop, b"k", big)
    state = join(state, big)
    before = typed.rows_written
    local = typed.read(b"k", SET, [b"new"])
    assert local is not None
    delta = apply_op(local, ["add", [b"new"]], "a", 0)
    commit(typed, loop, b"k", delta)
    state = join(state, delta)
    assert typed.rows_written - before == 1
    header = typed.header(b"k")
    assert header is not None
    ctx, count, _ = set_rows.decode_header(header)
    assert count == 2001
    assert header == set_rows.header_of(state)  # the incremental digest equals the recomputed one
    assert same(typed.read(b"k", SET), state)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_stored_joins_equal_the_pure_join(store: tuple[TypedStore, asyncio.AbstractEventLoop],
                                          data: st.DataObject) -> None:
    """Deltas and whole states joined into storage, in any order and duplicated, give what
    the pure join gives (sets as rows, counters whole)."""
    typed, loop = store
    key = b"k%d" % next(KEYS)  # one database for all examples: a fresh key each
    kind = data.draw(st.sampled_from([SET, COUNTER]))
    replicas = {a: bottom(kind) for a in "ab"}
    states: list[State] = []
    for _ in range(data.draw(st.integers(1, 10))):
        actor = data.draw(st.sampled_from("ab"))
        if kind == SET:
            op = data.draw(st.sampled_from([["add", [b"x"]], ["add", [b"y", b"z"]], ["rem", [b"x"]], ["rem", [b"y"]],
                                            ["clear"]]))
        else:
            op = ["incr", data.draw(st.integers(-3, 3))]
        delta = apply_op(replicas[actor], op, actor, 0)
        replicas[actor] = join(replicas[actor], delta)
        states.append(delta)
        if data.draw(st.booleans()):
            states.append(replicas[actor])  # a whole state (anti-entropy, handoff)
    expected = bottom(kind)
    for s in states:
        expected = join(expected, s)
    for s in data.draw(st.permutations(states + states[:2])):
        commit(typed, loop, key, s)
    assert same(typed.read(key, kind), expected)
    if kind == SET:
        assert typed.header(key) == set_rows.header_of(expected)


def test_rows_go_with_the_header(store: tuple[TypedStore, asyncio.AbstractEventLoop]) -> None:
    """Deleting the key's row (handoff drop, partition drop) deletes its element rows too,
    and whole reads assemble header and rows into one state."""
    typed, loop = store
    delta = apply_op(bottom(SET), ["add", [b"a", b"b"]], "a", 0)
    commit(typed, loop, b"k", delta)
    blob = typed.storage.get_blob(b"k")
    assert blob is not None and crdt.decode_state(blob).store.keys() == {b"a", b"b"}
    with typed.storage.conn:
        typed.storage.conn.execute("DELETE FROM objects WHERE key = ?", (b"k",))
    assert typed.storage.dt_rows(b"k") == {}
    assert typed.read(b"k", SET) is None


def test_a_hint_delivered_while_a_join_is_staged_keeps_the_copy(
        store: tuple[TypedStore, asyncio.AbstractEventLoop]) -> None:
    """A fallback hands a set over while another delta for it is staged: dropping the copy
    then would commit the staged header (its context covering the handed-off elements)
    without their rows - a state that removes them wherever it is joined (found by the
    crdt fault scenario, seed 10). The copy stays; the next handoff carries both."""
    typed, loop = store
    storage = typed.storage
    first = apply_op(bottom(SET), ["add", [b"a", b"b"]], "p", 0)
    errors: list[StorageError | None] = []
    typed.join(b"k", first, errors.append, hint_for="primary")
    loop.run_until_complete(asyncio.sleep(0))
    [(key, seq)] = storage.hint_batch("primary", 10)
    sent = storage.get_blob(b"k")
    assert sent is not None
    second = apply_op(join(bottom(SET), first), ["add", [b"c"]], "p", 0)
    typed.join(b"k", second, errors.append, hint_for="primary")  # staged, not committed yet
    storage.hint_delivered("primary", key, seq, sent, drop_copy=True)
    loop.run_until_complete(asyncio.sleep(0))
    assert errors == [None, None]
    assert same(typed.read(b"k", SET), join(first, second))
    assert set(crdt.decode_state(storage.get_blob(b"k") or b"").store) == {b"a", b"b", b"c"}


# --- expiry (ttl buckets) ------------------------------------------------------------------------


def test_an_expired_state_is_not_stored_where_the_key_is_not(
        store: tuple[TypedStore, asyncio.AbstractEventLoop]) -> None:
    """A reclaimed key does not come back: a hint, repair or transfer of an expired state
    into a node without the key is acknowledged and dropped (sets and other types)."""
    typed, loop = store
    typed.wall_ms = lambda: 1000
    for kind, op in ((COUNTER, ["incr", 1]), (SET, ["add", [b"x"]])):
        expired = apply_op(bottom(kind), op, "a", 0, None, 500)
        commit(typed, loop, b"gone-" + kind.encode(), expired)
        assert typed.storage.dt_raw(b"gone-" + kind.encode()) is None
        live = apply_op(bottom(kind), op, "a", 900, None, 500)
        commit(typed, loop, b"live-" + kind.encode(), live)
        assert typed.read(b"live-" + kind.encode(), kind) is not None


def test_a_stored_state_keeps_the_latest_expiry_and_its_leaf_reaps_it(
        store: tuple[TypedStore, asyncio.AbstractEventLoop]) -> None:
    """The header (a set's, or a state's) holds the max of the expiries joined; the
    Merkle leaf's expiry time is read from it, so reclamation finds the key."""
    from dynq.repair.trees import leaf_times_of_blob

    typed, loop = store
    typed.wall_ms = lambda: 0
    for kind, op in ((COUNTER, ["incr", 1]), (SET, ["add", [b"x"]])):
        key = b"exp-" + kind.encode()
        later = apply_op(bottom(kind), op, "b", 300, None, 500)
        commit(typed, loop, key, later)
        commit(typed, loop, key, apply_op(bottom(kind), op, "a", 100, None, 500))
        raw = typed.storage.dt_raw(key)
        assert raw is not None
        assert leaf_times_of_blob(raw) == (0, 800)
        state = typed.read(key, kind)
        assert state is not None and state.expires_ms == 800
    never = apply_op(bottom(COUNTER), ["incr", 1], "a", 0)
    commit(typed, loop, b"never", never)
    raw = typed.storage.dt_raw(b"never")
    assert raw is not None and leaf_times_of_blob(raw) == (0, 0)


def test_a_set_reset_removes_every_stored_row(store: tuple[TypedStore, asyncio.AbstractEventLoop]) -> None:
    """An add to an expired stored set (read whole, as the coordinator does) leaves only
    the new element, in the rows and the header's count."""
    typed, loop = store
    typed.wall_ms = lambda: 0
    commit(typed, loop, b"s", apply_op(bottom(SET), ["add", [b"e%d" % i for i in range(50)]], "a", 0, None, 100))
    typed.wall_ms = lambda: 1000
    local = typed.read(b"s", SET)
    assert local is not None and crdt.is_expired(local, 1000)
    commit(typed, loop, b"s", apply_op(local, ["add", [b"new"]], "a", 1000, None, 100))
    state = typed.read(b"s", SET)
    assert state is not None and set(state.store) == {b"new"} and state.expires_ms == 1100
    header = typed.header(b"s")
    assert header is not None and set_rows.decode_header(header)[1] == 1


def test_a_set_above_100000_elements_is_exchanged_whole_and_its_size_is_known(
        store: tuple[TypedStore, asyncio.AbstractEventLoop]) -> None:
    """150,000 elements: the whole state (what anti-entropy, hints and transfers ship)
    assembles and decodes (max_container_len, 100,000, once refused it), and the header's
    size - what a coordinator checks before an add - bounds the state's bytes closely."""
    typed, loop = store
    delta = apply_op(bottom(SET), ["add", [b"element-%d" % i for i in range(150_000)]], "n1.abcdef12", 0)
    commit(typed, loop, b"big", delta)
    whole = typed.storage.get_blob(b"big")
    assert whole is not None
    assert len(crdt.decode_state(whole).store) == 150_000
    state, size = typed.read_sized(b"big", SET, [b"element-7"])
    assert state is not None and set(state.store) == {b"element-7"}
    assert len(whole) <= size <= len(whole) * 1.2


def test_a_header_written_before_sizes_gets_its_size_at_the_next_join(
        store: tuple[TypedStore, asyncio.AbstractEventLoop]) -> None:
    """A header with the 16-byte digest only (no size): the next join counts the rows once
    and writes the header a fresh node would (size included)."""
    typed, loop = store
    state = join(bottom(SET), apply_op(bottom(SET), ["add", [b"x", b"y"]], "a", 0))
    commit(typed, loop, b"old", state)
    header = typed.header(b"old")
    assert header is not None
    data = unpackb(header)
    legacy = packb([data[0], data[1], data[2], data[3], data[4][:16]])
    assert set_rows.decode_header_full(legacy)[4] is None
    done: list[StorageError | None] = []
    typed.storage.stage(b"old", 0, VersionedObject({}, ()), legacy, done.append, loop)
    loop.run_until_complete(asyncio.sleep(0))
    assert done == [None] and typed.read_sized(b"old", SET, [b"x"])[1] > len(legacy)  # rows counted
    delta = apply_op(state, ["add", [b"z"]], "a", 0)
    commit(typed, loop, b"old", delta)
    assert typed.header(b"old") == set_rows.header_of(join(state, delta))
