"""Operator and client plumbing around the data: ping (deep), routing table, stats,
inspect one key, online backup."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, Callable

from dynq_client import protocol as p
from dynq_client.errors import DynqError, InvalidRequest, StorageError
from dynq_client.protocol import Reply, Request
from dynq_client.routing import RoutingTable

from ..config import NodeConfig
from ..server import fields
from ..server.peers import PeerLink
from ..server.ports import ClusterView, Handler
from ..server.responder import Responder
from ..store.storage import Storage

DEEP_PING_TIMEOUT_S = 1.0  # a peer that does not answer a ping within this is not "reachable"

CLIENT_OPS = frozenset({p.OP_PING, p.OP_ROUTING_TABLE, p.OP_STATS})
"""Of these ops, what a client key may ask for under CURVE."""


class KvAdmin:
    """ping, routing_table, stats, inspect, backup."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cluster: ClusterView, peers: PeerLink, storage: Storage,
                 config: NodeConfig, *, actor: str, stats: Callable[[], dict[str, Any]]) -> None:
        self.loop = loop
        self.cluster = cluster
        self.peers = peers
        self.storage = storage
        self.config = config
        self.name = config.name
        self.actor = actor
        self.stats = stats  # the stats reply
        self._backup_pages = 0  # progress of the running backup

    def handlers(self) -> dict[str, Handler]:
        return {
            p.OP_PING: self.handle_ping,
            p.OP_ROUTING_TABLE: self.handle_routing_table,
            p.OP_STATS: self.handle_stats,
            p.OP_INSPECT: self.handle_inspect,
            p.OP_BACKUP: self.handle_backup,
        }

    def routing_table(self) -> RoutingTable:
        limits = self.config.limits
        return RoutingTable(ring=self.cluster.ring, r=self.config.r, w=self.config.w,
                            max_key_bytes=limits.max_key_bytes, max_value_bytes=limits.max_value_bytes,
                            buckets=self.cluster.state.buckets)

    def handle_ping(self, responder: Responder, req: Request) -> None:
        ring = self.cluster.ring
        body: dict[str, Any] = {"name": self.name, "actor": self.actor, "epoch": ring.epoch}
        if req.body.get("peers") is not True:
            responder.ok(body)
            return
        # Deep ping: which peers answer this node right now (readiness checks, status).
        others = [m.name for m in ring.members if m.name != self.name]
        answered: dict[str, bool] = {}

        def pong(name: str, reply: Reply | None, error: DynqError | None) -> None:
            answered[name] = error is None and reply is not None and reply.ok
            if len(answered) == len(others):
                responder.ok(dict(body, reachable=sorted(n for n, ok in answered.items() if ok)))

        if not others:
            responder.ok(dict(body, reachable=[]))
        for name in others:
            self.peers.request(name, p.OP_PING, {}, DEEP_PING_TIMEOUT_S, functools.partial(pong, name))

    def handle_routing_table(self, responder: Responder, req: Request) -> None:
        responder.ok({"table": self.routing_table().to_wire()})

    def handle_stats(self, responder: Responder, req: Request) -> None:
        responder.ok(self.stats())

    def handle_inspect(self, responder: Responder, req: Request) -> None:
        """What this node holds for one key, and which hints it keeps for it (dynq inspect)."""
        key, props = fields.bucket_key(req.body, self.config.limits, self.cluster.state.buckets)
        responder.ok({"ob": self.storage.get_blob(key), "hints": self.storage.hints_for_key(key),
                      "partition": self.cluster.ring.partition_for(key),
                      "n": self.cluster.ring.n if props is None else props.n})

    def handle_backup(self, responder: Responder, req: Request) -> None:
        """Copy the database, consistently and online, to a file on this node's machine."""
        path = p.get_str(req.body, "path")
        assert path is not None
        if not path.startswith("/"):
            raise InvalidRequest("backup path must be absolute (it is a path on the node's machine)")
        self.storage.flush()
        steps = self.storage.backup_steps(path)
        loop = self.loop

        def step() -> None:  # a slice per loop pass: requests keep being served meanwhile
            try:
                pages = next(steps)
            except StopIteration:
                responder.ok({"path": path, "pages": self._backup_pages, "keys": self.storage.count()})
                return
            except Exception as exc:
                responder.fail(StorageError(f"backup to {path} failed: {type(exc).__name__}: {exc}"))
                return
            self._backup_pages = pages
            loop.call_soon(step)

        self._backup_pages = 0
        step()
