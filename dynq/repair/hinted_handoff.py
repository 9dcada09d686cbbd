"""Hinted handoff: a fallback hands the writes it took for a down primary back to it.

A hint is a row ``(target, key, seq)`` committed together with the fallback's copy of the
object (see :mod:`dynq.store.storage`). This loop, one per node, looks every
``replay_interval`` for targets with hints that the node believes reachable, and replays
them in batches: it sends the fallback's *current* object for each key as an ordinary
``replica_put`` (the primary merges it through the normal version logic, so nothing the
primary holds is overwritten), and only once the primary has acknowledged does it delete
the hint - and its own copy, if it is not a primary of the key and nothing newer arrived.

Killing the fallback at any point loses nothing: a hint is deleted only after the ack,
and a replay that is repeated is harmless because merge is idempotent. Replay is rate
limited (``replay_rate`` hints/s) so that a returning node is not flooded.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..config import NodeConfig
from ..server.ports import ClusterView, HintStore, Peers

log = logging.getLogger(__name__)


class HintedHandoff:
    """Replays this node's hints to their targets."""

    def __init__(self, store: HintStore, peers: Peers, cluster: ClusterView, config: NodeConfig) -> None:
        self.store = store
        self.peers = peers
        self.cluster = cluster
        self.config = config
        self.name = config.name
        self.replayed = 0  # hints delivered and deleted
        self.failures = 0  # replays that a target did not acknowledge
        self.batches = 0

    async def run(self) -> None:
        config, store = self.config, self.store
        while True:
            await asyncio.sleep(config.replay_interval_ms / 1000)
            for target in list(store.hints_pending):
                if target == self.name:  # a hint for ourselves: we are the primary again
                    self._drop_self_hints()
                    continue
                # A target that left the cluster never comes back up: its hints go to the
                # keys' replicas now (recipients), whose own liveness the replay finds out.
                departed = target not in self.cluster.member_names
                while (departed or self.peers.is_up(target)) and store.hints_pending.get(target):
                    try:
                        delivered = await self.replay_batch(target)
                    except Exception:  # one target's failure must not hold up the others
                        log.exception("hint replay to %s failed", target)
                        break
                    if not delivered:
                        break
                    await asyncio.sleep(delivered / config.replay_rate)

    def _drop_self_hints(self) -> None:
        for key, seq in self.store.hint_batch(self.name, 10_000):
            self.store.hint_delivered(self.name, key, seq, b"", drop_copy=False)

    def recipients(self, target: str, key: bytes) -> list[str]:
        """Where a hint for ``target`` goes: to ``target`` while it replicates the key;
        once the ring moved on (``target`` left, or the key's partition moved away from
        it) to the key's replicas now, so the write is not stranded on this node."""
        state = self.cluster.state
        partition = state.ring.partition_for(key)
        n = state.buckets.n_of(key, state.ring.n)
        if n is None or state.is_replica(target, partition, n):  # n None: a bucket not heard of yet
            return [target]
        replicas = list(state.ring.preference_list(partition, n).primaries)
        replicas += [x for x in state.pending_replicas(partition, n) if x not in replicas]
        return [x for x in replicas if x != self.name]

    async def replay_batch(self, target: str) -> int:
        """Send one batch of hints to ``target``; returns how many were delivered."""
        storage, peers, cluster = self.store, self.peers, self.cluster
        batch = storage.hint_batch(target, self.config.replay_batch)
        if not batch:
            return 0
        self.batches += 1
        pending: list[tuple[bytes, int, bytes, list[asyncio.Future[dict[str, Any]]]]] = []
        for key, seq in batch:
            blob = storage.get_blob(key)
            if blob is None:  # nothing to hand over (cannot happen unless the row was removed by hand)
                storage.hint_delivered(target, key, seq, b"", drop_copy=False)
                continue
            # sent now, in one loop pass: one batch message per recipient
            futures = [peers.call_replicate(replica, key, blob) for replica in self.recipients(target, key)]
            pending.append((key, seq, blob, futures))
        delivered = 0
        for key, seq, blob, futures in pending:
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            if not any(isinstance(outcome, BaseException) for outcome in outcomes):
                state = cluster.state
                n = state.buckets.n_of(key, state.ring.n)
                replica_here = n is None or state.is_replica(self.name, state.ring.partition_for(key), n)
                if storage.hint_delivered(target, key, seq, blob, drop_copy=not replica_here):
                    delivered += 1
                    self.replayed += 1
            else:
                self.failures += 1
        if delivered:
            log.info("handed %d hinted writes to %s (%d left)", delivered, target,
                     storage.hints_pending.get(target, 0))
        return delivered
