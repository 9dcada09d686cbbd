"""Durable storage of versioned objects: one SQLite file per node, through apsw, in WAL mode.

Group commit: writes are *staged* while the event loop handles a burst of messages, and
one ``flush`` (scheduled with ``call_soon``, so it runs after the current burst) commits
them all in one transaction before any of them is acknowledged. A replica therefore
acknowledges only what is on disk, and a burst of N writes costs one commit, not N.

Reads of the committed state (:meth:`Storage.get_blob`) never see staged data, so a
reader is never shown a write that might still fail to commit. The merge base for a new
write (:meth:`Storage.current`) does include staged data, so two writes of one key in one
burst merge with each other instead of the second overwriting the first.

Tables::

    objects(key BLOB PRIMARY KEY, partition INTEGER, obj BLOB)   -- obj = encoded VersionedObject
    meta(name TEXT PRIMARY KEY, value BLOB)                        -- actor id, ring, ...
    hints(target TEXT, key BLOB, seq INTEGER)                      -- "key belongs on target"

A hint is written in the same transaction as the object it refers to (the fallback's own
copy in ``objects``), so a fallback never acknowledges a hinted write it could forget.
``seq`` changes whenever the key is hinted again; replay deletes a hint only if its seq
is still the one it delivered, so a write that arrives during replay is replayed too.

``objects`` is a rowid table on purpose: its rows hold whole values (often KiBs), and
SQLite's WITHOUT ROWID layout is for small rows; measured here, the rowid layout made a
single-row commit ~1.4x and a point read ~2x faster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from pathlib import Path
from typing import Callable, Iterator

import apsw

from . import set_rows
from .checkpointer import Checkpointer
from dynq_client.errors import StorageError
from dynq_client.protocol import DEFAULT_LIMITS, Limits
from dynq_client.versions import VersionedObject, decode_object

log = logging.getLogger(__name__)

_TYPED = VersionedObject({}, ())
"""What :meth:`Storage.current` says of a typed key: held, but no plain object."""

CommitCallback = Callable[[StorageError | None], None]

DOT_LEASE = 10_000

KEY_COUNT_EXACT_BELOW = 100_000
"""Below this many objects :meth:`Storage.count` counts them (a few ms at most); from it up,
the count is a tally refreshed one partition at a time by :meth:`Storage.count_step`: a
``count(*)`` of 10M rows holds the event loop for ~0.2 s, and stats (the CLI, the console
every few seconds, metrics) ask for it."""

DT_SCHEMA = """
CREATE TABLE IF NOT EXISTS dt_elements (
    key BLOB NOT NULL,
    elem BLOB NOT NULL,
    dots BLOB NOT NULL,
    PRIMARY KEY (key, elem)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS dt_elements_follow AFTER DELETE ON objects
BEGIN DELETE FROM dt_elements WHERE key = old.key; END;
"""
"""A set's elements, one row each, beside its header in ``objects`` (dynq.kv.typed_store);
the rows go wherever the header goes away (handed off, dropped)."""

SET_HEADER_PREFIX = b"\x95\xa2dh"  # msgpack of ["dh", ...]: a set's header, its elements in dt_elements
TYPED_PREFIX = b"\x95\xa2d"  # a typed state or a set's header: not a plain versioned object

_SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    key BLOB PRIMARY KEY,
    partition INTEGER NOT NULL,
    obj BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS objects_by_partition ON objects(partition, key);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS hints (
    target TEXT NOT NULL,
    key BLOB NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (target, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS hints_by_key ON hints(key);
CREATE TABLE IF NOT EXISTS forgotten (key BLOB PRIMARY KEY) WITHOUT ROWID;
""" + DT_SCHEMA


class Storage:
    """The node's object store with group commit. Single-threaded: call from the loop only."""

    def __init__(self, path: Path, *, synchronous: str = "full", limits: Limits = DEFAULT_LIMITS,
                 vfs: str | None = None, token_hex: Callable[[int], str] = secrets.token_hex,
                 count_exact_below: int = KEY_COUNT_EXACT_BELOW, mmap_bytes: int = 0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.limits = limits  # the node's limits: objects it accepted must always decode again
        self.vfs = vfs  # SQLite VFS of every connection to this file (None: the default)
        self._token_hex = token_hex  # randomness of the actor id (the environment's)
        self.conn = apsw.Connection(str(path), vfs=vfs) if vfs else apsw.Connection(str(path))
        self.conn.setbusytimeout(5000)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.synchronous = synchronous
        self.conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
        if mmap_bytes and vfs is None:  # (a VFS of ours has no xFetch: SQLite would read() anyway)
            self.conn.execute(f"PRAGMA mmap_size={int(mmap_bytes)}")
        self.conn.execute(_SCHEMA)
        self._staged: dict[bytes, tuple[int, VersionedObject, bytes]] = {}  # key -> (partition, obj, blob)
        self._staged_hints: set[tuple[str, bytes]] = set()  # (target, key) hints to write with them
        self._dt_rows: dict[bytes, dict[bytes, bytes | None]] = {}  # set key -> element -> dots (None: gone)
        self._hint_seq = self._max_hint_seq()  # last seq handed out
        self.hints_pending: dict[str, int] = self._count_hints()  # target -> hints stored for it
        self._callbacks: list[CommitCallback] = []  # waiting for the next commit
        self._flush_scheduled = False
        self.commits = 0  # transactions committed
        self.rows_committed = 0  # rows written by them
        self.commit_failures = 0
        self.forgotten_count = self._count("forgotten")  # upper bound of rows in 'forgotten'
        self._dot = 0  # last number handed out by next_dot
        self._dot_lease = 0  # numbers up to this are reserved in meta 'dot_lease'
        # Called inside each commit's transaction with what it writes (anti-entropy's leaves);
        # returns what to run once the commit succeeded.
        self.observer: Callable[[apsw.Connection, dict[bytes, tuple[int, VersionedObject, bytes]]],
                                Callable[[], None] | None] | None = None
        self.checkpointer: Checkpointer | None = None
        self.count_exact_below = count_exact_below
        self._tally: dict[int, int] | None = None  # partition -> objects, once the store is large
        self._tally_cursor = 0  # the partition count_step() counts next

    @contextlib.contextmanager
    def derived_transaction(self) -> Iterator[None]:
        """A transaction of rows derived from committed ones (a Merkle rebuild's leaves),
        committed without its own fsync. In WAL mode a crash keeps a prefix of the
        commits, so losing it loses only what came after the last synced commit: the
        derived rows are then rebuilt, never inconsistent; the next synced commit makes
        them durable. Not for anything a client was told about."""
        full = self.synchronous == "full"
        if full:
            self.conn.execute("PRAGMA synchronous=NORMAL")
        try:
            with self.conn:
                yield
        finally:
            if full:
                self.conn.execute("PRAGMA synchronous=FULL")

    def start_checkpointer(self, interval_ms: int, wal_limit_bytes: int, mode: str = "thread") -> None:
        """Move WAL checkpoints off the committing (event-loop) thread; see checkpointer.py.
        Without this (offline tools, ``interval_ms`` 0, ``mode`` "off") SQLite checkpoints
        inside commits; ``mode`` "task" runs the same passes as a task of the running loop
        (the simulation, which has no threads)."""
        if interval_ms <= 0 or mode == "off" or self.checkpointer is not None:
            return
        self.checkpointer = Checkpointer(self.path, interval_s=interval_ms / 1000, wal_limit_bytes=wal_limit_bytes,
                                         vfs=self.vfs)
        self.checkpointer.start(as_task=mode == "task")
        self.conn.execute(f"PRAGMA journal_size_limit={wal_limit_bytes}")
        # The safety net if the thread cannot keep the WAL bounded: SQLite's own, at 2x the limit.
        self.conn.wal_autocheckpoint(2 * self.checkpointer.limit_frames)

    def wal_bytes(self) -> int:
        try:
            return os.path.getsize(str(self.path) + "-wal")
        except OSError:
            return 0

    # --- identity and metadata -------------------------------------------------------

    def actor_id(self, node_name: str) -> str:
        """This database's actor id, minted once when the file is created.

        A node that loses its database gets a new one, so its new writes carry dots that
        no old clock can claim to have seen.
        """
        row = self.get_meta("actor")
        if row is not None:
            return row.decode()
        actor = f"{node_name}.{self._token_hex(4)}"
        self.set_meta("actor", actor.encode())
        return actor

    def next_dot(self) -> int:
        """A number bigger than every one this database handed out before (it names fresh
        actors, see Node.actor_for). Leased in blocks, so a restart skips ahead instead of
        writing the counter every time."""
        if self._dot >= self._dot_lease:
            stored = self.get_meta("dot_lease")
            base = max(self._dot, int(stored) if stored else 0)
            self._dot_lease = base + DOT_LEASE
            self.set_meta("dot_lease", str(self._dot_lease).encode())
            self._dot = base
        self._dot += 1
        return self._dot

    def get_meta(self, name: str) -> bytes | None:
        for (value,) in self.conn.execute("SELECT value FROM meta WHERE name = ?", (name,)):
            return bytes(value)
        return None

    def set_meta(self, name: str, value: bytes) -> None:
        """Raises :class:`StorageError` if the write cannot commit (disk full, I/O error)."""
        try:
            with self.conn:
                self.conn.execute(
                    "INSERT INTO meta(name, value) VALUES(?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                    (name, value),
                )
        except apsw.Error as exc:
            raise StorageError(f"cannot store {name!r}: {exc}") from exc

    # --- hints ------------------------------------------------------------------------

    def _count(self, table: str) -> int:
        for (n,) in self.conn.execute(f"SELECT count(*) FROM {table}"):
            return int(n)
        return 0

    def _max_hint_seq(self) -> int:
        for (seq,) in self.conn.execute("SELECT coalesce(max(seq), 0) FROM hints"):
            return int(seq)
        return 0

    def _count_hints(self) -> dict[str, int]:
        return {
            str(target): int(count)
            for target, count in self.conn.execute("SELECT target, count(*) FROM hints GROUP BY target")
        }

    @property
    def hint_count(self) -> int:
        return sum(self.hints_pending.values())

    @property
    def staged_hint_count(self) -> int:
        """Hints waiting for the next commit (count them against the bound too)."""
        return len(self._staged_hints)

    def hint_batch(self, target: str, limit: int) -> list[tuple[bytes, int]]:
        """Up to ``limit`` (key, seq) hints for ``target``, oldest first."""
        return [
            (bytes(key), int(seq))
            for key, seq in self.conn.execute(
                "SELECT key, seq FROM hints WHERE target = ? ORDER BY seq LIMIT ?", (target, limit)
            )
        ]

    def hints_for_key(self, key: bytes) -> list[str]:
        return [str(t) for (t,) in self.conn.execute("SELECT target FROM hints WHERE key = ?", (key,))]

    def hint_delivered(self, target: str, key: bytes, seq: int, blob: bytes, drop_copy: bool) -> bool:
        """Forget a hint once ``target`` acknowledged ``blob``; with ``drop_copy`` also drop
        this node's copy if nothing newer arrived and no other hint needs it. Returns True
        if the hint was removed (False: the key was hinted again meanwhile)."""
        if blob[:3] == TYPED_PREFIX:
            blob = self.dt_stored_form(blob)
        with self.conn:
            self.conn.execute("DELETE FROM hints WHERE target = ? AND key = ? AND seq = ?", (target, key, seq))
            removed = self.conn.changes() > 0
            # A copy with a write staged is not stale, and a set's staged header and rows
            # were computed on top of the committed rows: dropping those now would commit
            # a header claiming elements it no longer holds (as removed, wherever joined).
            if removed and drop_copy and key not in self._staged:
                self.conn.execute(
                    "DELETE FROM objects WHERE key = ? AND obj = ? "
                    "AND NOT EXISTS (SELECT 1 FROM hints WHERE key = ?)",
                    (key, blob, key),
                )
                if self.conn.changes():
                    self.forget(key)
        if removed:
            self.hints_pending[target] -= 1
            if not self.hints_pending[target]:
                del self.hints_pending[target]
        return removed

    # --- reads -----------------------------------------------------------------------

    def get_blob(self, key: bytes) -> bytes | None:
        """The committed encoded object for ``key``, or None."""
        for (blob,) in self.conn.execute("SELECT obj FROM objects WHERE key = ?", (key,)):
            if blob[:4] == SET_HEADER_PREFIX:  # a set: its header and its element rows, as one state
                return self.dt_assemble(key, bytes(blob))
            return bytes(blob)
        return None

    def current(self, key: bytes) -> VersionedObject | None:
        """The newest state of ``key`` including staged writes: the base for a merge."""
        staged = self._staged.get(key)
        if staged is not None:
            return staged[1]
        blob = self.dt_raw(key, staged=False)
        if blob is not None and blob[:3] == TYPED_PREFIX:  # typed keys join in dynq.kv.typed_store
            return _TYPED
        return None if blob is None else decode_object(blob, self.limits)

    def partition_count(self, partition: int) -> int:
        for (n,) in self.conn.execute("SELECT count(*) FROM objects WHERE partition = ?", (partition,)):
            return int(n)
        return 0

    def partition_chunk(self, partition: int, after: bytes, limit: int, max_bytes: int) -> list[tuple[bytes, bytes]]:
        """Committed (key, object) rows of ``partition`` with keys after ``after``, in key
        order: at most ``limit`` rows and about ``max_bytes`` (always at least one row)."""
        rows: list[tuple[bytes, bytes]] = []
        size = 0
        for key, blob in self.conn.execute(
            "SELECT key, obj FROM objects WHERE partition = ? AND key > ? ORDER BY key LIMIT ?",
            (partition, after, limit),
        ):
            if blob[:4] == SET_HEADER_PREFIX:
                blob = self.dt_assemble(bytes(key), bytes(blob))
            size += len(key) + len(blob)
            if rows and size > max_bytes:
                break
            rows.append((bytes(key), bytes(blob)))
        return rows

    def range_rows(self, partition: int, lo: bytes, hi: bytes | None, after: bytes | None,
                   limit: int) -> list[tuple[bytes, bytes]]:
        """Committed (key, object) rows of ``partition`` with ``lo <= key < hi`` (no upper
        bound for None) and ``key > after``, in key order, at most ``limit``: one bucket's
        rows, read through the (partition, key) index, so the cost follows that bucket's
        keys, not the partition's."""
        start = lo if after is None or after < lo else after
        op = ">" if after is not None and after >= lo else ">="
        if hi is None:
            sql = f"SELECT key, obj FROM objects WHERE partition = ? AND key {op} ? ORDER BY key LIMIT ?"
            args: tuple[object, ...] = (partition, start, limit)
        else:
            sql = (f"SELECT key, obj FROM objects WHERE partition = ? AND key {op} ? AND key < ? "
                   "ORDER BY key LIMIT ?")
            args = (partition, start, hi, limit)
        return [(bytes(k), bytes(v)) for k, v in self.conn.execute(sql, args)]

    def drop_partition_rows(self, partition: int, limit: int) -> int:
        """Delete up to ``limit`` objects of a partition this node handed off; keys with
        hints stay (they are a fallback's copies, governed by their hints)."""
        with self.conn:
            keys = [bytes(k) for (k,) in self.conn.execute(
                "SELECT o.key FROM objects o WHERE o.partition = ? "
                "AND NOT EXISTS (SELECT 1 FROM hints h WHERE h.key = o.key) LIMIT ?", (partition, limit))]
            keys = [key for key in keys if key not in self._staged]  # see hint_delivered
            for key in keys:
                self.conn.execute("DELETE FROM objects WHERE key = ?", (key,))
                self.forget(key)
        return len(keys)

    def drop_rows_where(self, partition: int, after: bytes, limit: int,
                        drop: Callable[[bytes], bool]) -> tuple[int, bytes | None]:
        """Scan up to ``limit`` objects of ``partition`` after key ``after`` and delete
        those ``drop`` selects (never keys with hints: a fallback's copies). Returns how
        many were deleted and the last key scanned (None: the partition is done). Used
        when only some of a partition's keys moved away (buckets of another n)."""
        with self.conn:
            rows = [bytes(k) for (k,) in self.conn.execute(
                "SELECT o.key FROM objects o WHERE o.partition = ? AND o.key > ? "
                "AND NOT EXISTS (SELECT 1 FROM hints h WHERE h.key = o.key) ORDER BY o.key LIMIT ?",
                (partition, after, limit))]
            dropped = 0
            for key in rows:
                if key not in self._staged and drop(key):  # see hint_delivered
                    self.conn.execute("DELETE FROM objects WHERE key = ?", (key,))
                    self.forget(key)
                    dropped += 1
        return dropped, (rows[-1] if len(rows) == limit else None)

    # --- keys whose copy this node dropped -------------------------------------------------

    def forget(self, key: bytes) -> None:
        """Record (inside the caller's transaction) that this node dropped its copy of
        ``key`` while other nodes may still hold it: its next write here must not be minted
        by an actor whose earlier dots of this key it can no longer see."""
        self.conn.execute("INSERT OR IGNORE INTO forgotten(key) VALUES(?)", (key,))
        self.forgotten_count += 1

    def is_forgotten(self, key: bytes) -> bool:
        if not self.forgotten_count:  # the common case costs no query
            return False
        return any(True for _ in self.conn.execute("SELECT 1 FROM forgotten WHERE key = ?", (key,)))

    def remember(self, key: bytes) -> None:
        """The key was written here again, under a fresh actor: forget that we forgot."""
        with self.conn:
            self.conn.execute("DELETE FROM forgotten WHERE key = ?", (key,))

    def count(self) -> int:
        """Objects stored: exact below ``count_exact_below``; from there up, the tally of
        :meth:`count_step` (each partition's count as of its last refresh)."""
        if self._tally is not None:
            return sum(self._tally.values())
        n = 0
        for (n,) in self.conn.execute("SELECT count(*) FROM objects"):
            break
        if n >= self.count_exact_below:  # large: one count per partition now, then a partition per step
            self._tally = {int(p): int(c) for p, c in self.conn.execute(
                "SELECT partition, count(*) FROM objects GROUP BY partition")}
        return int(n)

    def is_empty(self) -> bool:
        return not any(True for _ in self.conn.execute("SELECT 1 FROM objects LIMIT 1"))

    def count_step(self, partitions: int) -> None:
        """Refresh one of the ``partitions`` (the ring's q) counts in the tally (call it
        periodically; a no-op while the store is small enough to count exactly). Back to
        exact counting once it has shrunk to half the threshold."""
        tally = self._tally
        if tally is None:
            return
        partition = self._tally_cursor % max(1, partitions)
        self._tally_cursor = partition + 1
        for (n,) in self.conn.execute("SELECT count(*) FROM objects WHERE partition = ?", (partition,)):
            tally[partition] = int(n)
        if partition == 0 and sum(tally.values()) < self.count_exact_below // 2:
            self._tally = None

    def size_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal", "-shm"):
            try:
                total += os.path.getsize(str(self.path) + suffix)
            except OSError:
                pass
        return total

    # --- group-committed writes ------------------------------------------------------

    def stage(
        self,
        key: bytes,
        partition: int,
        obj: VersionedObject,
        blob: bytes,
        callback: CommitCallback,
        loop: asyncio.AbstractEventLoop,
        hint_for: str | None = None,
    ) -> None:
        """Queue a write (with a hint that it belongs on ``hint_for``); ``callback`` runs
        once it is committed (or failed to commit)."""
        self._staged[key] = (partition, obj, blob)
        if hint_for is not None:
            self._staged_hints.add((hint_for, key))
        self._callbacks.append(callback)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self.flush)

    def flush(self) -> None:
        """Commit everything staged in one transaction, then run the callbacks."""
        self._flush_scheduled = False
        staged, callbacks, hints = self._staged, self._callbacks, self._staged_hints
        self._staged, self._callbacks, self._staged_hints = {}, [], set()
        dt_rows, self._dt_rows = self._dt_rows, {}
        if not staged:
            for cb in callbacks:
                cb(None)
            return
        error: StorageError | None = None
        after_commit: Callable[[], None] | None = None
        try:
            with self.conn:
                self.conn.executemany(
                    "INSERT INTO objects(key, partition, obj) VALUES(?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET obj = excluded.obj",
                    [(key, partition, blob) for key, (partition, _obj, blob) in staged.items()],
                )
                if dt_rows:
                    self._dt_write_rows(dt_rows)
                if self.observer is not None:
                    after_commit = self.observer(self.conn, staged)
                if hints:
                    new_hints = self._write_hints(hints)
            if after_commit is not None:
                after_commit()
            self.commits += 1
            self.rows_committed += len(staged)
            if hints:
                for target in new_hints:
                    self.hints_pending[target] = self.hints_pending.get(target, 0) + 1
        except apsw.Error as exc:
            if hints:
                self._hint_seq = self._max_hint_seq()
            self.commit_failures += 1
            log.error("commit of %d writes failed: %s", len(staged), exc)
            error = StorageError(f"commit failed: {type(exc).__name__}: {exc}")
        for cb in callbacks:
            try:
                cb(error)
            except Exception:  # one broken callback must not stop the others' acks
                log.exception("commit callback failed")

    def _write_hints(self, hints: set[tuple[str, bytes]]) -> list[str]:
        """Upsert hints inside the open transaction; returns the targets of the new ones."""
        new: list[str] = []
        for target, key in sorted(hints):
            self._hint_seq += 1
            existed = any(True for _ in self.conn.execute(
                "SELECT 1 FROM hints WHERE target = ? AND key = ?", (target, key)))
            self.conn.execute(
                "INSERT INTO hints(target, key, seq) VALUES(?, ?, ?) "
                "ON CONFLICT(target, key) DO UPDATE SET seq = excluded.seq",
                (target, key, self._hint_seq),
            )
            if not existed:
                new.append(target)
        return new

    def backup_steps(self, path: str, pages_per_step: int = 256) -> Iterator[int]:
        """Online backup (SQLite's backup API) to ``path``, a few pages per step so the
        caller can interleave other work; yields pages copied so far. Writes committed
        meanwhile make SQLite restart the copy, so the result is always consistent."""
        target = apsw.Connection(path)
        try:
            with target.backup("main", self.conn, "main") as backup:
                while not backup.step(pages_per_step):
                    yield backup.page_count - backup.remaining
                yield backup.page_count
        finally:
            target.close()

    def close(self) -> None:
        try:
            if self._staged or self._callbacks:
                self.flush()
        finally:
            if self.checkpointer is not None:
                self.checkpointer.stop()
                self.checkpointer = None
            self.conn.close()  # the last connection to close checkpoints and removes the WAL

    # --- data types: typed states, and sets as one row per element (dynq.kv.typed_store) ----------

    def dt_raw(self, key: bytes, staged: bool = True) -> bytes | None:
        """The stored blob of a typed key as it is in ``objects`` (a set: its header only),
        staged writes included unless ``staged`` is False."""
        if staged:
            entry = self._staged.get(key)
            if entry is not None:
                return entry[2]
        for (blob,) in self.conn.execute("SELECT obj FROM objects WHERE key = ?", (key,)):
            return bytes(blob)
        return None

    def dt_row(self, key: bytes, elem: bytes, staged: bool = True) -> bytes | None:
        """One set element's dots row (staged changes included unless ``staged`` is False)."""
        if staged:
            rows = self._dt_rows.get(key)
            if rows is not None and elem in rows:
                return rows[elem]
        for (dots,) in self.conn.execute("SELECT dots FROM dt_elements WHERE key = ? AND elem = ?", (key, elem)):
            return bytes(dots)
        return None

    def dt_rows(self, key: bytes, staged: bool = True) -> dict[bytes, bytes]:
        """Every element row of a set (a full scan: joins of whole states, whole reads)."""
        rows = {bytes(e): bytes(d) for e, d in self.conn.execute(
            "SELECT elem, dots FROM dt_elements WHERE key = ? ORDER BY elem", (key,))}
        if staged:
            for elem, dots in self._dt_rows.get(key, {}).items():
                if dots is None:
                    rows.pop(elem, None)
                else:
                    rows[elem] = dots
        return rows

    def dt_stage_rows(self, key: bytes, rows: dict[bytes, bytes | None]) -> None:
        """Element rows to write with the next commit, beside the set's header (which the
        caller stages next, through the usual :meth:`stage`)."""
        if rows:
            self._dt_rows.setdefault(key, {}).update(rows)

    def _dt_write_rows(self, staged: dict[bytes, dict[bytes, bytes | None]]) -> None:
        upserts = [(key, e, d) for key, rows in staged.items() for e, d in rows.items() if d is not None]
        deletes = [(key, e) for key, rows in staged.items() for e, d in rows.items() if d is None]
        if upserts:
            self.conn.executemany("INSERT INTO dt_elements(key, elem, dots) VALUES(?, ?, ?) "
                                  "ON CONFLICT(key, elem) DO UPDATE SET dots = excluded.dots", upserts)
        if deletes:
            self.conn.executemany("DELETE FROM dt_elements WHERE key = ? AND elem = ?", deletes)

    def dt_assemble(self, key: bytes, header: bytes) -> bytes:
        """A set's committed header and rows as one state blob (what replicas exchange)."""
        return set_rows.assemble(header, self.dt_rows(key, staged=False), self.limits)

    def dt_stored_form(self, blob: bytes) -> bytes:
        """What ``objects`` holds for a typed state blob (a set's header, else the blob)."""
        return set_rows.stored_form(blob, self.limits)
