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
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from dynq_client import protocol as p
from dynq_client.errors import DynqError, InvalidRequest, ProtocolError, StorageError, Unavailable
from dynq_client.protocol import Request
from dynq_client.versions import decode_object, encode_object, merge

from ..server.responder import Responder
from .merkle import HASH_BYTES, differing_children, diff_keys, hash_bytes, hash_int
from .trees import PartitionTrees

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger(__name__)

LEVEL_BATCH = 512  # tree nodes asked for per ae_level request
SEGMENT_BATCH = 8  # segments per ae_keys request (~15 keys each at 1M keys per node); each side reads them in one
# synchronous step, so this bounds a loop stall: 32 made put p99 under repair 2.6x idle, 8 made it 1.65x
OBJECT_BATCH = 64  # keys asked for per ae_objects request, objects merged and pushed per paced step (small: the loop stays responsive)
REAP_BATCH = 1000  # tombstones considered per reap round
SAMPLE_KEYS = 100  # repaired keys reported back by ae_repair (bounded)


class RateLimiter:
    """Two token buckets (objects/s and bytes/s) with ``burst_s`` of credit.

    :meth:`delay` is pure given the clock: it books the amounts and returns how long to
    wait before using them. Bookings are virtual times ("paid up to"), GCRA style.
    """

    def __init__(self, objects_per_s: float, bytes_per_s: float, burst_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.objects_per_s, self.bytes_per_s, self.burst_s = objects_per_s, bytes_per_s, burst_s
        self.clock = clock
        self._objects_at = 0.0  # virtual time up to which the object budget is spent
        self._bytes_at = 0.0

    def delay(self, objects: int, nbytes: int) -> float:
        now = self.clock()
        floor = now - self.burst_s
        self._objects_at = max(self._objects_at, floor) + objects / self.objects_per_s
        self._bytes_at = max(self._bytes_at, floor) + nbytes / self.bytes_per_s
        return max(0.0, max(self._objects_at, self._bytes_at) - now)

    async def take(self, objects: int, nbytes: int) -> None:
        wait = self.delay(objects, nbytes)
        if wait > 0:
            await asyncio.sleep(wait)


@dataclass
class ExchangeStats:
    """What one exchange (or a pass of several) moved."""

    segments: int = 0  # differing segments found
    keys_sent: int = 0  # objects pushed to the peer
    keys_received: int = 0  # objects from the peer that changed our copy
    bytes_sent: int = 0  # request bodies, msgpack-encoded
    bytes_received: int = 0  # reply bodies
    repaired: set[bytes] = field(default_factory=set)  # keys that differed

    def add(self, other: ExchangeStats) -> None:
        self.segments += other.segments
        self.keys_sent += other.keys_sent
        self.keys_received += other.keys_received
        self.bytes_sent += other.bytes_sent
        self.bytes_received += other.bytes_received
        self.repaired |= other.repaired


class AntiEntropy:
    """The node's trees, the exchange protocol (both sides), the scheduler and reaping."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.config = node.config
        self.trees = PartitionTrees(node.storage, node.name, lambda: node.ring)
        self.limiter = RateLimiter(self.config.ae_rate_objects, self.config.ae_rate_bytes)
        self._slots: asyncio.Semaphore | None = None  # exchanges running at once (created on the loop)
        self._next = 0  # round-robin position of the background loop
        self.passes = 0  # repair passes finished (all primaries reached or not)
        self.exchanges = 0  # exchanges finished
        self.failures = 0  # exchanges that failed (peer down, timeout, error)
        self.totals = ExchangeStats()  # what passes moved over the node's lifetime (repaired: unused)
        self.keys_repaired = 0
        self.reaped = 0  # tombstones this node deleted
        self.reap_blocked = 0  # reap rounds stopped because some member could not confirm

    def handlers(self) -> dict[str, Callable[[Responder, Request], None]]:
        return {
            p.OP_AE_ROOT: self.handle_root,
            p.OP_AE_LEVEL: self.handle_level,
            p.OP_AE_KEYS: self.handle_keys,
            p.OP_AE_OBJECTS: self.handle_objects,
            p.OP_AE_VERIFY: self.handle_verify,
            p.OP_AE_REAP_CHECK: self.handle_reap_check,
            p.OP_AE_REAP: self.handle_reap,
            p.OP_AE_REPAIR: self.handle_repair,
            p.OP_AE_TREE: self.handle_tree,
        }

    @property
    def timeout(self) -> float:
        return self.config.request_timeout_ms / 1000

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
            plist = self.node.ring.preference_list(partition)
            # Every primary reaps only through a pass that reached all of them, so one is enough.
            # (An exception ends the loop; the node's service group restarts it, at the next partition.)
            await self.repair_partition(partition, reap=plist.primaries[0] == self.node.name)

    # --- a repair pass ------------------------------------------------------------------

    async def repair_partition(self, partition: int, *, rebuild: bool = False, reap: bool = True) -> dict[str, Any]:
        """Exchange ``partition`` with every other primary (B, C, B: everyone ends with the
        union), then reap tombstones if every primary was reached."""
        node, trees = self.node, self.trees
        primaries = node.ring.preference_list(partition).primaries
        if node.name not in primaries:
            raise InvalidRequest(f"{node.name} is not a primary of partition {partition} (primaries: {list(primaries)})")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.config.ae_concurrency)
        peers = [name for name in primaries if name != node.name]
        total = ExchangeStats()
        skipped: list[str] = []
        failed: dict[str, str] = {}
        fixed = 0
        async with self._slots:
            info = trees.info.get(partition)
            stale = info is None or not info.verified_ms or (
                time.time() * 1000 - info.verified_ms > self.config.ae_rebuild_interval_s * 1000)
            if rebuild or stale:
                fixed += await trees.verify(partition)
            if rebuild:
                for peer in peers:
                    if node.is_up(peer):
                        try:
                            body = await self._call(peer, p.OP_AE_VERIFY, {"p": partition}, total, timeout=600.0)
                            fixed += int(body.get("fixed", 0))
                        except DynqError as exc:
                            failed[peer] = exc.message
            for peer in peers + peers[:-1]:
                if peer in failed or peer in skipped:
                    continue
                if not node.is_up(peer):
                    skipped.append(peer)
                    continue
                try:
                    total.add(await self.exchange(partition, peer))
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
        return {
            "partition": partition,
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

    async def exchange(self, partition: int, peer: str) -> ExchangeStats:
        """One exchange of ``partition`` with ``peer``: descend, diff keys, merge both ways."""
        st = ExchangeStats()
        tree = await self.trees.load(partition)
        body = await self._call(peer, p.OP_AE_ROOT, {"p": partition}, st)
        if body.get("ready") is not True:
            raise Unavailable(f"{peer}: its tree of partition {partition} is not built yet")
        if _hash_field(body, "h") == tree.root:
            return st
        frontier = [0]
        for depth in range(tree.depth):
            remote: dict[int, list[int]] = {}
            for chunk in _chunks(frontier, LEVEL_BATCH):
                body = await self._call(peer, p.OP_AE_LEVEL, {"p": partition, "d": depth, "i": chunk}, st)
                children = body.get("c")
                if not isinstance(children, list) or len(children) != len(chunk):
                    raise ProtocolError(f"{peer}: ae_level reply does not match the request")
                for index, blob in zip(chunk, children):
                    remote[index] = _split_hashes(blob)
            try:
                frontier = differing_children(tree, depth, remote)
            except ValueError as exc:
                raise ProtocolError(f"{peer}: {exc}") from exc
            if not frontier:  # a write that landed meanwhile made them equal
                return st
        st.segments = len(frontier)
        pending = list(frontier)
        while pending:  # a few segments at a time: every synchronous step stays small
            received = st.bytes_received
            body = await self._call(peer, p.OP_AE_KEYS, {"p": partition, "s": pending[:SEGMENT_BATCH]}, st)
            served = _served_segments(body, peer, set(pending))
            pending = [seg for seg in pending if seg not in served]
            await self.limiter.take(0, st.bytes_received - received)
            remote_keys = {k: h for pairs in served.values() for k, h in pairs.items()}
            local_keys = {k: hash_int(h) for pairs in self.trees.segment_keys(partition, list(served)).values()
                          for k, h in pairs}
            diff = diff_keys(local_keys, remote_keys)
            theirs = await self._pull(partition, peer, sorted(diff.only_remote | diff.different), st)
            await self._merge_and_push(peer, sorted(diff.keys), theirs, st)
            st.repaired |= diff.keys
        return st

    async def _pull(self, partition: int, peer: str, keys: list[bytes], st: ExchangeStats) -> dict[bytes, bytes | None]:
        out: dict[bytes, bytes | None] = {}
        while keys:
            chunk = keys[:OBJECT_BATCH]
            body = await self._call(peer, p.OP_AE_OBJECTS, {"p": partition, "k": chunk}, st)
            blobs = body.get("ob")
            if not isinstance(blobs, list) or not 0 < len(blobs) <= len(chunk) or not all(
                    b is None or isinstance(b, bytes) for b in blobs):
                raise ProtocolError(f"{peer}: ae_objects reply does not match the request")
            for key, blob in zip(chunk, blobs):
                out[key] = blob
            keys = keys[len(blobs):]
            await self.limiter.take(len(blobs), sum(len(b) for b in blobs if b))
        return out

    async def _merge_and_push(self, peer: str, keys: list[bytes], theirs_blobs: dict[bytes, bytes | None],
                              st: ExchangeStats) -> None:
        node, loop, peers = self.node, asyncio.get_running_loop(), self.node.peers
        assert peers is not None
        waits: list[asyncio.Future[Any]] = []
        for chunk in _chunks(keys, OBJECT_BATCH):
            pushes: list[tuple[bytes, bytes]] = []
            for key in chunk:
                blob = theirs_blobs.get(key)
                theirs = decode_object(blob, node.limits) if blob is not None else None
                mine = node.storage.current(key)
                if mine is None and theirs is None:
                    continue
                merged = merge(mine, theirs)
                merged_blob = blob if blob is not None and merged == theirs else encode_object(merged)
                if merged != mine:
                    local: asyncio.Future[StorageError | None] = loop.create_future()
                    node.stage_local(key, merged, merged_blob, _resolver(local))
                    waits.append(local)
                    st.keys_received += 1
                if merged != theirs:
                    pushes.append((key, merged_blob))
            await self.limiter.take(len(pushes), sum(len(b) for _, b in pushes))
            for key, merged_blob in pushes:  # sent in one loop pass: one batch message
                st.bytes_sent += len(merged_blob) + len(key) + 16
                waits.append(peers.call_replicate(peer, key, merged_blob, None, self.timeout))
                st.keys_sent += 1
        for outcome in await asyncio.gather(*waits, return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
            if isinstance(outcome, DynqError):  # a local commit that failed
                raise outcome

    async def _call(self, peer: str, op: str, body: dict[str, Any], st: ExchangeStats,
                    timeout: float | None = None) -> dict[str, Any]:
        """One request to a peer, its bytes counted; an error reply raises it."""
        assert self.node.peers is not None
        st.bytes_sent += len(p.packb(body))
        result = await self.node.peers.call(peer, op, body, self.timeout if timeout is None else timeout)
        st.bytes_received += len(p.packb(result))
        return result

    # --- tombstone reaping --------------------------------------------------------------

    async def reap(self, partition: int) -> int:
        """Delete tombstones past the grace period that every primary holds identically,
        while no member holds a hint or (as a non-primary) a copy of the key."""
        node, trees = self.node, self.trees
        if node.state.next_ring is not None:
            # A membership change is moving data: an incoming replica may hold an older copy
            # of a key it has not yet seen deleted. Reap once the ring has settled.
            self.reap_blocked += 1
            return 0
        older_than = int(time.time() * 1000) - self.config.ae_tombstone_grace_s * 1000
        candidates = [(k, h) for k, h in trees.reap_candidates(partition, older_than, REAP_BATCH)
                      if not node.storage.hints_for_key(k)]
        if not candidates:
            return 0
        primaries = set(node.ring.preference_list(partition).primaries)
        others = [m.name for m in node.state.members if m.name != node.name]
        keys = [k for k, _ in candidates]
        st = ExchangeStats()
        replies = await asyncio.gather(
            *(self._call(m, p.OP_AE_REAP_CHECK, {"p": partition, "k": keys}, st) for m in others),
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
        for peer in sorted(primaries - {node.name}):
            await self._call(peer, p.OP_AE_REAP, {"p": partition, "k": wire}, st)
        node.storage.flush()  # compare against committed state only
        deleted = trees.delete_if_unchanged(partition, [(k, h) for k, h in items if not node.storage.hints_for_key(k)])
        self.reaped += len(deleted)
        if deleted:
            log.info("reaped %d tombstones of partition %d", len(deleted), partition)
        return len(deleted)

    # --- handlers (the other side of an exchange, and admin) --------------------------------

    def _partition(self, body: dict[str, Any], tracked: bool = True) -> int:
        partition = p.get_int(body, "p", lo=0, hi=self.node.ring.q - 1)
        if partition is None:
            raise InvalidRequest("missing field 'p'")
        if tracked and not self.trees.is_tracked(partition):
            raise InvalidRequest(f"{self.node.name} is not a primary of partition {partition}")
        return partition

    def _keys(self, body: dict[str, Any]) -> list[bytes]:
        keys = body.get("k")
        if not isinstance(keys, list) or len(keys) > REAP_BATCH or not all(
                isinstance(k, bytes) and 0 < len(k) <= self.node.limits.max_key_bytes for k in keys):
            raise InvalidRequest(f"field 'k' must be a list of at most {REAP_BATCH} keys")
        return keys

    def handle_root(self, responder: Responder, req: Request) -> None:
        partition = self._partition(req.body)
        if partition not in self.trees.trees:  # load it in slices, then answer
            self._spawn(responder, self._root_reply(partition))
            return
        ready = self.trees.verified(partition) and partition not in self.trees.verifying
        responder.ok({"h": hash_bytes(self.trees.trees[partition].root), "ready": ready})

    async def _root_reply(self, partition: int) -> dict[str, Any]:
        tree = await self.trees.load(partition)
        ready = self.trees.verified(partition) and partition not in self.trees.verifying
        return {"h": hash_bytes(tree.root), "ready": ready}

    def handle_level(self, responder: Responder, req: Request) -> None:
        partition = self._partition(req.body)
        tree = self.trees.trees.get(partition)
        if tree is None:  # ae_root loads it first; a tree dropped meanwhile means "start again"
            raise Unavailable(f"tree of partition {partition} is not loaded; start from ae_root")
        depth = p.get_int(req.body, "d", lo=0, hi=tree.depth - 1) if tree.depth else None
        indices = req.body.get("i")
        if depth is None or not isinstance(indices, list) or len(indices) > LEVEL_BATCH * 8 or not all(
                type(i) is int and 0 <= i < len(tree.levels[depth]) for i in indices):
            raise InvalidRequest("ae_level needs 'd' (a depth above the segments) and 'i' (node indices)")
        responder.ok({"c": [b"".join(hash_bytes(h) for h in tree.children(depth, i)) for i in indices]})

    def handle_keys(self, responder: Responder, req: Request) -> None:
        partition = self._partition(req.body)
        segments = req.body.get("s")
        if not isinstance(segments, list) or not segments or len(segments) > SEGMENT_BATCH * 8 or not all(
                type(s) is int and 0 <= s < self.trees.segments for s in segments):
            raise InvalidRequest("field 's' must be a non-empty list of segment numbers")
        budget = self.node.limits.max_message_bytes // 2
        out: list[list[Any]] = []
        used = 0
        for seg in segments:  # at least one segment, then as many as fit in the budget
            pairs = self.trees.segment_keys(partition, [seg])[seg]
            size = sum(len(k) + HASH_BYTES + 8 for k, _ in pairs) + 16
            if out and used + size > budget:
                break
            out.append([seg, [[k, h] for k, h in pairs]])
            used += size
        responder.ok({"s": out})

    def handle_objects(self, responder: Responder, req: Request) -> None:
        self._partition(req.body, tracked=False)
        keys = self._keys(req.body)
        budget = self.node.limits.max_message_bytes // 2
        out: list[bytes | None] = []
        used = 0
        for key in keys:
            blob = self.node.storage.get_blob(key)
            size = len(blob or b"") + 8
            if out and used + size > budget:
                break
            out.append(blob)
            used += size
        responder.ok({"ob": out})

    def handle_verify(self, responder: Responder, req: Request) -> None:
        partition = self._partition(req.body)
        self._spawn(responder, self._verify_reply(partition))

    async def _verify_reply(self, partition: int) -> dict[str, Any]:
        return {"fixed": await self.trees.verify(partition)}

    def handle_reap_check(self, responder: Responder, req: Request) -> None:
        partition = self._partition(req.body, tracked=False)
        keys = self._keys(req.body)
        tracked = self.trees.is_tracked(partition)
        storage = self.node.storage
        responder.ok({
            "h": [self.trees.leaf(partition, k) if tracked else None for k in keys],
            "held": [storage.current(k) is not None for k in keys],
            "hinted": [bool(storage.hints_for_key(k)) for k in keys],
        })

    def handle_reap(self, responder: Responder, req: Request) -> None:
        partition = self._partition(req.body)
        raw = req.body.get("k")
        if not isinstance(raw, list) or len(raw) > REAP_BATCH or not all(
                isinstance(i, list) and len(i) == 2 and isinstance(i[0], bytes) and isinstance(i[1], bytes)
                for i in raw):
            raise InvalidRequest("field 'k' must be a list of [key, leaf hash] pairs")
        storage = self.node.storage
        storage.flush()  # compare against committed state only
        items = [(bytes(k), bytes(h)) for k, h in raw if not storage.hints_for_key(k)]
        deleted = self.trees.delete_if_unchanged(partition, items)
        self.reaped += len(deleted)
        responder.ok({"reaped": len(deleted)})

    def handle_repair(self, responder: Responder, req: Request) -> None:
        partition = self._partition(req.body, tracked=False)
        rebuild = req.body.get("rebuild") is True
        self._spawn(responder, self.repair_partition(partition, rebuild=rebuild))

    def handle_tree(self, responder: Responder, req: Request) -> None:
        """Roots of this node's partitions: [partition, root, leaf rows, verified]."""
        out = []
        for partition in self.trees.tracked_partitions():
            out.append([partition, hash_bytes(self.trees.tree(partition).root),
                        self.trees.leaf_count(partition), self.trees.verified(partition)])
        responder.ok({"partitions": out})

    def _spawn(self, responder: Responder, work: Any) -> None:
        """Run a coroutine for a request and reply with its result (or its error)."""

        async def runner() -> None:
            try:
                responder.ok(await work)
            except asyncio.CancelledError:
                responder.fail(Unavailable(f"{self.node.name} is shutting down"))
            except DynqError as exc:
                responder.fail(exc)
            except Exception as exc:
                log.exception("anti-entropy request %s failed", responder.op)
                responder.fail(StorageError(f"{type(exc).__name__}: {exc}"))

        assert self.node.group is not None
        self.node.group.spawn(runner(), f"{responder.op} request")

    # --- metrics ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        now_ms = int(time.time() * 1000)
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
        started_ms = int(self.node.started * 1000)
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
            "tombstones_reaped": self.reaped,
            "reaps_blocked": self.reap_blocked,
            "tree_fixes": self.trees.fixed_by_verify,
            "partitions_never_exchanged": never,
            # age of the oldest partition this node has not completed a pass of
            "horizon_s": round(max(0, now_ms - horizon_from) / 1000, 1),
            "partitions": partitions,
        }


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _hash_field(body: dict[str, Any], name: str) -> int:
    value = body.get(name)
    if not isinstance(value, bytes) or len(value) != HASH_BYTES:
        raise ProtocolError(f"field '{name}' must be a {HASH_BYTES}-byte hash")
    return hash_int(value)


