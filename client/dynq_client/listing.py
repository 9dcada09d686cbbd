"""Listing a bucket's keys, the client's side: coverage planning (pure) and paging.

**Coverage.** Keys are listed partition by partition, in ascending order, and within a
partition in storage-key order; each partition is read from *one* replica of the
serving ring that is a primary of it for the bucket's ``n`` (during a membership change
the serving ring's primaries hold everything; incoming replicas may not yet). Runs of
consecutive partitions served by the same node go in one request: the planner keeps
the node of the previous partition while it is a usable primary, so a 3-node cluster
needs a handful of requests per page, not one per partition.

**Resuming.** Because the order is (partition, key) and a key's partition follows from
the key, the last key returned is the whole continuation token: ``start_after=KEY``
resumes after it. :class:`KeyPage` carries it as ``token``.

**What a listing guarantees.** Every key that was written (and not deleted) before the
listing started and that the chosen replica of its partition holds is listed once. A
replica that missed writes (it was down and its hints are not handed back yet) misses
them in the listing too: list after ``dynq repair`` for an exact inventory. Keys
written or deleted during the listing may or may not appear.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .ring import Ring


@dataclass(frozen=True)
class KeyPage:
    """One page of a listing: its keys and the token to resume after (None: the end)."""

    keys: list[bytes]
    token: bytes | None


def plan_coverage(ring: Ring, n: int, usable: Callable[[str], bool], first: int = 0,
                  avoid: frozenset[str] = frozenset()) -> list[tuple[str, list[int]]]:
    """Partitions ``first..q-1`` grouped into runs, each with the primary (for ``n``) that
    serves the run: the previous run's node while it is a usable primary, else the first
    usable primary, else the first primary not in ``avoid`` (it will say why it fails)."""
    runs: list[tuple[str, list[int]]] = []
    current: str | None = None
    for partition in range(first, ring.q):
        primaries = [x for x in ring.preference_list(partition, n).primaries if x not in avoid]
        if not primaries:
            primaries = list(ring.preference_list(partition, n).primaries)
        if current is None or current not in primaries or not usable(current):
            good = [x for x in primaries if usable(x)]
            current = good[0] if good else primaries[0]
            runs.append((current, []))
        runs[-1][1].append(partition)
    return runs
