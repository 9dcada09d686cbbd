"""WAL checkpoints on a thread of their own, so they never stall the event loop.

SQLite in WAL mode appends every commit to ``dynq.db-wal``; a *checkpoint* copies those
pages back into the database file. By default the committing connection does that itself
once the WAL passes 1,000 pages, inside the commit: on the event loop, where a checkpoint
of random pages (a repair, a transfer, a busy partition) took tens of milliseconds and was
the whole foreground p99 (measured: commit p99 40 ms with it, 3 ms without).

So the node turns that off and runs a :class:`Checkpointer`: a second connection on a
thread (apsw releases the GIL inside SQLite) that every ``interval`` runs a PASSIVE
checkpoint, which copies what it can without waiting for or blocking anyone.

PASSIVE alone is not enough. The WAL starts over from its beginning only when a
checkpoint has copied *every* frame by the time the next write begins; under sustained
writes new frames arrive while each passive pass runs, so that never happens and the file
grows without bound (seen: 490 MB after 900 commits). Hence the backstop: once the WAL
holds more than ``wal_limit_bytes``, the thread runs a RESTART checkpoint, which makes
writers wait while it copies the frames the passive passes have not yet copied (a
fraction of the WAL, since they ran moments ago) and then lets the next writer start the
WAL over. ``journal_size_limit`` truncates the file back to the limit when that happens.

If the thread stops working (an I/O error it cannot get past), the main connection's own
autocheckpoint is left on at twice the limit, so the WAL stays bounded either way.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import apsw

log = logging.getLogger(__name__)

WAL_FRAME_HEADER = 24  # bytes before each page in the WAL file


@dataclass
class CheckpointStats:
    """What the thread did; read by the loop for stats (plain ints: torn reads are harmless)."""

    passes: int = 0  # passive checkpoints run
    restarts: int = 0  # backstop checkpoints run because the WAL passed its limit
    busy: int = 0  # backstop checkpoints that gave up waiting for a writer (retried next pass)
    errors: int = 0
    wal_frames: int = 0  # frames in the WAL after the last pass
    last_restart_ms: float = 0.0  # how long the last backstop checkpoint took


class Checkpointer:
    """Checkpoint the WAL of ``path`` every ``interval_s`` from a daemon thread."""

    def __init__(self, path: Path, *, interval_s: float, wal_limit_bytes: int, busy_timeout_ms: int = 2000,
                 vfs: str | None = None) -> None:
        self.path = path
        self.vfs = vfs  # the SQLite VFS of the database (None: the default)
        self.interval_s = interval_s
        self.wal_limit_bytes = wal_limit_bytes
        self.busy_timeout_ms = busy_timeout_ms
        self.stats = CheckpointStats()
        self.page_size = 4096
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None  # the passes as a loop task (simulation)

    @property
    def limit_frames(self) -> int:
        return max(1, self.wal_limit_bytes // (self.page_size + WAL_FRAME_HEADER))

    def start(self, as_task: bool = False) -> None:
        """Start the passes on a daemon thread, or (``as_task``) as a task of the running loop."""
        # opened here: a bad path fails the caller
        conn = apsw.Connection(str(self.path), vfs=self.vfs) if self.vfs else apsw.Connection(str(self.path))
        conn.setbusytimeout(self.busy_timeout_ms)
        # Opens the WAL for this connection; until it has, checkpoints do nothing and return -1.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA journal_size_limit={self.wal_limit_bytes}")
        for (size,) in conn.execute("PRAGMA page_size"):
            self.page_size = int(size)
        self.conn = conn  # the checkpointing connection (closed by the thread or the task)
        if as_task:
            self._task = asyncio.get_running_loop().create_task(self._run_task(conn), name="dynq-checkpoint")
            return
        self._thread = threading.Thread(target=self._run, args=(conn,), name="dynq-checkpoint", daemon=True)
        self._thread.start()

    async def _run_task(self, conn: apsw.Connection) -> None:
        try:
            while True:
                await asyncio.sleep(self.interval_s)
                self.checkpoint_once(conn)
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            self._task = None
            self.conn.close()  # now, not when the cancelled task next runs
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self, conn: apsw.Connection) -> None:
        try:
            while not self._stop.wait(self.interval_s):
                self.checkpoint_once(conn)
        finally:
            conn.close()

    def checkpoint_once(self, conn: apsw.Connection) -> None:
        """One pass: passive, then the backstop if the WAL is past its limit."""
        stats = self.stats
        try:
            frames, _copied = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
            stats.passes += 1
            if frames > self.limit_frames:
                start = time.perf_counter()
                try:
                    frames, _copied = conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_RESTART)
                    stats.restarts += 1
                    stats.last_restart_ms = (time.perf_counter() - start) * 1000
                except apsw.BusyError:
                    stats.busy += 1
            stats.wal_frames = frames
        except apsw.BusyError:
            stats.busy += 1
        except apsw.Error as exc:
            stats.errors += 1
            if stats.errors in (1, 10, 100) or stats.errors % 1000 == 0:
                log.error("WAL checkpoint failed (%d so far): %s", stats.errors, exc)
