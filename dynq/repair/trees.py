"""The node's Merkle trees: one per partition it is a primary of, kept current on every
commit, persisted with the objects, and verifiable against the data.

**Per (partition, n).** Buckets have their own replication factor, so the keys of one
partition are replicated by different nodes depending on their bucket's n. A tree covers
exactly the keys a set of primaries replicates: one tree per (partition, n) this node is
a primary of, as Riak's AAE did. Its id (:func:`dynq_client.buckets.tree_id`) is the
partition for the ring's own n (the default bucket and every bucket of the same n: the
trees of a database from before buckets keep their ids and leaves), and
``partition + q * n`` for other n; the ``partition`` columns below hold tree ids. Keys of
a bucket this node has not heard of yet get no leaf until verification finds them.

Persistence is one row per key, written in the *same transaction* as the object::

    ae_leaves(partition, segment, key, h, tomb_ms, exp_ms)   -- h = leaf_hash(key, object bytes)
    ae_partitions(partition, verified_ms, exchanged_ms, keys_repaired, build_ms)

so the leaves can never disagree with the objects after a crash, and a restart never
re-reads or re-hashes the objects: a partition's in-memory :class:`~dynq.repair.merkle.Tree`
is loaded lazily from its leaf rows (XOR per segment) the first time it is needed, and
from then on every commit XORs ``old ^ new`` into it. The old leaf hash comes from the
leaf row (a point read of a small row), never from the old object.

The leaf table also makes exchange cheap: the keys of one segment are an index range
scan (``PRIMARY KEY (partition, segment, key)``), and tombstones old enough to reap are
found through a partial index on ``tomb_ms``, objects whose every value has expired
through one on ``exp_ms`` (:meth:`VersionedObject.dead_since_ms`).

Only partitions this node is a *primary* of have leaves. A fallback's hinted copies
live in partitions it is not a primary of, so they never enter a tree, and roots of two
primaries compare exactly what they are responsible for; the copy is governed by its
hint (and dropped after handoff).

:meth:`PartitionTrees.verify` rebuilds a partition's leaves from the objects (periodic,
and on demand when a tree is missing or suspected wrong): it walks the objects in key
order in slices, compares each with its leaf row and fixes what differs, then walks the
leaf rows and drops those without an object. Each slice is one synchronous step, so
writes committed between slices keep leaves and objects consistent through the normal
path; the loop keeps serving in between.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, cast

import apsw
import msgpack

from dynq_client.buckets import EMPTY_BUCKETS, Buckets, tree_id, tree_split
from dynq_client.ring import key_hash
from dynq_client.versions import VersionedObject

from .merkle import FANOUT, HASH_BYTES, SEGMENTS, Tree, hash_bytes, hash_int, leaf_hash, segment_of

if TYPE_CHECKING:
    from dynq_client.ring import Ring

    from ..store.storage import Storage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ae_leaves (
    partition INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    key BLOB NOT NULL,
    h BLOB NOT NULL,
    tomb_ms INTEGER NOT NULL,
    exp_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (partition, segment, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ae_tombstones ON ae_leaves(partition, tomb_ms) WHERE tomb_ms > 0;
CREATE TABLE IF NOT EXISTS ae_partitions (
    partition INTEGER PRIMARY KEY,
    verified_ms INTEGER NOT NULL DEFAULT 0,
    exchanged_ms INTEGER NOT NULL DEFAULT 0,
    keys_repaired INTEGER NOT NULL DEFAULT 0,
    build_ms REAL NOT NULL DEFAULT 0
);
"""

_EXPIRY_SCHEMA = "CREATE INDEX IF NOT EXISTS ae_expired ON ae_leaves(partition, exp_ms) WHERE exp_ms > 0"
"""After the column exists (a database of an older version gains it by ALTER TABLE)."""

_OBJECTS_WITH_LEAVES = (
    "SELECT o.key, o.obj, o.seg, l.h FROM "
    "(SELECT key, obj, dynq_leaf_segment(key) AS seg FROM objects WHERE partition = ?2 AND key > ?3 "
    "ORDER BY key LIMIT ?4) o "
    "LEFT JOIN ae_leaves l ON l.partition = ?1 AND l.segment = o.seg AND l.key = o.key"
)
"""A slice of a partition's objects with their segments and current leaf hashes (NULL: no
leaf); the segment is computed once per object, in the subquery."""

