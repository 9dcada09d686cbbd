"""SimDisk: under WAL + synchronous=FULL every committed transaction survives power loss;
under NORMAL some are lost (the model has teeth); integrity_check stays ok."""

from __future__ import annotations

from pathlib import Path

import apsw

from dynq.sim.disk import SimDisk


def _power_loss_run(tmp: Path, seed: int, sync: str) -> tuple[int, int, str]:
    disk = SimDisk(f"simdisk-{seed}-{sync}", seed)
    try:
        db = str(tmp / f"db-{seed}-{sync}")
        conn = apsw.Connection(db, vfs=disk.name)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={sync}")
        conn.execute("CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB)")
        acked = 0
        for i in range(60):
            with conn:
                conn.execute("INSERT INTO t VALUES(?, ?)", (i, b"x" * 700))
            acked = i + 1
        disk.frozen = True  # the host died: closing writes nothing
        conn.close()
        disk.frozen = False
        disk.power_loss()
        conn = apsw.Connection(db, vfs=disk.name)
        try:
            (count,) = conn.execute("SELECT count(*) FROM t").fetchone()  # type: ignore[misc]
        except apsw.SQLError:  # even the CREATE TABLE was never synced
            count = 0
        (ok,) = conn.execute("PRAGMA integrity_check").fetchone()  # type: ignore[misc]
        conn.close()
        return acked, int(count), str(ok)
    finally:
        disk.unregister()


def test_full_sync_keeps_every_acknowledged_commit(tmp_path: Path) -> None:
    """synchronous=FULL: no seed loses a committed row."""
    for seed in range(8):
        acked, count, ok = _power_loss_run(tmp_path, seed, "FULL")
        assert (count, ok) == (acked, "ok"), seed


def test_normal_sync_can_lose_commits(tmp_path: Path) -> None:
    """synchronous=NORMAL: commits are not synced, so power loss loses some (on most seeds)."""
    results = [_power_loss_run(tmp_path, seed, "NORMAL") for seed in range(8)]
    assert all(ok == "ok" for _, _, ok in results)
    assert sum(count < acked for acked, count, _ in results) >= 4
