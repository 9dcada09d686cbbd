"""The WAL checkpointer on real SQLite files: passes are driven by hand, so nothing here
depends on the thread's timing, except the last test, which waits (bounded) for it."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import apsw

from dynq.store.checkpointer import Checkpointer
from dynq.store.storage import Storage
from dynq_client.versions import decode_object, encode_object, update

LIMIT = 1024 * 1024  # 1 MiB of WAL


def write_rows(storage: Storage, loop: asyncio.AbstractEventLoop, first: int, count: int, size: int = 4000) -> None:
    """Commit ``count`` objects of ``size`` bytes, 50 per transaction."""
    for start in range(first, first + count, 50):
        for i in range(start, min(start + 50, first + count)):
            key = b"k%06d" % i
            obj = update(None, {}, "a", bytes([i % 251]) * size, 1)
            storage.stage(key, 0, obj, encode_object(obj), lambda e: None, loop)
        storage.flush()


def quiet_storage(tmp_path: Path) -> Storage:
    """A Storage set up as start_checkpointer sets it up, minus the thread and the safety
    net: nobody checkpoints but the passes the test runs."""
    storage = Storage(tmp_path / "dynq.db", synchronous="normal")
    storage.conn.wal_autocheckpoint(0)
    storage.conn.execute(f"PRAGMA journal_size_limit={LIMIT}")
    return storage


def checkpointer_conn(path: Path, cp: Checkpointer) -> apsw.Connection:
    """A connection set up as Checkpointer.start sets up its thread's, to drive passes by hand."""
    conn = apsw.Connection(str(path))
    conn.setbusytimeout(2000)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA journal_size_limit={cp.wal_limit_bytes}")
    return conn


def test_passive_pass_copies_without_resetting_and_backstop_bounds_the_wal(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    storage = quiet_storage(tmp_path)
    cp = Checkpointer(storage.path, interval_s=3600, wal_limit_bytes=LIMIT)
    conn = checkpointer_conn(storage.path, cp)
    try:
        write_rows(storage, loop, 0, 100)  # ~0.4 MB: under the limit
        cp.checkpoint_once(conn)
        assert (cp.stats.passes, cp.stats.restarts) == (1, 0)
        assert 0 < cp.stats.wal_frames < cp.limit_frames

        write_rows(storage, loop, 100, 1000)  # ~4 MB more: well past the limit
        grown = storage.wal_bytes()
        assert grown > 3 * LIMIT
        cp.checkpoint_once(conn)
        assert cp.stats.restarts == 1 and cp.stats.errors == 0
        write_rows(storage, loop, 1100, 10)  # the next writer starts the WAL over and truncates it
        assert storage.wal_bytes() <= LIMIT < grown

        for i in (0, 555, 1109):  # and every row is still there
            blob = storage.get_blob(b"k%06d" % i)
            assert blob is not None and decode_object(blob).values == [bytes([i % 251]) * 4000]
    finally:
        conn.close()
        storage.close()
        loop.close()


def test_a_reader_holding_a_snapshot_defers_the_backstop_without_an_error(tmp_path: Path) -> None:
    """A long scan pins the WAL: the backstop waits its busy timeout, counts a busy pass
    (no error, nothing lost) and succeeds on a later pass once the scan is done."""
    loop = asyncio.new_event_loop()
    storage = quiet_storage(tmp_path)
    cp = Checkpointer(storage.path, interval_s=3600, wal_limit_bytes=LIMIT, busy_timeout_ms=50)
    conn = checkpointer_conn(storage.path, cp)
    conn.setbusytimeout(cp.busy_timeout_ms)
    reader = apsw.Connection(str(storage.path))
    try:
        write_rows(storage, loop, 0, 50)
        cursor = reader.execute("SELECT key FROM objects")
        next(cursor)  # its read transaction stays open
        write_rows(storage, loop, 50, 1000)
        cp.checkpoint_once(conn)
        assert (cp.stats.restarts, cp.stats.busy, cp.stats.errors) == (0, 1, 0)
        cursor.close()
        cp.checkpoint_once(conn)
        assert (cp.stats.restarts, cp.stats.errors) == (1, 0)
        write_rows(storage, loop, 1050, 10)
        assert storage.wal_bytes() <= LIMIT
        assert storage.count() == 1060
    finally:
        reader.close()
        conn.close()
        storage.close()
        loop.close()


def test_storage_with_the_thread_keeps_every_write_across_a_reopen(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    path = tmp_path / "dynq.db"
    storage = Storage(path, synchronous="normal")
    storage.start_checkpointer(10, LIMIT)
    assert storage.checkpointer is not None
    try:
        deadline = time.monotonic() + 60
        written = 0
        while (storage.checkpointer.stats.restarts < 2 and written < 20_000
               and time.monotonic() < deadline):  # bounded: count and time
            write_rows(storage, loop, written, 200)
            written += 200
        stats = storage.checkpointer.stats
        assert stats.errors == 0 and stats.passes > 0 and stats.restarts >= 1
    finally:
        storage.close()
        loop.close()
    assert not os.path.exists(str(path) + "-wal")  # the last connection to close removes the WAL
    reopened = Storage(path)
    try:
        assert reopened.count() == written
    finally:
        reopened.close()


def test_the_node_connection_maps_what_mmap_bytes_says_and_reads_its_writes_back(tmp_path: Path) -> None:
    """``[storage] mmap_mb`` reaches SQLite (0: no map), and objects written through the
    map's connection read back after a reopen either way."""
    for mmap_bytes in (8 << 20, 0):
        path = tmp_path / f"m{mmap_bytes}" / "dynq.db"
        store = Storage(path, mmap_bytes=mmap_bytes)
        assert store.conn.execute("PRAGMA mmap_size").fetchone()[0] == mmap_bytes
        obj = update(None, {}, "a", b"v" * 4000, 1)
        with store.conn:
            store.conn.execute("INSERT INTO objects (key, partition, obj) VALUES (?, 0, ?)",
                               (b"k", encode_object(obj)))
        store.close()
        again = Storage(path, mmap_bytes=mmap_bytes)
        assert again.current(b"k") == obj
        again.close()