_LEAF_SLICE_END = (
    "SELECT segment, key FROM ae_leaves WHERE partition = ? AND (segment, key) > (?, ?) "
    "ORDER BY segment, key LIMIT 1 OFFSET ?"
)
_ORPHAN_LEAVES = (
    "SELECT segment, key, h FROM ae_leaves l WHERE partition = ?1 AND (segment, key) > (?2, ?3) "
    "AND (segment, key) <= (?4, ?5) "
    "AND NOT EXISTS (SELECT 1 FROM objects o WHERE o.partition = ?6 AND o.key = l.key)"
)
"""The leaves of one slice (after a cursor, up to the slice's last leaf) without an object."""

_UPSERT_LEAF = (
    "INSERT INTO ae_leaves(partition, segment, key, h, tomb_ms, exp_ms) VALUES(?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(partition, segment, key) DO UPDATE SET h = excluded.h, tomb_ms = excluded.tomb_ms, "
    "exp_ms = excluded.exp_ms"
)

Staged = dict[bytes, tuple[int, VersionedObject, bytes]]


def tombstone_ms(obj: VersionedObject) -> int:
    """When a tombstone was written (its newest sibling's time), or 0 for a live object."""
    if not obj.is_tombstone:
        return 0
    return max(1, max(s.timestamp_ms for s in obj.siblings))


def tombstone_ms_of_blob(blob: bytes) -> int:
    """:func:`tombstone_ms` of a stored object, from its plain form without building it
    (0 for a live object, and for a row that does not decode: repair will merge over it)."""
    return leaf_times_of_blob(blob)[0]


def leaf_times(obj: VersionedObject) -> tuple[int, int]:
    """A leaf's reap times: (tombstone time, expiry time), see :meth:`VersionedObject.dead_since_ms`."""
    return tombstone_ms(obj), obj.dead_since_ms()


_TYPED = b"\x95\xa2d"  # dynq.store.storage.TYPED_PREFIX: a typed state or a set's header


def _typed_expiry(blob: bytes) -> int:
    """The expiry of a typed state or set header (its context's third item, see
    :func:`dynq_client.crdt.context_to_wire`); 0 (never reaped) for a key that does not
    expire. An expired typed key is reclaimed like an expired plain object."""
    try:
        header = msgpack.unpackb(blob)[2]
        return int(header[2]) if len(header) == 3 else 0
    except Exception:
        return 0


def leaf_times_of_blob(blob: bytes) -> tuple[int, int]:
    """:func:`leaf_times` of a stored object from its plain form (a sibling is
    ``[actor, counter, ts, value(, expires)]``); (0, 0) for a row that does not decode."""
    if blob[:3] == _TYPED:  # a data type's state or set header (dynq.kv.typed_store)
        return 0, _typed_expiry(blob)
    try:
        siblings = msgpack.unpackb(blob)[2]
        if len(siblings) == 1 and len(siblings[0]) == 4:  # the common case, one sibling that never expires
            only = siblings[0]
            return (max(1, int(only[2])), 0) if only[3] is None else (0, 0)
        if not siblings:
            return 0, 0
        if all(s[3] is None for s in siblings):
            return max(1, *(int(s[2]) for s in siblings)), 0
        if not any(len(s) == 5 for s in siblings) or any(s[3] is not None and len(s) == 4 for s in siblings):
            return 0, 0
        return 0, max(int(s[4]) if len(s) == 5 else int(s[2]) for s in siblings)
    except Exception:
        return 0, 0


@dataclass
class PartitionInfo:
    """What this node remembers about one partition's anti-entropy."""

    verified_ms: int = 0  # when the leaves were last verified against the objects (0: never)
    exchanged_ms: int = 0  # end of the last repair pass that reached every other primary
    keys_repaired: int = 0  # keys this node changed or sent while exchanging it (total)
    build_ms: float = 0.0  # duration of the last verification (tree build from the data)
    load_ms: float = 0.0  # duration of the last load of the tree from its leaf rows


