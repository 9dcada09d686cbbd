"""This node's copy of typed keys: reads of (parts of) their states and joins into them.

Every write of a typed key here - the coordinator's own delta, a replica's delta, a hint
replayed, a read repair, an anti-entropy repair, a partition transfer - is one
:meth:`TypedStore.join`: the type's join of what arrived with what is stored, staged
through the node's usual group commit (hint bound, transfer watchers, Merkle leaves).

Counters, registers, flags and maps are small and stored whole, as one state blob in
``objects``. A set is stored as a header plus a row per element (see
:mod:`dynq.store.set_rows`), and a delta touches only the rows of the elements it names
(its ``touched``: every dot in its context belongs to one of them), so an add to a set of
100,000 elements reads and writes one row and the header. A whole state (touched is
None) is joined against every row: that is anti-entropy, hints and transfers, which ship
the whole set anyway.

A key of a bucket with a ttl carries its expiry in the state's header (joined by max). A
node that does not hold a key drops an incoming state of it that has already expired
(a hint, read repair, anti-entropy or transfer of a key reclaimed here): it would read
empty anyway, and storing it would bring a reclaimed key back.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Iterable, Protocol

from dynq_client import crdt
from dynq_client.crdt import SET, State
from dynq_client.errors import StorageError, WrongDataType
from dynq_client.protocol import Limits
from dynq_client.versions import EMPTY, VersionedObject

from ..env import SYSTEM
from ..server.ports import CommitCallback
from ..store import set_rows
from ..store.storage import SET_HEADER_PREFIX, TYPED_PREFIX, Storage


class Local(Protocol):
    """This node's local writer (:class:`dynq.kv.local.LocalReplica`, which owns the store)."""

    max_hints: int

    def stage_local(self, key: bytes, obj: VersionedObject, blob: bytes, done: CommitCallback,
                    hint_for: str | None = None) -> None: ...


def is_typed(blob: bytes | None) -> bool:
    """True for a typed key's stored or exchanged form (not a plain versioned object)."""
    return blob is not None and blob[:3] == TYPED_PREFIX


def typed_live(blob: bytes, now_ms: int = 0) -> bool:
    """Whether a typed key's stored form holds anything at ``now_ms`` (a cleared or an
    expired key is not listed)."""
    if blob[:4] == SET_HEADER_PREFIX:
        _, count, _, expires, _ = set_rows.decode_header_full(blob)
        return count > 0 and not 0 < expires <= now_ms
    state = crdt.decode_state(blob)
    return not crdt.is_bottom(state.store) and not crdt.is_expired(state, now_ms)



