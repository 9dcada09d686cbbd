"""Anti-entropy, the answering side (riak_kv_index_hashtree's job): a peer's exchange
descends this node's trees through these ops; see :mod:`dynq.repair.anti_entropy`.

======================  ===========================================================
``ae_root``             the partition's root hash (its tree loaded first, in slices)
``ae_level``            children hashes of tree nodes
``ae_keys``             (key, leaf hash) of segments, as many as fit a message
``ae_objects``          objects of keys
``ae_verify``           rebuild the partition's leaves from the objects, fix drift
``ae_reap_check``       per key: leaf hash, whether held, whether hinted
``ae_reap``             compare-and-delete tombstones
``ae_tree``             the roots of every partition (for `dynq repair --status`)
======================  ===========================================================
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine

from dynq_client import protocol as p
from dynq_client.errors import DynqError, InvalidRequest, StorageError, Unavailable
from dynq_client.protocol import Limits, Request

from ..server.ports import ClusterView, Handler, Spawner
from ..server.responder import Responder
from ..store.storage import Storage
from .exchange import LEVEL_BATCH, SEGMENT_BATCH
from .merkle import HASH_BYTES, hash_bytes
from .trees import PartitionTrees

log = logging.getLogger(__name__)

MAX_TREE_N = 1024  # bound of the n in a tree id a peer may name (no cluster has more members)

REAP_BATCH = 1000  # tombstones considered per reap round


class TreeServer:
    """Serves this node's trees, objects and reap decisions to the exchanges of its peers."""

    def __init__(self, trees: PartitionTrees, storage: Storage, cluster: ClusterView, spawner: Spawner, *,
                 limits: Limits) -> None:
        self.trees = trees
        self.storage = storage
        self.cluster = cluster
        self.spawner = spawner  # request-bound work (a tree loaded in slices, a verification)
        self.name = cluster.name
        self.limits = limits
        self.reaped = 0  # tombstones deleted at a peer's request

    def handlers(self) -> dict[str, Handler]:
        return {
            p.OP_AE_ROOT: self.handle_root,
            p.OP_AE_LEVEL: self.handle_level,
            p.OP_AE_KEYS: self.handle_keys,
            p.OP_AE_OBJECTS: self.handle_objects,
            p.OP_AE_VERIFY: self.handle_verify,
            p.OP_AE_REAP_CHECK: self.handle_reap_check,
            p.OP_AE_REAP: self.handle_reap,
            p.OP_AE_TREE: self.handle_tree,
        }

    def partition_field(self, body: dict[str, Any], tracked: bool = True) -> int:
        # a tree id: the partition, or partition + q * n for a bucket's other n (see trees.py)
        partition = p.get_int(body, "p", lo=0, hi=self.cluster.ring.q * (MAX_TREE_N + 1) - 1)
        if partition is None:
            raise InvalidRequest("missing field 'p'")
        if tracked and not self.trees.is_tracked(partition):
            raise InvalidRequest(f"{self.name} is not a primary of partition {partition}")
        return partition

    def _keys(self, body: dict[str, Any]) -> list[bytes]:
        keys = body.get("k")
        if not isinstance(keys, list) or len(keys) > REAP_BATCH or not all(
                isinstance(k, bytes) and 0 < len(k) <= self.limits.max_key_bytes for k in keys):
            raise InvalidRequest(f"field 'k' must be a list of at most {REAP_BATCH} keys")
        return keys

    def handle_root(self, responder: Responder, req: Request) -> None:
        partition = self.partition_field(req.body)
        if partition not in self.trees.trees:  # load it in slices, then answer
            self.reply_when_done(responder, self._root_reply(partition))
            return
        ready = self.trees.verified(partition) and partition not in self.trees.verifying
        responder.ok({"h": hash_bytes(self.trees.trees[partition].root), "ready": ready})

    async def _root_reply(self, partition: int) -> dict[str, Any]:
        tree = await self.trees.load(partition)
        ready = self.trees.verified(partition) and partition not in self.trees.verifying
        return {"h": hash_bytes(tree.root), "ready": ready}

    def handle_level(self, responder: Responder, req: Request) -> None:
        partition = self.partition_field(req.body)
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
        partition = self.partition_field(req.body)
        segments = req.body.get("s")
        if not isinstance(segments, list) or not segments or len(segments) > SEGMENT_BATCH * 8 or not all(
                type(s) is int and 0 <= s < self.trees.segments for s in segments):
            raise InvalidRequest("field 's' must be a non-empty list of segment numbers")
        budget = self.limits.max_message_bytes // 2
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
        self.partition_field(req.body, tracked=False)
        keys = self._keys(req.body)
        budget = self.limits.max_message_bytes // 2
        out: list[bytes | None] = []
        used = 0
        for key in keys:
            blob = self.storage.get_blob(key)
            size = len(blob or b"") + 8
            if out and used + size > budget:
                break
            out.append(blob)
            used += size
        responder.ok({"ob": out})

    def handle_verify(self, responder: Responder, req: Request) -> None:
        partition = self.partition_field(req.body)
        self.reply_when_done(responder, self._verify_reply(partition))

    async def _verify_reply(self, partition: int) -> dict[str, Any]:
        return {"fixed": await self.trees.verify(partition)}

    def handle_reap_check(self, responder: Responder, req: Request) -> None:
        partition = self.partition_field(req.body, tracked=False)
        keys = self._keys(req.body)
        tracked = self.trees.is_tracked(partition)
        storage = self.storage
        responder.ok({
            "h": [self.trees.leaf(partition, k) if tracked else None for k in keys],
            "held": [storage.current(k) is not None for k in keys],
            "hinted": [bool(storage.hints_for_key(k)) for k in keys],
        })

    def handle_reap(self, responder: Responder, req: Request) -> None:
        partition = self.partition_field(req.body)
        raw = req.body.get("k")
        if not isinstance(raw, list) or len(raw) > REAP_BATCH or not all(
                isinstance(i, list) and len(i) == 2 and isinstance(i[0], bytes) and isinstance(i[1], bytes)
                for i in raw):
            raise InvalidRequest("field 'k' must be a list of [key, leaf hash] pairs")
        storage = self.storage
        storage.flush()  # compare against committed state only
        items = [(bytes(k), bytes(h)) for k, h in raw if not storage.hints_for_key(k)]
        deleted = self.trees.delete_if_unchanged(partition, items)
        self.reaped += len(deleted)
        responder.ok({"reaped": len(deleted)})

    def handle_tree(self, responder: Responder, req: Request) -> None:
        """Roots of this node's partitions: [partition, root, leaf rows, verified]."""
        out = []
        for partition in self.trees.tracked_partitions():
            out.append([partition, hash_bytes(self.trees.tree(partition).root),
                        self.trees.leaf_count(partition), self.trees.verified(partition)])
        responder.ok({"partitions": out})

    def reply_when_done(self, responder: Responder, work: Coroutine[Any, Any, dict[str, Any]]) -> None:
        """Run a coroutine for a request and reply with its result (or its error)."""

        async def runner() -> None:
            try:
                responder.ok(await work)
            except asyncio.CancelledError:
                responder.fail(Unavailable(f"{self.name} is shutting down"))
            except DynqError as exc:
                responder.fail(exc)
            except Exception as exc:
                log.exception("anti-entropy request %s failed", responder.op)
                responder.fail(StorageError(f"{type(exc).__name__}: {exc}"))

        self.spawner.spawn(runner(), f"{responder.op} request")