class PartitionTrees:
    """Leaves and trees of the partitions this node is a primary of."""

    def __init__(self, storage: Storage, name: str, ring: Callable[[], Ring],
                 segments: int = SEGMENTS, fanout: int = FANOUT, wall_ms: Callable[[], int] | None = None,
                 buckets: Callable[[], Buckets] = lambda: EMPTY_BUCKETS) -> None:
        self.storage = storage
        self._now_ms = wall_ms or _now_ms  # the wall clock (the environment's)
        self.conn: apsw.Connection = storage.conn
        self.name = name
        self._ring = ring  # the node's current ring (it may change while we run)
        self._buckets = buckets  # the cluster's buckets (their n decides a key's tree)
        self._buckets_seen: Buckets | None = None  # buckets for which _tracked was computed
        self._ns_seen: set[int] = set()  # the n values those buckets use (and the ring's)
        self.segments, self.fanout = segments, fanout
        self.conn.execute(_SCHEMA)
        if not any(col[1] == "exp_ms" for col in self.conn.execute("PRAGMA table_info(ae_leaves)")):
            self.conn.execute("ALTER TABLE ae_leaves ADD COLUMN exp_ms INTEGER NOT NULL DEFAULT 0")
        self.conn.execute(_EXPIRY_SCHEMA)
        self.trees: dict[int, Tree] = {}  # partition -> loaded tree (lazily)
        self.loading: dict[int, tuple[Tree, tuple[int, bytes]]] = {}  # partition -> (partial tree, rows read up to)
        self.info: dict[int, PartitionInfo] = {}  # partition -> persisted bookkeeping
        for p, verified, exchanged, repaired, build in self.conn.execute(
            "SELECT partition, verified_ms, exchanged_ms, keys_repaired, build_ms FROM ae_partitions"
        ):
            self.info[int(p)] = PartitionInfo(int(verified), int(exchanged), int(repaired), float(build))
        self._ring_seen: Ring | None = None  # ring for which _tracked was computed
        self._tracked: set[int] = set()  # tree ids (partition, n) this node is a primary of
        self._partition_bits = 0
        self.verifying: set[int] = set()  # partitions being verified now
        self.fixed_by_verify = 0  # leaf rows verification had to correct (total)
        self.expired_reclaimed = 0  # reaped objects whose values had all expired (since start)
        epoch = storage.get_meta("reap_epoch")
        self.reap_epoch = int(epoch) if epoch else 0  # reap rounds that deleted something, ever
        if storage.is_empty():  # a new (or emptied) database: nothing to verify
            now = self._now_ms()
            with self.conn:  # one commit, not one per partition
                for p in self.tracked_partitions():
                    self.info.setdefault(p, PartitionInfo()).verified_ms = now
                    self._save(p)
        self._refresh()  # the n values in use now: only those that appear later start verified
        storage.observer = self.observe

    # --- which partitions --------------------------------------------------------------

    def _refresh(self) -> set[int]:
        ring = self._ring()
        buckets = self._buckets()
        if ring is not self._ring_seen or buckets is not self._buckets_seen:
            self._ring_seen, self._buckets_seen = ring, buckets
            q = ring.q
            ns = buckets.ns(ring.n)
            # An n no bucket used before (a bucket just created) has no keys yet: its trees
            # start verified (empty) instead of waiting for a rebuild on every primary.
            new_ns = set(ns) - self._ns_seen if self._ns_seen else set()
            self._ns_seen = set(ns)
            self._tracked = {tree_id(q, ring.n, p, n) for n in ns for p in range(q)
                             if self.name in ring.preference_list(p, n).primaries}
            if new_ns:
                now = _now_ms()
                for tid in sorted(self._tracked):
                    if tid not in self.info and tree_split(q, ring.n, tid)[1] in new_ns:
                        self.info[tid] = PartitionInfo(verified_ms=now)
                        self._save(tid)
            self._partition_bits = q.bit_length() - 1
            for p in list(self.trees):
                if p not in self._tracked:
                    del self.trees[p]
            for p, info in self.info.items():  # leaves of a partition we left go stale: verify again
                if p not in self._tracked:
                    info.verified_ms = 0
        return self._tracked

    def tracked_partitions(self) -> list[int]:
        """The tree ids this node keeps, ascending (the ring's n first: ids below q)."""
        return sorted(self._refresh())

    def is_tracked(self, partition: int) -> bool:
        return partition in self._refresh()

    def split(self, tid: int) -> tuple[int, int]:
        """(partition, n) of a tree id."""
        ring = self._ring()
        return tree_split(ring.q, ring.n, tid)

    def primaries(self, tid: int) -> tuple[str, ...]:
        """The nodes that keep tree ``tid``: the primaries of its partition for its n."""
        partition, n = self.split(tid)
        return self._ring().preference_list(partition, n).primaries

    def tree_of(self, key: bytes, partition: int) -> int | None:
        """The tree id of a key of ``partition`` (None: a bucket not known here yet)."""
        ring = self._ring()
        n = self._buckets().n_of(key, ring.n)
        return None if n is None else tree_id(ring.q, ring.n, partition, n)

    def segment(self, key: bytes) -> int:
        self._refresh()
        return segment_of(key_hash(key), self._partition_bits, self.segments)

    def verified(self, partition: int) -> bool:
        info = self.info.get(partition)
        return info is not None and info.verified_ms > 0

    # --- the commit hook (inside Storage.flush's transaction) ----------------------------

    def observe(self, conn: apsw.Connection, staged: Staged) -> Callable[[], None] | None:
        """Write the leaf rows of the staged objects; return what to apply to the in-memory
        trees once the transaction has committed (nothing if it rolls back)."""
        tracked = self._refresh()
        rows: list[tuple[int, int, bytes, bytes, int, int]] = []
        deltas: list[tuple[int, int, bytes, int]] = []
        bits, segments = self._partition_bits, self.segments
        buckets = self._buckets_seen
        if buckets:  # some keys may belong to trees of another n
            mine = [(tid, segment_of(key_hash(key), bits, segments), key, obj, blob)
                    for key, (partition, obj, blob) in staged.items()
                    if (tid := self.tree_of(key, partition)) is not None and tid in tracked]
        else:  # no buckets: every tree id is its partition (the old, cheapest path)
            mine = [(partition, segment_of(key_hash(key), bits, segments), key, obj, blob)
                    for key, (partition, obj, blob) in staged.items() if partition in tracked]
        if not mine:
            return None
        # The old leaf hashes, in one statement for the whole commit.
        old = {bytes(k): bytes(h) for k, h in conn.executemany(
            "SELECT key, h FROM ae_leaves WHERE partition = ? AND segment = ? AND key = ?",
            [(partition, seg, key) for partition, seg, key, _, _ in mine])}
        for partition, seg, key, obj, blob in mine:
            new = leaf_hash(key, blob)
            before = old.get(key)
            delta = new ^ (hash_int(before) if before is not None else 0)
            if not delta:
                continue
            times = (0, _typed_expiry(blob)) if blob[:3] == _TYPED else leaf_times(obj)  # typed: obj is EMPTY
            rows.append((partition, seg, key, hash_bytes(new), *times))
            deltas.append((partition, seg, key, delta))
        if not rows:
            return None
        conn.executemany(_UPSERT_LEAF, rows)
        return lambda: self._apply(deltas)

    def _apply(self, deltas: list[tuple[int, int, bytes, int]]) -> None:
        """Committed leaf changes (partition, segment, key, old ^ new) into loaded trees, and
        into a tree being loaded if its loader has already read past that row (rows after
        its cursor will be read with the new value)."""
        trees, loading = self.trees, self.loading
        for partition, seg, key, delta in deltas:
            tree = trees.get(partition)
            if tree is not None:
                tree.update(seg, delta)
            elif partition in loading:
                partial, cursor = loading[partition]
                if (seg, key) <= cursor:
                    partial.update(seg, delta)
            # else: not loaded; its leaf rows already say it all

    # --- reading -----------------------------------------------------------------------

    async def load(self, partition: int, slice_rows: int = 500) -> Tree:
        """The partition's tree; loaded from its leaf rows in slices on first use, so a
        big partition never blocks the loop for long (writes meanwhile: see _apply)."""
        tree = self.trees.get(partition)
        if tree is not None:
            return tree
        while partition in self.loading:  # someone else is loading it: wait for them
            await asyncio.sleep(0.005)
            if partition in self.trees:
                return self.trees[partition]
        start = time.perf_counter()
        partial = Tree.empty(self.segments, self.fanout)
        cursor: tuple[int, bytes] = (-1, b"")
        self.loading[partition] = (partial, cursor)
        try:
            while True:
                rows = list(self.conn.execute(
                    "SELECT segment, key, h FROM ae_leaves WHERE partition = ? AND (segment, key) > (?, ?) "
                    "ORDER BY segment, key LIMIT ?", (partition, cursor[0], cursor[1], slice_rows)))
                for seg, _key, h in rows:
                    partial.update(seg, hash_int(h))
                if rows:
                    cursor = (int(rows[-1][0]), bytes(rows[-1][1]))
                    self.loading[partition] = (partial, cursor)
                if len(rows) < slice_rows:
                    break
                await asyncio.sleep(0)
                if partition in self.trees:  # loaded synchronously meanwhile
                    return self.trees[partition]
        finally:
            self.loading.pop(partition, None)
        if self.is_tracked(partition):
            self.trees[partition] = partial
        self.info.setdefault(partition, PartitionInfo()).load_ms = (time.perf_counter() - start) * 1000
        return partial

    def tree(self, partition: int) -> Tree:
        """The partition's tree, loaded from its leaf rows in one step if needed (admin,
        tests; the exchange uses :meth:`load`)."""
        tree = self.trees.get(partition)
        if tree is None:
            start = time.perf_counter()
            tree = Tree.empty(self.segments, self.fanout)
            for seg, h in self.conn.execute(
                "SELECT segment, h FROM ae_leaves WHERE partition = ?", (partition,)
            ):
                tree.update(seg, hash_int(h))
            if self.is_tracked(partition):
                self.trees[partition] = tree
            self.info.setdefault(partition, PartitionInfo()).load_ms = (time.perf_counter() - start) * 1000
        return tree

    def segment_keys(self, partition: int, segments: list[int]) -> dict[int, list[tuple[bytes, bytes]]]:
        out: dict[int, list[tuple[bytes, bytes]]] = {}
        for seg in segments:
            out[seg] = [(bytes(k), bytes(h)) for k, h in self.conn.execute(
                "SELECT key, h FROM ae_leaves WHERE partition = ? AND segment = ? ORDER BY key", (partition, seg))]
        return out

    def leaf(self, partition: int, key: bytes) -> bytes | None:
        for (h,) in self.conn.execute(
            "SELECT h FROM ae_leaves WHERE partition = ? AND segment = ? AND key = ?",
            (partition, self.segment(key), key),
        ):
            return bytes(h)
        return None

    def leaf_count(self, partition: int) -> int:
        for (n,) in self.conn.execute("SELECT count(*) FROM ae_leaves WHERE partition = ?", (partition,)):
            return int(n)
        return 0

    def reap_candidates(self, partition: int, older_than_ms: int, limit: int) -> list[tuple[bytes, bytes]]:
        """Tombstones written before ``older_than_ms``: (key, leaf hash)."""
        return [(bytes(k), bytes(h)) for k, h in self.conn.execute(
            "SELECT key, h FROM ae_leaves WHERE partition = ? AND tomb_ms > 0 AND tomb_ms < ? LIMIT ?",
            (partition, older_than_ms, limit))]

    def expired_candidates(self, partition: int, before_ms: int, limit: int) -> list[tuple[bytes, bytes]]:
        """Objects whose every sibling had expired (or was a delete) before ``before_ms``:
        (key, leaf hash)."""
        return [(bytes(k), bytes(h)) for k, h in self.conn.execute(
            "SELECT key, h FROM ae_leaves WHERE partition = ? AND exp_ms > 0 AND exp_ms < ? LIMIT ?",
            (partition, before_ms, limit))]

    def has_expired(self, partition: int, before_ms: int) -> bool:
        """Whether :meth:`expired_candidates` would find any (one index probe)."""
        for _ in self.conn.execute(
                "SELECT 1 FROM ae_leaves WHERE partition = ? AND exp_ms > 0 AND exp_ms < ? LIMIT 1",
                (partition, before_ms)):
            return True
        return False

    # --- changes outside the write path --------------------------------------------------

    def _drop(self, orphans: list[tuple[int, int, bytes, int]]) -> None:
        """Delete leaf rows (partition, segment, key, hash) in one transaction, then take
        them out of the loaded trees."""
        with self.storage.derived_transaction():
            self.conn.executemany("DELETE FROM ae_leaves WHERE partition = ? AND segment = ? AND key = ?",
                                  [(partition, seg, key) for partition, seg, key, _ in orphans])
        self._apply(orphans)

    async def verify(self, partition: int, slice_rows: int = 500) -> int:
        """Rebuild the partition's leaves from its objects, in slices; returns how many leaf
        rows were wrong (missing, different, or without an object).

        Each slice is one statement that reads the objects with their current leaves (the
        leaf's segment computed inside SQLite by ``dynq_leaf_segment``) and one that finds
        the leaves without an object: the lookups run in SQLite, and Python only hashes."""
        if partition in self.verifying:  # someone else is at it: wait for them
            while partition in self.verifying:
                await asyncio.sleep(0.01)
            return 0
        self.verifying.add(partition)
        start = time.perf_counter()
        fixed = 0
        home, _n = self.split(partition)  # the objects' partition (the tree id may be of another n)
        self._refresh()
        self._register_segment_function()
        check_tree = bool(self._buckets_seen)  # with buckets, a partition's objects span trees
        # Leaf rows are only ever written in the transaction that writes their object, and
        # deleted with it: a tree that had no leaves when this began can gain no orphan.
        had_leaves = self.conn.execute("SELECT 1 FROM ae_leaves WHERE partition = ? LIMIT 1",
                                       (partition,)).fetchone() is not None
        try:
            cursor = b""
            while True:  # 1. every object has the right leaf
                rows = cast(list[tuple[bytes, bytes, int, bytes | None]], self.conn.execute(
                    _OBJECTS_WITH_LEAVES, (partition, home, cursor, slice_rows)).fetchall())
                if not rows:
                    break
                cursor = max(r[0] for r in rows)
                if check_tree:
                    rows = [r for r in rows if self.tree_of(r[0], home) == partition]  # this tree's keys
                fixed += self._verify_objects(partition, rows)
                await asyncio.sleep(0)
            seg_cursor, key_cursor = -1, b""
            while had_leaves:  # 2. every leaf has an object
                bound = self.conn.execute(_LEAF_SLICE_END, (partition, seg_cursor, key_cursor,
                                                            slice_rows - 1)).fetchone()
                end = (1 << 62, b"") if bound is None else (int(bound[0]), bytes(bound[1]))
                orphans = [(partition, int(s), bytes(k), hash_int(h)) for s, k, h in self.conn.execute(
                    _ORPHAN_LEAVES, (partition, seg_cursor, key_cursor, end[0], end[1], home))]
                if orphans:
                    self._drop(orphans)
                    fixed += len(orphans)
                if bound is None:
                    break
                seg_cursor, key_cursor = end
                await asyncio.sleep(0)
        finally:
            self.verifying.discard(partition)
        info = self.info.setdefault(partition, PartitionInfo())
        info.verified_ms = self._now_ms()
        info.build_ms = (time.perf_counter() - start) * 1000
        self.fixed_by_verify += fixed
        self._save(partition)
        return fixed

    def _register_segment_function(self) -> None:
        """``dynq_leaf_segment(key)`` in SQL: :func:`segment_of` the key's ring hash (MD5,
        as :func:`key_hash`), inlined: a rebuild calls it once per object."""
        shift = 128 - self._partition_bits - (self.segments.bit_length() - 1)
        mask, md5, from_bytes = self.segments - 1, hashlib.md5, int.from_bytes

        def segment(*args: Any) -> int:  # apsw passes the key column's bytes
            key = args[0]
            return (from_bytes(md5(key, usedforsecurity=False).digest(), "big") >> shift) & mask

        self.conn.create_scalar_function("dynq_leaf_segment", segment, 1, deterministic=True)

    def _verify_objects(self, partition: int, rows: list[tuple[bytes, bytes, int, bytes | None]]) -> int:
        """Correct the leaves of one slice of (key, object, segment, its leaf hash or None)
        rows. Tombstones and expiries are recognised from the undecoded plain form (the
        stored objects were validated when written): a rebuild is mostly hashing."""
        upserts: list[tuple[int, int, bytes, bytes, int, int]] = []
        deltas: list[tuple[int, int, bytes, int]] = []
        blake2b, from_bytes = hashlib.blake2b, int.from_bytes  # the new leaf is merkle.leaf_hash_bytes, inlined
        for key, blob, seg, old in rows:
            new = blake2b(len(key).to_bytes(4, "big") + key + blob, digest_size=HASH_BYTES).digest()
            if new == old:
                continue
            upserts.append((partition, seg, key, new, *leaf_times_of_blob(blob)))
            deltas.append((partition, seg, key, (0 if old is None else from_bytes(old, "big")) ^ from_bytes(new, "big")))
        if upserts:
            upserts.sort()  # in primary-key order: appends to the leaf b-tree, not random inserts
            with self.storage.derived_transaction():
                self.conn.executemany(_UPSERT_LEAF, upserts)
            self._apply(deltas)
        return len(upserts)

    def delete_if_unchanged(self, partition: int, items: list[tuple[bytes, bytes]]) -> list[bytes]:
        """Reap: delete each key whose leaf hash is still the given one (compare-and-delete,
        one transaction). Call with nothing staged (the caller flushes first)."""
        deleted: list[bytes] = []
        fixes: list[tuple[int, int, bytes, int]] = []
        expired = 0  # of them, objects whose values had all expired (the rest: tombstones)
        epoch = self.reap_epoch + 1
        with self.conn:
            # Reap rounds, counted (stats). Reaped keys are also recorded as forgotten, in
            # the same transaction: their next write is minted by a fresh actor
            # (Node.actor_for), even after a crash.
            self.conn.execute("INSERT INTO meta(name, value) VALUES('reap_epoch', ?) "
                              "ON CONFLICT(name) DO UPDATE SET value = excluded.value", (str(epoch).encode(),))
            for key, h in items:
                seg = self.segment(key)
                gone = list(self.conn.execute(
                    "DELETE FROM ae_leaves WHERE partition = ? AND segment = ? AND key = ? AND h = ? "
                    "RETURNING exp_ms", (partition, seg, key, h)))
                if gone:
                    if gone[0][0]:
                        expired += 1
                    self.conn.execute("DELETE FROM objects WHERE key = ?", (key,))
                    self.storage.forget(key)
                    deleted.append(key)
                    fixes.append((partition, seg, key, hash_int(h)))
        if deleted:
            self.reap_epoch = epoch
            self.expired_reclaimed += expired
        self._apply(fixes)
        return deleted

    def record(self, partition: int, *, exchanged: bool, keys_repaired: int) -> None:
        info = self.info.setdefault(partition, PartitionInfo())
        if exchanged:
            info.exchanged_ms = self._now_ms()
        info.keys_repaired += keys_repaired
        self._save(partition)

    def _save(self, partition: int) -> None:
        info = self.info[partition]
        with self.conn:
            self.conn.execute(
                "INSERT INTO ae_partitions(partition, verified_ms, exchanged_ms, keys_repaired, build_ms) "
                "VALUES(?, ?, ?, ?, ?) ON CONFLICT(partition) DO UPDATE SET verified_ms = excluded.verified_ms, "
                "exchanged_ms = excluded.exchanged_ms, keys_repaired = excluded.keys_repaired, "
                "build_ms = excluded.build_ms",
                (partition, info.verified_ms, info.exchanged_ms, info.keys_repaired, info.build_ms))


def _now_ms() -> int:
    return int(time.time() * 1000)