class TypedStore:
    """Typed states in this node's storage (call from the loop only)."""

    def __init__(self, storage: Storage, local: Local, limits: Limits,
                 wall_ms: Callable[[], int] = SYSTEM.wall_ms) -> None:
        self.storage = storage
        self.wall_ms = wall_ms  # expiry of keys in ttl buckets (the environment's clock)
        self.local = local
        self.limits = limits
        self.rows_written = 0  # set element rows staged by joins (the benchmark's "touches little")

    # --- reads -----------------------------------------------------------------------------------

    def read(self, key: bytes, kind: str, elems: Iterable[bytes] | None = None, *,
             staged: bool = True) -> State | None:
        """The state of ``key`` (None if never written here). For a set, only the rows of
        ``elems`` (all rows when None) beside the whole context: enough to apply an op to
        those elements, or to answer whether they are members."""
        return self.read_sized(key, kind, elems, staged=staged)[0]

    def read_sized(self, key: bytes, kind: str, elems: Iterable[bytes] | None = None, *,
                   staged: bool = True) -> tuple[State | None, int]:
        """:meth:`read`, and about how many bytes the whole state takes as replicas exchange
        it (a set: from its header, without reading its other rows; 0 if never written)."""
        raw = self.storage.dt_raw(key, staged=staged)
        if raw is None:
            return None, 0
        if raw[:4] == SET_HEADER_PREFIX:
            ctx, _, _, expires, size = set_rows.decode_header_full(raw, self.limits)
            if elems is None:
                rows = self.storage.dt_rows(key, staged=staged)
            else:
                rows = {e: r for e in elems if (r := self.storage.dt_row(key, e, staged=staged)) is not None}
            store = {e: crdt.element_from_row(r) for e, r in rows.items()}
            state = State(SET, ctx, store, None if elems is None else frozenset(elems), expires)
            if size is None:  # a header from before sizes were kept: count the rows once
                whole = rows if elems is None else self.storage.dt_rows(key, staged=staged)
                size = sum(set_rows.row_size(e, r) for e, r in whole.items())
            size += len(raw)
        elif crdt.is_state_blob(raw):
            state, size = crdt.decode_state(raw, self.limits), len(raw)
        else:
            raise WrongDataType("the key holds a plain value, not a data type")
        if state.kind != kind:
            raise WrongDataType(f"the key holds a {state.kind}, not a {kind}")
        return state, size

    def header(self, key: bytes) -> bytes | None:
        """The committed header of a set (context, size, digest), or another type's state."""
        return self.storage.dt_raw(key, staged=False)

    # --- writes ----------------------------------------------------------------------------------

    def hint_store_full(self) -> bool:
        storage = self.storage
        return storage.hint_count + storage.staged_hint_count >= self.local.max_hints

    def join(self, key: bytes, incoming: State, done: CommitCallback, hint_for: str | None = None) -> None:
        """Join ``incoming`` (a delta or a whole state) into this node's copy; ``done``
        runs once the result is committed. Staged even when nothing changed, so the ack
        waits for any staged write of the key (as plain replica writes do)."""
        if incoming.kind != SET:
            mine = self.read(key, incoming.kind)
            if mine is None and crdt.is_expired(incoming, self.wall_ms()):
                self._drop(done)
                return
            merged = incoming if mine is None else crdt.join(mine, incoming)
            blob = crdt.encode_state(State(merged.kind, merged.ctx, merged.store, None, merged.expires_ms))
            self.local.stage_local(key, EMPTY, blob, done, hint_for)
            return
        if hint_for is not None and self.hint_store_full():
            self.local.stage_local(key, EMPTY, b"", done, hint_for)  # refused there, with its error
            return
        storage = self.storage
        raw = storage.dt_raw(key)
        if raw is None:
            if crdt.is_expired(incoming, self.wall_ms()):
                self._drop(done)
                return
            ctx, count, digest, expires, size = crdt.EMPTY_CONTEXT, 0, 0, 0, 0
        elif raw[:4] == SET_HEADER_PREFIX:
            ctx, count, digest, expires, known = set_rows.decode_header_full(raw, self.limits)
            size = known if known is not None else sum(  # a header from before sizes were kept
                set_rows.row_size(e, r) for e, r in storage.dt_rows(key).items())
        else:
            raise WrongDataType("the key does not hold a set")
        if incoming.touched is None:  # a whole state: every element of both sides (one scan of the rows)
            old_rows = storage.dt_rows(key)
            elems: Iterable[bytes] = old_rows.keys() | incoming.store.keys()
        else:
            elems = incoming.touched | incoming.store.keys()
            old_rows = {e: r for e in elems if (r := storage.dt_row(key, e)) is not None}
        changes: dict[bytes, bytes | None] = {}
        for elem in elems:
            old_row = old_rows.get(elem)
            old = crdt.element_from_row(old_row) if old_row is not None else frozenset()
            new = crdt.join_store(crdt.FLAG, old, ctx, incoming.store.get(elem, frozenset()), incoming.ctx)
            if new == old:
                continue
            new_row = crdt.element_row(new) if new else None
            if old_row is not None:
                digest ^= crdt.element_hash(elem, old_row)
                count -= 1
                size -= set_rows.row_size(elem, old_row)
            if new_row is not None:
                digest ^= crdt.element_hash(elem, new_row)
                count += 1
                size += set_rows.row_size(elem, new_row)
            changes[elem] = new_row
        header = set_rows.encode_header(ctx.join(incoming.ctx), count, digest, max(expires, incoming.expires_ms),
                                        size)
        storage.dt_stage_rows(key, changes)
        self.rows_written += len(changes)
        self.local.stage_local(key, EMPTY, header, done, hint_for)

    def _drop(self, done: CommitCallback) -> None:
        """Acknowledge an expired state this node will not store (after the caller returns,
        as a commit would be)."""
        try:
            asyncio.get_running_loop().call_soon(done, None)
        except RuntimeError:  # no loop (unit tests): at once
            done(None)

    def join_blob(self, key: bytes, blob: bytes, done: CommitCallback, hint_for: str | None = None) -> None:
        """:meth:`join` of an encoded state from a peer (validated; ProtocolError if bad)."""
        self.join(key, crdt.decode_state(blob, self.limits), done, hint_for)

    def exchange(self, key: bytes, theirs: bytes | None) -> tuple[asyncio.Future[StorageError | None] | None,
                                                                   bytes | None]:
        """Anti-entropy of one typed key: join their state into ours (a future of the
        commit, None when ours already covered theirs) and return what to push back to
        them (None when theirs already covered ours)."""
        loop = asyncio.get_running_loop()
        mine_blob = self.storage.get_blob(key)
        theirs_state = None if theirs is None else crdt.decode_state(theirs, self.limits)
        mine_state = None if mine_blob is None else crdt.decode_state(mine_blob, self.limits)
        if theirs_state is None:
            return None, mine_blob
        merged = theirs_state if mine_state is None else crdt.join(mine_state, theirs_state)
        merged_blob = crdt.encode_state(merged)
        committed: asyncio.Future[StorageError | None] | None = None
        if mine_blob is None or merged_blob != mine_blob:
            future: asyncio.Future[StorageError | None] = loop.create_future()

            def resolve(error: StorageError | None) -> None:
                if not future.done():
                    future.set_result(error)

            self.join(key, theirs_state, resolve)
            committed = future
        return committed, (merged_blob if merged_blob != crdt.encode_state(State(
            theirs_state.kind, theirs_state.ctx, theirs_state.store, None, theirs_state.expires_ms)) else None)
