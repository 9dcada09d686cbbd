"""SimDisk: real SQLite files behind an apsw VFS that can lose what was never synced.

The VFS inherits the default one (``unix``); reads and writes go to the real files (the
"page cache"). For each file it keeps, per 512-byte sector, the durable content of every
sector written since the last ``xSync`` and the durable size; ``xSync`` marks the file
durable without a real fsync (hence the speed). Faults:

- :meth:`SimDisk.power_loss`: each file goes back to its synced image, then a seeded subset
  of the writes since (some torn at sector granularity) is replayed; ``-shm`` is deleted.
  Close the connections first (a dead host's connection writes nothing: see ``frozen``).
- ``capacity``: a write that grows the disk past it raises ``apsw.FullError`` (SQLITE_FULL).
- ``fail_syncs``: the next N syncs raise ``apsw.IOError``; their writes stay unsynced
  (fsyncgate: the kernel forgot them).
- ``xRandomness``/``xCurrentTime`` are seeded / virtual (:meth:`SimDisk.seed_sqlite_prng`).

Not yet: slow fsync (pausing the host), a per-incarnation freeze of old file handles.
"""

from __future__ import annotations

import os
import random
from typing import Any, Callable

import apsw

SECTOR = 512


class _FileState:
    def __init__(self, size: int) -> None:
        self.durable_size = size  # size at the last sync
        self.overlay: dict[int, bytes] = {}  # sector -> its durable content (changed since sync)
        self.pending: list[tuple[int, bytes]] = []  # writes since the last sync, in order


class SimDisk(apsw.VFS):
    """One host's disk, registered as VFS ``name``."""

    def __init__(self, name: str, seed: int, *, capacity: int | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        super().__init__(name, "")
        self.name = name
        self.rng = random.Random(seed)
        self.capacity = capacity  # bytes; None: unlimited
        self.fail_syncs = 0  # the next this many syncs fail with EIO
        self.frozen = False  # True: writes and syncs are silently dropped (a dead process)
        self.clock = clock or (lambda: 0.0)  # virtual unix time, seconds
        self.files: dict[str, _FileState] = {}
        self.syncs = 0
        self.lost_writes = self.torn_writes = self.kept_writes = 0

    def xOpen(self, name: Any, flags: Any) -> _SimFile:  # noqa: N802
        path = name.filename() if hasattr(name, "filename") else name
        return _SimFile(self, path, name, flags)

    def xDelete(self, filename: str, syncdir: bool) -> None:  # noqa: N802
        if self.frozen:
            return  # a dead process deletes nothing (its close would remove the WAL)
        super().xDelete(filename, syncdir)
        self.files.pop(filename, None)

    def xRandomness(self, numbytes: int) -> bytes:  # noqa: N802
        return bytes(self.rng.getrandbits(8) for _ in range(numbytes))

    def xCurrentTime(self) -> float:  # noqa: N802
        return 2440587.5 + self.clock() / 86400.0

    def xCurrentTimeInt64(self) -> int:  # noqa: N802
        return int(self.xCurrentTime() * 86400000)

    def xSleep(self, microseconds: int) -> int:  # noqa: N802
        return microseconds

    def seed_sqlite_prng(self) -> None:
        """SQLite's PRNG is process-wide and seeded from the default VFS: reseed it from ours."""
        class _Seed(apsw.VFS):
            def __init__(inner) -> None:
                super().__init__("simdisk-seed", "", makedefault=True)

            def xRandomness(inner, n: int) -> bytes:  # noqa: N802
                return self.xRandomness(n)

        seeder = _Seed()
        apsw.randomness(0)
        apsw.randomness(1)
        seeder.unregister()

    def used(self) -> int:
        return sum(os.path.getsize(p) for p in self.files if os.path.exists(p))

    def power_loss(self) -> None:
        """Everything not synced is gone, except a seeded, possibly torn, subset."""
        for path, st in sorted(self.files.items()):
            if not os.path.exists(path):
                continue
            pending = st.pending
            with open(path, "r+b") as f:
                for sector, data in sorted(st.overlay.items()):
                    f.seek(sector * SECTOR)
                    f.write(data)
                f.truncate(st.durable_size)
                for offset, data in pending:
                    roll = self.rng.random()
                    if roll < 0.4:
                        self.lost_writes += 1
                        continue
                    if roll < 0.6 and len(data) > SECTOR:
                        self.torn_writes += 1
                        for start in range(0, len(data), SECTOR):
                            if self.rng.random() < 0.5:
                                f.seek(offset + start)
                                f.write(data[start:start + SECTOR])
                        continue
                    self.kept_writes += 1
                    f.seek(offset)
                    f.write(data)
            self.files[path] = _FileState(os.path.getsize(path))
            self.files[path].durable_size = os.path.getsize(path)
        for path in list(self.files):
            if path.endswith("-shm") and os.path.exists(path):
                os.remove(path)


class _SimFile(apsw.VFSFile):
    def __init__(self, disk: SimDisk, path: str, name: Any, flags: Any) -> None:
        super().__init__("", name, flags)
        self.disk = disk
        self.path = path
        st = disk.files.get(path)
        if st is None:
            st = disk.files[path] = _FileState(0)  # created now: nothing of it is durable yet

    def _state(self) -> _FileState:
        return self.disk.files.setdefault(self.path, _FileState(0))

    def xWrite(self, data: bytes, offset: int) -> None:  # noqa: N802
        disk = self.disk
        if disk.frozen:
            return
        data = bytes(data)
        size = self.xFileSize()
        if disk.capacity is not None and offset + len(data) > size \
                and disk.used() + offset + len(data) - size > disk.capacity:
            raise apsw.FullError("simulated disk full")
        st = self._state()
        if not self.path.endswith("-shm"):
            for sector in range(offset // SECTOR, (offset + len(data) - 1) // SECTOR + 1):
                if sector not in st.overlay and sector * SECTOR < st.durable_size:
                    st.overlay[sector] = super().xRead(min(SECTOR, st.durable_size - sector * SECTOR), sector * SECTOR)
            st.pending.append((offset, data))
        super().xWrite(data, offset)

    def xTruncate(self, newsize: int) -> None:  # noqa: N802
        if self.disk.frozen:
            return
        st = self._state()
        size = self.xFileSize()
        for sector in range(newsize // SECTOR, (size + SECTOR - 1) // SECTOR):
            if sector not in st.overlay and sector * SECTOR < st.durable_size:
                st.overlay[sector] = super().xRead(min(SECTOR, st.durable_size - sector * SECTOR), sector * SECTOR)
        super().xTruncate(newsize)

    def xSync(self, flags: int) -> None:  # noqa: N802
        disk = self.disk
        if disk.frozen:
            return
        st = self._state()
        if disk.fail_syncs > 0:
            disk.fail_syncs -= 1
            st.pending.clear()  # fsyncgate: the kernel dropped them; later syncs will not save them
            raise apsw.IOError("simulated fsync EIO")
        disk.syncs += 1
        st.overlay.clear()
        st.pending.clear()
        st.durable_size = self.xFileSize()


__all__ = ["SimDisk"]
