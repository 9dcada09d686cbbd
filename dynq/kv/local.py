"""This node's own copy: writes through the storage's group commit, reads, and watchers.

Every write of this node - a coordinated put, a replica write, a repair, a handoff that
arrives - is staged here: the hint store's bound is enforced for hinted writes, and the
watchers of the key's partition (an outgoing transfer that must see every commit made
during it) hear of the commit once it is durable.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from dynq_client.errors import StorageError
from dynq_client.versions import EMPTY, VersionedObject, encode_object, merge

from ..server.ports import ClusterView, CommitCallback, CommitListener, HandOn
from ..server.stats import Stats
from ..store.storage import Storage
from .typed_store import TypedStore, is_typed

log = logging.getLogger(__name__)


class LocalReplica:
    """Writes and reads of this node's copy (implements ``LocalWriter``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, storage: Storage, cluster: ClusterView, stats: Stats, *,
                 max_hints: int, wall_ms: Callable[[], int] | None = None) -> None:
        self.loop = loop
        self.storage = storage
        self.cluster = cluster
        self.stats = stats
        self.name = cluster.name
        self.max_hints = max_hints  # hinted writes this node keeps at most (then refuses them)
        self._watchers: dict[int, list[CommitListener]] = {}  # partition -> who hears of its commits
        self.read_local = storage.get_blob
        self.current = storage.current  # the merge base: staged writes included
        self.typed = (TypedStore(storage, self, storage.limits) if wall_ms is None
                      else TypedStore(storage, self, storage.limits, wall_ms))  # typed keys, joined by their type

    def stage_local(self, key: bytes, obj: VersionedObject, blob: bytes, done: CommitCallback,
                    hint_for: str | None = None) -> None:
        storage = self.storage
        if hint_for is not None:
            if storage.hint_count + storage.staged_hint_count >= self.max_hints:
                self.stats.hints_refused += 1
                log.error("hint store full (%d hints): refusing a hinted write for %s",
                          storage.hint_count, hint_for)
                self.loop.call_soon(done, StorageError(
                    f"{self.name}: hint store full ({self.max_hints} hints); write not taken"))
                return
            self.stats.hints_stored += 1
        partition = self.cluster.ring.partition_for(key)
        watchers = self._watchers.get(partition)
        if watchers:  # a transfer of this partition must see the commit
            inner = done
            listeners = list(watchers)

            def done(error: StorageError | None) -> None:
                if error is None:
                    for listener in listeners:
                        listener(partition, key)
                inner(error)

        storage.stage(key, partition, obj, blob, done, self.loop, hint_for)

    def watch(self, partition: int, listener: CommitListener) -> Callable[[], None]:
        """Call ``listener(partition, key)`` after each commit of a key of ``partition``
        (staged from now on); returns the unwatch."""
        self._watchers.setdefault(partition, []).append(listener)

        def unwatch() -> None:
            listeners = self._watchers.get(partition, [])
            if listener in listeners:
                listeners.remove(listener)
            if not listeners:
                self._watchers.pop(partition, None)

        return unwatch

    def typed_exchange(self, key: bytes, theirs: bytes | None) -> tuple[
            asyncio.Future[StorageError | None] | None, bytes | None] | None:
        """Anti-entropy of a typed key through its join (None: a plain key, merged as objects)."""
        if is_typed(theirs) or (theirs is None and is_typed(self.storage.dt_raw(key))):
            return self.typed.exchange(key, theirs)
        return None

    def hand_on(self, key: bytes, target: str, done: CommitCallback) -> HandOn:
        """Re-stage this node's copy of ``key`` as it is, as a hint for ``target``; ``done``
        runs once committed (or refused). "none": nothing here; "full": the hint store is
        full, nothing staged. A typed key keeps its stored form: its state is not a
        versioned object, and rewriting it as one would erase it."""
        storage = self.storage
        if storage.hint_count + storage.staged_hint_count >= self.max_hints:
            return "full"
        raw = storage.dt_raw(key)  # staged writes included
        if raw is None:
            return "none"
        if is_typed(raw):
            self.stage_local(key, EMPTY, raw, done, hint_for=target)
            return "staged"
        obj = storage.current(key)
        if obj is None:
            return "none"
        self.stage_local(key, obj, encode_object(obj), done, hint_for=target)
        return "staged"

    def repair(self, key: bytes, merged: VersionedObject) -> None:
        """Read repair of this node's own copy: merge with what is here *now* (a write may
        have landed since the read), never write the read's merge over it."""
        mine = merge(self.storage.current(key), merged)
        self.stage_local(key, mine, encode_object(mine), _ignore_commit)


def _ignore_commit(error: StorageError | None) -> None:
    """A repair nobody waits for (a failed commit is counted and logged by storage)."""
