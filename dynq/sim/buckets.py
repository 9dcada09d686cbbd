"""The simulator's buckets workload: which named buckets a seed creates, and how the
history names their keys (``bucket/key``; a default-bucket key keeps its bare name, so
seeds without buckets record exactly what they recorded before).

Half the seeds draw 1-3 buckets from a stream of their own, after every other option, so a
seed without buckets expands and runs as it did before buckets were simulated. The harness
creates them through ``bucket_create`` while the faults already run, changes one's ``r``
midway (``bucket_set``), and the checkers judge each key by its bucket: siblings buckets by
the default bucket's rules, lww buckets without "no acknowledged write lost" but with one
value per copy and per read, and every key by placement on its bucket's n primaries.
"""

from __future__ import annotations

import hashlib
import random
from dynq_client import buckets as b

BucketSpec = tuple[str, int, int, int, str]
"""(name, n, r, w, conflict) of one bucket a seed creates."""

BUCKET_SEEDS = 0.5
"""Share of seeds with named buckets. Drawn from their own stream, after every other option:
a seed without buckets expands (and runs) exactly as before buckets were simulated, so the
corpus seeds found earlier replay as they were found."""


def draw_buckets(seed: int, members: int, share: float = BUCKET_SEEDS) -> tuple[BucketSpec, ...]:
    """1-3 named buckets with n of 1, 3 or 5 (at most ``members``: those left after a
    leave), random quorums and either conflict policy; none for a share ``1 - share`` of seeds."""
    rng = random.Random(hashlib.blake2b(f"buckets:{seed}".encode(), digest_size=8).digest())
    if rng.random() >= share:
        return ()
    ns = [n for n in (1, 3, 5) if n <= members]
    out: list[BucketSpec] = []
    for i in range(rng.randint(1, 3)):
        n = rng.choice(ns)
        conflict = rng.choice(("siblings", "lww"))
        out.append((f"{conflict}{n}-{i}", n, rng.randint(1, n), rng.randint(1, n), conflict))
    return tuple(out)


def history_key(bucket: str, key: str) -> str:
    """The history's name of a key: ``key`` in the default bucket, ``bucket/key`` in a named one."""
    return key if bucket == b.DEFAULT else f"{bucket}/{key}"


def storage_key_of(hkey: str) -> bytes:
    """The storage key (what the nodes' databases hold) of a history key."""
    bucket, _, key = hkey.rpartition("/")
    return b.storage_key(bucket or b.DEFAULT, key.encode())


def history_key_of(skey: bytes) -> str:
    bucket, key = b.split(skey)
    return history_key(bucket, key.decode(errors="replace"))


__all__ = ["BUCKET_SEEDS", "BucketSpec", "draw_buckets", "history_key", "history_key_of", "storage_key_of"]
