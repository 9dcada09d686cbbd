"""Storage.count: exact for a small store, a tally refreshed a partition at a time for a large one."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dynq.store.storage import Storage
from dynq_client.versions import encode_object, update


def write(storage: Storage, keys: range, partitions: int = 4) -> None:
    loop = asyncio.new_event_loop()
    try:
        for i in keys:
            obj = update(None, {}, "a", b"v", 1)
            storage.stage(b"k%d" % i, i % partitions, obj, encode_object(obj), lambda error: None, loop)
        storage.flush()
    finally:
        loop.close()


def test_small_stores_count_exactly_large_ones_from_a_tally(tmp_path: Path) -> None:
    storage = Storage(tmp_path / "dynq.db", synchronous="normal", count_exact_below=50)
    try:
        assert storage.is_empty() and storage.count() == 0
        write(storage, range(40))
        assert storage.count() == 40 and not storage.is_empty()  # small: exact, every time
        write(storage, range(40, 70))
        assert storage.count() == 70  # crossed the threshold: counted once per partition
        write(storage, range(70, 90))
        assert storage.count() == 70  # large: the tally, until its partitions are recounted
        for _ in range(4):
            storage.count_step(4)
        assert storage.count() == 90
    finally:
        storage.close()