def _split_hashes(blob: object) -> list[int]:
    if not isinstance(blob, bytes) or len(blob) % HASH_BYTES:
        raise ProtocolError("children hashes must be bytes, a multiple of the hash size")
    return [hash_int(blob[i:i + HASH_BYTES]) for i in range(0, len(blob), HASH_BYTES)]


def _served_segments(body: dict[str, Any], peer: str, asked: set[int]) -> dict[int, dict[bytes, int]]:
    served = body.get("s")
    if not isinstance(served, list) or not served:
        raise ProtocolError(f"{peer}: ae_keys served no segment")
    out: dict[int, dict[bytes, int]] = {}
    for item in served:
        if not isinstance(item, list) or len(item) != 2 or item[0] not in asked or not isinstance(item[1], list):
            raise ProtocolError(f"{peer}: malformed ae_keys reply")
        pairs: dict[bytes, int] = {}
        for pair in item[1]:
            if not isinstance(pair, list) or len(pair) != 2 or not isinstance(pair[0], bytes):
                raise ProtocolError(f"{peer}: malformed ae_keys pair")
            pairs[pair[0]] = _hash_field({"h": pair[1]}, "h")
        out[int(item[0])] = pairs
    return out


def _resolver(future: asyncio.Future[StorageError | None]) -> Callable[[StorageError | None], None]:
    def done(error: StorageError | None) -> None:
        if not future.done():
            future.set_result(error)
    return done
