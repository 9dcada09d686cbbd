"""The injected environment: production defaults; a simulated one reaches storage (VFS,
actor randomness) and the checkpointer runs as a loop task instead of a thread."""

from __future__ import annotations

import asyncio
import random
import threading
from pathlib import Path

import pytest
from dynq_client.errors import StorageError

from dynq.env import SYSTEM, Env
from dynq.sim.disk import SimDisk
from dynq.sim.loop import SimLoop
from dynq.store.storage import Storage


def test_system_env_is_production() -> None:
    """SYSTEM: real clocks, OS randomness, default VFS, the checkpointer thread."""
    assert SYSTEM.sqlite_vfs is None and SYSTEM.checkpointer == "thread"
    assert isinstance(SYSTEM.random, random.SystemRandom)
    assert abs(SYSTEM.wall_ms() / 1000 - SYSTEM.wall()) < 1


def test_seeded_env_gives_the_same_actor_and_uses_its_vfs(tmp_path: Path) -> None:
    """Same seed, same actor id; every connection goes through the injected VFS."""
    disk = SimDisk("simdisk-test-env", 1)
    try:
        actors = []
        for run in range(2):
            env = Env(rng=random.Random(5), sqlite_vfs=disk.name)
            storage = Storage(tmp_path / f"r{run}" / "dynq.db", vfs=env.sqlite_vfs, token_hex=env.token_hex)
            actors.append(storage.actor_id("n1"))
            storage.close()
        assert actors[0] == actors[1] and actors[0].startswith("n1.") and len(actors[0]) == 11
        assert any(str(tmp_path / "r0") in path for path in disk.files)
    finally:
        disk.unregister()


def test_checkpointer_as_a_task_uses_no_thread(tmp_path: Path) -> None:
    """mode "task": passes run on the loop (here the simulator's, so time is virtual and
    the count exact); no thread starts; stop closes it."""
    async def main() -> None:
        storage = Storage(tmp_path / "dynq.db")
        before = threading.active_count()
        storage.start_checkpointer(10, 1024 * 1024, "task")
        assert threading.active_count() == before
        cp = storage.checkpointer
        assert cp is not None
        await asyncio.sleep(0.105)
        assert cp.stats.passes == 10
        storage.close()
        assert storage.checkpointer is None

    loop = SimLoop(1, timer_jitter=0)
    loop.run(main())
    loop.close()


def test_checkpointer_off_leaves_sqlite_to_checkpoint(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "dynq.db")
    storage.start_checkpointer(100, 1024 * 1024, "off")
    assert storage.checkpointer is None
    storage.close()


def test_a_meta_write_on_a_full_disk_raises_storage_error(tmp_path: Path) -> None:
    """Regression (found by `dynq sim`, a full disk): a cluster state pulled by gossip could
    not be persisted and apsw.FullError escaped a reply callback; set_meta now raises the
    node's StorageError (liveness logs it and retries at the next heartbeat)."""
    disk = SimDisk("simdisk-test-full", 1)
    try:
        storage = Storage(tmp_path / "dynq.db", vfs=disk.name)
        disk.capacity = disk.used()
        with pytest.raises(StorageError):
            storage.set_meta("cluster", b"x" * 100_000)
        disk.capacity = None
        storage.set_meta("cluster", b"y")
        assert storage.get_meta("cluster") == b"y"
        storage.close()
    finally:
        disk.unregister()
