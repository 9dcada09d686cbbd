"""Anti-entropy: replicas of a partition compare Merkle trees and repair what differs.

One exchange, initiated by node A for partition ``p`` with another primary B::

    A                                   B
    ae_root {p} ───────────────────────▶ root hash        equal: done (one round trip)
    ae_level {p, depth 0, [0]} ────────▶ 32 child hashes   descend only where they differ
    ae_level {p, depth 1, [i, ...]} ───▶ 32 hashes each
    ae_keys {p, [segments]} ───────────▶ (key, leaf hash) of the differing segments
    ae_objects {p, [keys]} ────────────▶ B's objects of the keys that differ or only B has
    A merges (versions.merge) and stages the result locally (the trees follow);
    replica_put (batched) ─────────────▶ the merged object, to B, where it differs

so bytes grow with the number of diverged keys (and the keys sharing their segments),
not with the partition's size. Because merge is commutative, associative and idempotent,
siblings survive repair and any order of repairs, handoffs and read repairs converges.

A *repair pass* of ``p`` on A exchanges with every other primary, then once more with all
but the last (``B, C, B``), so one pass leaves every primary with the union of all of
them. The background loop runs passes round-robin over the partitions this node is a
primary of, ``concurrency`` at a time (default one), every ``interval_ms``, and paces the
objects and bytes it moves with a token bucket (``rate_objects``, ``rate_bytes``).
``dynq repair`` runs passes now through the ``ae_repair`` op.

Expired objects (every value past its expiry) are reaped the same way, by their own loop
(:meth:`AntiEntropy.reclaim_expired`) after a shorter grace, without waiting for a pass.

Tombstone reaping (after a pass that reached every primary): a tombstone older than the
grace period is deleted only if every primary reports the *same* leaf hash for it (they
all hold exactly this tombstone), no member holds a hint for the key, and no non-primary
holds a copy; each primary then deletes it only if its leaf hash is still that one
(compare-and-delete), so a write that lands meanwhile is never reaped. See
docs/design.md for why this keeps deleted keys deleted (Riak's KV679 cases).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from dynq_client import protocol as p
from dynq_client.errors import DynqError, InvalidRequest, ProtocolError
from dynq_client.protocol import Request

from ..config import NodeConfig
from ..env import SYSTEM, Env
from ..server.ports import ClusterView, Handler, LocalWriter, Peers, Spawner
from ..server.responder import Responder
from ..store.storage import Storage
from .exchange import ExchangeStats, Exchanger, RateLimiter
from .tree_server import REAP_BATCH, TreeServer
from .trees import PartitionTrees

log = logging.getLogger(__name__)

SAMPLE_KEYS = 100  # repaired keys reported back by ae_repair (bounded)


class AntiEntropy:
    """The scheduler of repair passes, and tombstone reaping (riak_kv_entropy_manager's job)."""

    def __init__(self, trees: PartitionTrees, server: TreeServer, storage: Storage, peers: Peers,
                 cluster: ClusterView, local: LocalWriter, spawner: Spawner, config: NodeConfig, *,
                 started: float, env: Env = SYSTEM) -> None:
        self.env = env  # the wall clock (tombstone grace, staleness)
        self.trees = trees
        self.server = server  # the answering side, whose reaps count too
        self.storage = storage
        self.peers = peers
        self.cluster = cluster
        self.spawner = spawner
        self.config = config
        self.name = config.name
        self.started = started  # when this node started (the horizon of never-exchanged partitions)
        self.limiter = RateLimiter(self.config.ae_rate_objects, self.config.ae_rate_bytes, clock=env.monotonic)
        self.exchanger = Exchanger(trees, peers, local, self.limiter, limits=config.limits,
                                   timeout_s=config.request_timeout_ms / 1000)
        self._slots: asyncio.Semaphore | None = None  # exchanges running at once (created on the loop)
        self._next = 0  # round-robin position of the background loop
        self.passes = 0  # repair passes finished (all primaries reached or not)
        self.exchanges = 0  # exchanges finished
        self.failures = 0  # exchanges that failed (peer down, timeout, error)
        self.totals = ExchangeStats()  # what passes moved over the node's lifetime (repaired: unused)
        self.keys_repaired = 0
        self.reaped = 0  # tombstones this node deleted
        self.reap_blocked = 0  # reap rounds stopped because some member could not confirm

    def handlers(self) -> dict[str, Handler]:
        return {p.OP_AE_REPAIR: self.handle_repair}

    def handle_repair(self, responder: Responder, req: Request) -> None:
        """``dynq repair``: a pass of one partition now (``rebuild``: verify the trees first)."""
        partition = self.server.partition_field(req.body, tracked=False)
        rebuild = req.body.get("rebuild") is True
        self.server.reply_when_done(responder, self.repair_partition(partition, rebuild=rebuild))

    # --- the background loop --------------------------------------------------------------

    async def run(self) -> None:
        """Repair passes round-robin over this node's partitions, paced by ``interval_ms``."""
        if not self.config.ae_enabled:
            return
        while True:
            await asyncio.sleep(self.config.ae_interval_ms / 1000)
            partitions = self.trees.tracked_partitions()
            if not partitions:
                continue
            partition = partitions[self._next % len(partitions)]
            self._next += 1
            primaries = self.trees.primaries(partition)
            # Every primary reaps only through a pass that reached all of them, so one is enough.
            # (An exception ends the loop; the node's service group restarts it, at the next partition.)
            await self.repair_partition(partition, reap=primaries[0] == self.name)

    # --- a repair pass ------------------------------------------------------------------

    async def repair_partition(self, partition: int, *, rebuild: bool = False, reap: bool = True) -> dict[str, Any]:
        """Exchange ``partition`` with every other primary (B, C, B: everyone ends with the
        union), then reap tombstones if every primary was reached."""
        trees = self.trees
        primaries = trees.primaries(partition)  # of the partition, for the tree's n
        if self.name not in primaries:
            raise InvalidRequest(f"{self.name} is not a primary of partition {partition} (primaries: {list(primaries)})")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.ae_concurrency)
        peers = [name for name in primaries if name != self.name]
        total = ExchangeStats()
        skipped: list[str] = []
        failed: dict[str, str] = {}
        fixed = 0
        async with self._slots:
            info = trees.info.get(partition)
            stale = info is None or not info.verified_ms or (
                self.env.wall_ms() - info.verified_ms > self.config.ae_rebuild_interval_s * 1000)
            if rebuild or stale:
                fixed += await trees.verify(partition)
            if rebuild:
                for peer in peers:
                    if self.peers.is_up(peer):
                        try:
                            body = await self.exchanger.call(peer, p.OP_AE_VERIFY, {"p": partition}, total, timeout=600.0)
                            fixed += int(body.get("fixed", 0))
                        except DynqError as exc:
                            failed[peer] = exc.message
            for peer in peers + peers[:-1]:
                if peer in failed or peer in skipped:
                    continue
                if not self.peers.is_up(peer):
                    skipped.append(peer)
                    continue
                try:
                    total.add(await self.exchanger.exchange(partition, peer))
                    self.exchanges += 1
                except DynqError as exc:
                    self.failures += 1
                    failed[peer] = exc.message
                    log.warning("anti-entropy exchange of partition %d with %s failed: %s", partition, peer, exc)
            complete = not skipped and not failed
            self.passes += 1
            self.keys_repaired += len(total.repaired)
            self.totals.add(ExchangeStats(total.segments, total.keys_sent, total.keys_received,
                                          total.bytes_sent, total.bytes_received))
            trees.record(partition, exchanged=complete, keys_repaired=len(total.repaired))
            reaped = 0
            if complete and reap:
                try:
                    reaped = await self.reap(partition)
                except DynqError as exc:
                    log.warning("reaping partition %d failed: %s", partition, exc)
        if total.repaired:
            log.info("anti-entropy: partition %d: %d keys repaired (%d sent, %d received, %d bytes)",
                     partition, len(total.repaired), total.keys_sent, total.keys_received,
                     total.bytes_sent + total.bytes_received)
        home, n = trees.split(partition)
        return {
            "partition": home,
            "n": n,
            "tree": partition,  # tree id: the partition, or partition + q * n for a bucket's other n
            "complete": complete,
            "skipped": skipped,
            "failed": failed,
            "segments": total.segments,
            "keys_repaired": len(total.repaired),
            "keys_sent": total.keys_sent,
            "keys_received": total.keys_received,
            "bytes": total.bytes_sent + total.bytes_received,
            "tree_fixes": fixed,
            "reaped": reaped,
            "sample": sorted(total.repaired)[:SAMPLE_KEYS],
        }

    async def reap(self, partition: int, *, expired: bool = False) -> int:
        """Delete tombstones past the grace period (``expired``: objects whose values all
        expired more than the expiry grace ago) that every primary holds identically,
        while no member holds a hint or (as a non-primary) a copy of the key."""
        trees = self.trees
        if self.cluster.state.next_ring is not None:
            # A membership change is moving data: an incoming replica may hold an older copy
            # of a key it has not yet seen deleted. Reap once the ring has settled.
            self.reap_blocked += 1
            return 0
        if expired:
            before = self.env.wall_ms() - self.config.ae_expiry_grace_s * 1000
            found = trees.expired_candidates(partition, before, self.config.ae_expiry_batch)
        else:
            older_than = self.env.wall_ms() - self.config.ae_tombstone_grace_s * 1000
            found = trees.reap_candidates(partition, older_than, REAP_BATCH)
        candidates = [(k, h) for k, h in found if not self.storage.hints_for_key(k)]
        if not candidates:
            return 0
        primaries = set(trees.primaries(partition))
        others = [m.name for m in self.cluster.state.members if m.name != self.name]
        keys = [k for k, _ in candidates]
        st = ExchangeStats()
        replies = await asyncio.gather(
            *(self.exchanger.call(m, p.OP_AE_REAP_CHECK, {"p": partition, "k": keys}, st) for m in others),
            return_exceptions=True)
        confirmed = [True] * len(candidates)
        for member, reply in zip(others, replies):
            if isinstance(reply, BaseException):  # an unreachable member may hold a hint: wait
                self.reap_blocked += 1
                log.info("not reaping partition %d: %s did not answer (%s)", partition, member, reply)
                return 0
            hashes, held, hinted = reply.get("h"), reply.get("held"), reply.get("hinted")
            if not all(isinstance(x, list) and len(x) == len(keys) for x in (hashes, held, hinted)):
                raise ProtocolError(f"{member}: ae_reap_check reply does not match the request")
            assert isinstance(hashes, list) and isinstance(held, list) and isinstance(hinted, list)
            for i, (_, h) in enumerate(candidates):
                if hinted[i] is not False:
                    confirmed[i] = False
                elif member in primaries:
                    confirmed[i] = confirmed[i] and hashes[i] == h
                else:
                    confirmed[i] = confirmed[i] and held[i] is False
        items = [c for c, ok in zip(candidates, confirmed) if ok]
        if not items:
            return 0
        wire = [[k, h] for k, h in items]
        for peer in sorted(primaries - {self.name}):
            await self.exchanger.call(peer, p.OP_AE_REAP, {"p": partition, "k": wire}, st)
        self.storage.flush()  # compare against committed state only
        deleted = trees.delete_if_unchanged(partition, [(k, h) for k, h in items if not self.storage.hints_for_key(k)])
        self.reaped += len(deleted)
        if deleted:
            log.log(logging.DEBUG if expired else logging.INFO, "reaped %d %s of partition %d", len(deleted),
                    "expired objects" if expired else "tombstones", partition)
        return len(deleted)

    # --- expiry ------------------------------------------------------------------------

    async def reclaim_expired(self) -> None:
        """Reclaim objects whose every value has expired, in the background: every
        ``expiry_interval_ms``, each partition this node is the first primary of that has
        such objects past the expiry grace is reaped in batches of ``expiry_batch`` (the
        same all-primaries compare-and-delete as tombstones, so an older copy anywhere
        blocks it and nothing superseded comes back). Runs without waiting for a repair
        pass: every replica holds the same expiry, so their leaves already agree."""
        if not self.config.ae_enabled:
            return
        while True:
            await asyncio.sleep(self.config.ae_expiry_interval_ms / 1000)
            before = self.env.wall_ms() - self.config.ae_expiry_grace_s * 1000
            for partition in self.trees.tracked_partitions():
                primaries = self.trees.primaries(partition)
                if not primaries or primaries[0] != self.name or not self.trees.has_expired(partition, before):
                    continue
                try:
                    while await self.reap(partition, expired=True) >= self.config.ae_expiry_batch:
                        await asyncio.sleep(0)  # a full batch: there may be more
                except (DynqError, OSError) as exc:
                    log.warning("reclaiming expired objects of partition %d failed: %s", partition, exc)

    # --- metrics ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now_ms = self.env.wall_ms()
        partitions: dict[str, Any] = {}
        oldest: int | None = None
        never = 0
        for partition in self.trees.tracked_partitions():
            info = self.trees.info.get(partition)
            exchanged = info.exchanged_ms if info else 0
            if exchanged:
                oldest = exchanged if oldest is None else min(oldest, exchanged)
            else:
                never += 1
            partitions[str(partition)] = {
                "last_exchange_ms": exchanged,
                "keys_repaired": info.keys_repaired if info else 0,
                "tree_build_ms": round(info.build_ms, 1) if info else 0.0,
            }
        started_ms = int(self.started * 1000)
        horizon_from = started_ms if never else (oldest or started_ms)
        return {
            "enabled": self.config.ae_enabled,
            "passes": self.passes,
            "exchanges": self.exchanges,
            "exchange_failures": self.failures,
            "keys_repaired": self.keys_repaired,
            "keys_sent": self.totals.keys_sent,
            "keys_received": self.totals.keys_received,
            "bytes_sent": self.totals.bytes_sent,
            "bytes_received": self.totals.bytes_received,
            "tombstones_reaped": self.reaped + self.server.reaped - self.trees.expired_reclaimed,
            "expired_reclaimed": self.trees.expired_reclaimed,
            "reaps_blocked": self.reap_blocked,
            "tree_fixes": self.trees.fixed_by_verify,
            "partitions_never_exchanged": never,
            # age of the oldest partition this node has not completed a pass of
            "horizon_s": round(max(0, now_ms - horizon_from) / 1000, 1),
            "partitions": partitions,
        }
