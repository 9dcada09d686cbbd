"""A dynq node: one process, one asyncio loop, one ROUTER for requests, a DEALER per peer.

Messages are drained from the ROUTER by one ``add_reader`` callback (no task per
request), decoded, and dispatched by op name through :attr:`Node.handlers`. Every
request gets exactly one reply through a :class:`Responder`; malformed requests get a
structured error when their id is readable and are dropped (and counted) otherwise, so
no input can take the node down.

Writes go through the storage's group commit; coordination of client requests is done
by the state machines in :mod:`dynq.kv.coordinator`; replica-to-replica requests go over
the :class:`~dynq_client.transport.RequestMux` of peer DEALER sockets.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
import time
from typing import Any, Callable

import zmq

from dynq_client import protocol as p
from dynq_client.errors import (
    DynqError,
    InternalError,
    InvalidContext,
    InvalidRequest,
    KeyTooLarge,
    NotEnoughReplicas,
    StorageError,
    TooManySiblings,
    Unavailable,
    ValueTooLarge,
)
from dynq_client.health import Health, sloppy_targets
from dynq_client.protocol import Reply, Request, reply_error
from dynq_client.ring import Ring
from dynq_client.routing import RoutingTable
from dynq_client.transport import RequestMux
from dynq_client.versions import (
    VersionedObject,
    decode_context,
    decode_object,
    encode_object,
    merge,
    update,
)

from .cluster.admin import ClusterAdmin
from .cluster.gossip import Gossip, Heartbeat, gossip_address
from .cluster.liveness import Liveness
from .cluster.manager import ClusterManager
from .cluster.membership import ClusterState, Transfer, claimant
from .cluster.transfers import RETRY_MAX_S, PartitionTransfers
from .config import ConfigError, NodeConfig
from .kv.coordinator import GetCoordinator, PutCoordinator, not_executed
from .ops import sdnotify
from .ops.metrics import Latencies, render_prometheus, serve_metrics
from .repair.anti_entropy import AntiEntropy
from .repair.hinted_handoff import HintedHandoff
from .security import GOSSIP_DOMAIN, NodeSecurity
from .server.peers import PeerLink, relay
from .server.ports import Handler, ReplyCallback, ignore_reply
from .server.responder import Responder, guarded
from .server.router import RequestServer
from .server.runtime import Runtime
from .server.services import ServiceGroup
from .server.stats import Stats
from .store.storage import Storage

log = logging.getLogger(__name__)

DEEP_PING_TIMEOUT_S = 1.0  # a peer that does not answer a ping within this is not "reachable"

CLIENT_OPS = frozenset({p.OP_PING, p.OP_ROUTING_TABLE, p.OP_GET, p.OP_PUT, p.OP_DELETE, p.OP_READ_REPAIR, p.OP_STATS})
"""What a client key may ask for under CURVE; every other op needs a peer (node or operator) key."""


class Node:
    """One dynq node. ``asyncio.run(Node(config).serve())`` runs it until SIGTERM."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.name = config.name
        self.limits = config.limits
        self.security: NodeSecurity | None = None
        if config.security == "curve":
            assert config.server_key and config.node_key and config.peer_keys and config.client_keys
            try:
                self.security = NodeSecurity.load(config.server_key, config.node_key, config.peer_keys,
                                                  config.client_keys)
            except ValueError as exc:
                raise ConfigError(f"{config.source}: [security] {exc}") from exc
        self.storage = Storage(config.db_path, synchronous=config.synchronous, limits=config.limits)
        self.actor = self.storage.actor_id(config.name)  # the identity this node mints dots with
        self.cluster = ClusterManager.load(self.storage, config)  # the cluster state, persisted; change events
        self.stats = Stats()
        self.latencies = Latencies()  # per-op request latency histograms
        self._metrics_server: asyncio.AbstractServer | None = None
        self.started = time.time()
        self.handlers: dict[str, Handler] = {
            p.OP_PING: self.handle_ping,
            p.OP_ROUTING_TABLE: self.handle_routing_table,
            p.OP_GET: self.handle_get,
            p.OP_PUT: self.handle_put,
            p.OP_DELETE: self.handle_delete,
            p.OP_REPLICA_GET: self.handle_replica_get,
            p.OP_REPLICA_PUT: self.handle_replica_put,
            p.OP_READ_REPAIR: self.handle_replica_put,
            p.OP_REPLICA_PUT_BATCH: self.handle_replica_put_batch,
            p.OP_STATS: self.handle_stats,
            p.OP_INSPECT: self.handle_inspect,
            p.OP_BACKUP: self.handle_backup,
        }
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runtime: Runtime | None = None  # context, ROUTER, peer mux
        self.server: RequestServer | None = None  # requests in, replies out
        self.group: ServiceGroup | None = None  # background loops and request-bound tasks
        self.mux: RequestMux | None = None  # DEALERs to the peers
        self.peers: PeerLink | None = None  # requests to the peers, over the mux
        self._stopping: asyncio.Event | None = None
        self._backup_pages = 0  # progress of the running backup
        self.health = Health(timeouts_to_down=2)  # this node's view of its peers
        self.liveness: Liveness | None = None  # heartbeats, failure detection, probes
        self.admin: ClusterAdmin | None = None  # membership ops, claimant routing
        self.transfers = PartitionTransfers(self)
        self._left = False  # this node left the cluster: it exits once it handed everything off
        self._replica_timeout = config.request_timeout_ms / 1000
        self.handoff: HintedHandoff | None = None
        self.anti_entropy = AntiEntropy(self)  # Merkle trees, exchange, repair loop, reaping

    # --- the cluster state ---------------------------------------------------------------

    @property
    def state(self) -> ClusterState:
        return self.cluster.state

    @property
    def ring(self) -> Ring:
        return self.cluster.ring

    @property
    def is_member(self) -> bool:
        return self.cluster.is_member

    def _on_cluster_change(self, old: ClusterState, new: ClusterState) -> None:
        """What this node does itself when the cluster state changes: replies carry the new
        epoch, transfers wake up, and a node that left starts its exit."""
        if self.server is not None:
            self.server.epoch = new.ring.epoch
        self.transfers.wake.set()
        if self.name in old.leaving and not self.cluster.is_member and not self._left:
            self._left = True
            log.info("%s has left the cluster; handing off what remains, then exiting", self.name)
            assert self.group is not None
            self.group.spawn(self._exit_when_handed_off(), "exit when handed off")

    async def _exit_when_handed_off(self) -> None:
        """A node that left stops once its transfers and hints are delivered."""
        waited = 0.0
        while self.transfers.busy or self.storage.hint_count:
            await asyncio.sleep(0.5)
            waited += 0.5
            if waited % 30 == 0:
                log.info("left the cluster; waiting for %d hints and %d transfers before exiting",
                         self.storage.hint_count, len(self.transfers.active))
        log.info("%s left the cluster and handed everything off: exiting", self.name)
        self.stop()

    async def tell_claimant(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        assert self.admin is not None
        raw = body["t"]
        return await self.admin.transfer_done(Transfer(raw[0], raw[1], raw[2]))

    def routing_table(self) -> RoutingTable:
        return RoutingTable(
            ring=self.ring,
            r=self.config.r,
            w=self.config.w,
            max_key_bytes=self.limits.max_key_bytes,
            max_value_bytes=self.limits.max_value_bytes,
        )

    # --- lifecycle ---------------------------------------------------------------------

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Bind, connect to peers, and serve until :meth:`stop` (or SIGTERM/SIGINT)."""
        self.loop = loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        security = self.security
        self.runtime = runtime = Runtime.open(loop, self.config, security, self.health)
        self.mux = runtime.mux
        self.peers = PeerLink(loop, runtime.mux, self.health, self.stats, name=self.name, limits=self.limits,
                              timeout_s=self._replica_timeout)

        def open_gossip(on_heartbeat: Callable[[Heartbeat], None]) -> Gossip:
            return Gossip(
                loop, runtime.context, gossip_address(self.config.listen), on_heartbeat,
                secure_pub=(lambda sock: security.serve(sock, GOSSIP_DOMAIN)) if security else None,
                secure_sub=security.own.apply if security else None,
            )

        try:
            self.liveness = liveness = Liveness(loop, self.cluster, self.peers, self.health, self.stats, self.config,
                                                open_gossip)
        except (zmq.ZMQError, ValueError) as exc:
            runtime.close()
            raise ConfigError(f"cannot bind gossip for {self.config.listen}: {exc}") from exc
        runtime.own(liveness.gossip.close)
        self.admin = ClusterAdmin(self.cluster, self.peers, self.config, keys=self.storage.count)
        self.server = RequestServer(
            loop, runtime.router, self.stats, self.latencies, name=self.name, limits=self.limits,
            max_in_flight_per_connection=self.config.max_in_flight_per_connection, security=security,
            epoch=self.ring.epoch,
        )
        self.server.register(self.handlers, CLIENT_OPS)
        self.server.register(self.admin.handlers())
        self.server.register(self.transfers.handlers())
        self.server.register(self.anti_entropy.handlers())
        self.cluster.subscribe(liveness.on_cluster_change)
        self.cluster.subscribe(self._on_cluster_change)
        liveness.start()
        self.storage.start_checkpointer(self.config.checkpoint_interval_ms, self.config.wal_limit_mb * 1024 * 1024)
        self.server.start()
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop), (signal.SIGHUP, self.reload)):
            try:
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests in-process)
                pass
        log.info(
            "node %s (actor %s) serving on %s; ring epoch %d, %d members, n=%d q=%d",
            self.name, self.actor, self.config.listen, self.ring.epoch, len(self.ring.members),
            self.ring.n, self.ring.q,
        )
        self.handoff = HintedHandoff(self)
        self.group = group = ServiceGroup(loop)
        group.add("probe of down peers", liveness.run_probes)
        group.add("hinted handoff", self.handoff.run)
        group.add("gossip", liveness.run_gossip)
        group.add("transfers", self.transfers.run, restart_delay_s=RETRY_MAX_S)
        group.add("anti-entropy", self.anti_entropy.run)
        if self.config.metrics_port:
            self._metrics_server = await serve_metrics(
                self.config.metrics_host, self.config.metrics_port,
                lambda: render_prometheus(self.stats_snapshot(), self.latencies),
            )
            log.info("metrics on http://%s:%d/metrics", self.config.metrics_host, self.config.metrics_port)
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            group.add("systemd watchdog", functools.partial(self._watchdog, interval))
        sdnotify.notify("READY=1", f"STATUS=serving on {self.config.listen}, ring epoch {self.ring.epoch}")
        if ready is not None:
            ready()
        await self._stopping.wait()
        sdnotify.notify("STOPPING=1", f"STATUS=stopping: {self.in_flight} requests in flight")
        await self._shutdown()

    @property
    def in_flight(self) -> int:
        return self.server.in_flight if self.server is not None else 0

    async def _watchdog(self, interval: float) -> None:
        """Tell systemd the event loop is alive; a wedged loop stops these and gets restarted."""
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _checkpoint_stats(self) -> dict[str, int | float]:
        checkpointer = self.storage.checkpointer
        if checkpointer is None:
            return {}
        cs = checkpointer.stats
        return {"checkpoints": cs.passes, "checkpoint_restarts": cs.restarts, "checkpoint_busy": cs.busy,
                "checkpoint_errors": cs.errors, "checkpoint_last_restart_ms": round(cs.last_restart_ms, 1)}

    def reload(self) -> None:
        """SIGHUP: re-read the allowed keys (a removed key is refused from its next message)."""
        if self.security is not None:
            self.security.keyring.reload()
        else:
            log.info("SIGHUP: nothing to reload (security is off)")

    async def _shutdown(self) -> None:
        """Stop taking requests, let those in flight finish (bounded), flush, close."""
        assert self.loop is not None and self.server is not None and self.runtime is not None
        assert self.group is not None
        log.info("node %s stopping: %d requests in flight", self.name, self.in_flight)
        self.server.refuse_new()
        timeout = self.config.request_timeout_ms / 1000
        deadline = self.loop.time() + timeout
        await self.group.stop(timeout)
        await self.server.drain(deadline - self.loop.time())
        self.server.stop_reading()
        if self._metrics_server is not None:
            self._metrics_server.close()
        self.storage.flush()
        self.runtime.close()
        self.storage.close()
        log.info("node %s stopped", self.name)

    # --- the Replicas interface used by the coordinators ----------------------------------

    def stage_local(
        self,
        key: bytes,
        obj: VersionedObject,
        blob: bytes,
        done: Callable[[StorageError | None], None],
        hint_for: str | None = None,
    ) -> None:
        assert self.loop is not None
        if hint_for is not None:
            if self.storage.hint_count + self.storage.staged_hint_count >= self.config.max_hints:
                self.stats.hints_refused += 1
                log.error("hint store full (%d hints): refusing a hinted write for %s",
                          self.storage.hint_count, hint_for)
                self.loop.call_soon(done, StorageError(
                    f"{self.name}: hint store full ({self.config.max_hints} hints); write not taken"))
                return
            self.stats.hints_stored += 1
        partition = self.ring.partition_for(key)
        if self.transfers.tracking(partition):  # a transfer of this partition must see the commit
            inner, note = done, self.transfers.note_commit

            def done(error: StorageError | None) -> None:
                if error is None:
                    note(partition, key)
                inner(error)

        self.storage.stage(key, partition, obj, blob, done, self.loop, hint_for)

    def read_repair(self, key: bytes, merged: VersionedObject, stale: list[str]) -> None:
        blob = encode_object(merged)
        for target in stale:
            self.stats.read_repairs += 1
            if target == self.name:  # merge with what is here *now*: a write may have landed since
                mine = merge(self.storage.current(key), merged)
                self.stage_local(key, mine, encode_object(mine), lambda err: None)
            else:
                assert self.peers is not None
                self.peers.replicate(target, key, blob, None, self._replica_timeout, ignore_reply)

    def read_local(self, key: bytes) -> bytes | None:
        return self.storage.get_blob(key)

    def replicate(self, target: str, key: bytes, blob: bytes, hint: str | None, timeout_s: float,
                  done: ReplyCallback) -> None:
        assert self.peers is not None
        self.peers.replicate(target, key, blob, hint, timeout_s, done)

    def fetch(self, target: str, key: bytes, timeout_s: float, done: ReplyCallback) -> None:
        assert self.peers is not None
        self.peers.fetch(target, key, timeout_s, done)

    def is_up(self, name: str) -> bool:
        """This node's view: usable for sloppy quorum unless marked down (probes revive it)."""
        assert self.peers is not None
        return self.peers.is_up(name)

    def targets(self, key: bytes) -> tuple[list[tuple[str, str | None]], tuple[str, ...]]:
        """Sloppy-quorum targets of ``key`` (node, hinted_for) and its primaries."""
        plist = self.ring.preference_list_for(key)
        return sloppy_targets(plist.primaries, plist.fallbacks, self.ring.n, self.is_up), plist.primaries

    def call_later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        assert self.loop is not None
        return self.loop.call_later(delay, callback)

    # --- validation helpers ----------------------------------------------------------------

    def _key(self, body: dict[str, Any]) -> bytes:
        key = p.get_bytes(body, "k")
        assert key is not None
        if not key:
            raise InvalidRequest("key must not be empty")
        if len(key) > self.limits.max_key_bytes:
            raise KeyTooLarge(f"key is {len(key)} bytes; the limit is {self.limits.max_key_bytes}")
        return key

    def _timeout(self, body: dict[str, Any]) -> float:
        """Seconds this node may spend on replicas: a bit less than the caller will wait."""
        ms = p.get_int(body, "t", lo=1, hi=600_000, default=self.config.request_timeout_ms)
        assert ms is not None
        return min(ms, self.config.request_timeout_ms) * 0.9 / 1000

    def _quorum(self, body: dict[str, Any], field: str, default: int) -> int:
        value = p.get_int(body, field, lo=1, hi=self.ring.n, default=min(default, self.ring.n))
        assert value is not None
        return value

    # --- handlers: client-facing ---------------------------------------------------------

    def handle_ping(self, responder: Responder, req: Request) -> None:
        body: dict[str, Any] = {"name": self.name, "actor": self.actor, "epoch": self.ring.epoch}
        if req.body.get("peers") is not True:
            responder.ok(body)
            return
        # Deep ping: which peers answer this node right now (readiness checks, status).
        others = [m.name for m in self.ring.members if m.name != self.name]
        answered: dict[str, bool] = {}

        def pong(name: str, reply: Reply | None, error: DynqError | None) -> None:
            answered[name] = error is None and reply is not None and reply.ok
            if len(answered) == len(others):
                responder.ok(dict(body, reachable=sorted(n for n, ok in answered.items() if ok)))

        if not others:
            responder.ok(dict(body, reachable=[]))
        assert self.peers is not None
        for name in others:
            self.peers.request(name, p.OP_PING, {}, DEEP_PING_TIMEOUT_S, functools.partial(pong, name))

    def handle_routing_table(self, responder: Responder, req: Request) -> None:
        responder.ok({"table": self.routing_table().to_wire()})

    def handle_get(self, responder: Responder, req: Request) -> None:
        key = self._key(req.body)
        if req.body.get("local") is True:  # a client coordinating the read itself
            responder.ok({"ob": self.storage.get_blob(key)})
            return
        r = self._quorum(req.body, "r", self.config.r)

        def outcome(obj: VersionedObject | None, error: DynqError | None) -> None:
            if error is not None:
                responder.fail(error)
            else:
                responder.ok({"ob": None if obj is None else encode_object(obj)})

        self._coordinate_get(key, r, self._timeout(req.body), outcome)

    def _coordinate_get(
        self,
        key: bytes,
        r: int,
        timeout: float,
        outcome: Callable[[VersionedObject | None, DynqError | None], None],
    ) -> None:
        targets, primaries = self.targets(key)
        names = [name for name, _ in targets]
        if len(names) < r:  # too few look healthy: ask the primaries anyway, and say why they failed
            names += [name for name in primaries if name not in names]
        GetCoordinator(self, key, names, min(r, len(names)), timeout, outcome, primaries).start()

    def handle_put(self, responder: Responder, req: Request) -> None:
        key = self._key(req.body)
        value = p.get_bytes(req.body, "v")
        assert value is not None
        if len(value) > self.limits.max_value_bytes:
            raise ValueTooLarge(f"value is {len(value)} bytes; the limit is {self.limits.max_value_bytes}")
        context = decode_context(p.get_bytes(req.body, "ctx", required=False), self.limits)
        self._write(responder, req, key, value, context)

    def handle_delete(self, responder: Responder, req: Request) -> None:
        key = self._key(req.body)
        raw_context = p.get_bytes(req.body, "ctx", required=False)
        if raw_context:
            self._write(responder, req, key, None, decode_context(raw_context, self.limits))
            return
        if self._forward_if_not_primary(responder, req, key):
            return
        # No context: read the key first and delete what the read saw, as Riak does.
        def after_read(obj: VersionedObject | None, error: DynqError | None) -> None:
            if error is not None:
                responder.fail(error)
            elif obj is None or obj.is_tombstone:
                responder.ok({"found": False})
            else:
                guarded(responder, self._write, responder, req, key, None, dict(obj.clock))

        self._coordinate_get(key, self.config.r, self._timeout(req.body), after_read)

    def _forward_if_not_primary(self, responder: Responder, req: Request, key: bytes) -> bool:
        """Writes are coordinated by a primary of the key, so that only the N replicas (not
        every node) appear as actors in its version vector: metadata stays bounded."""
        primaries = self.ring.preference_list_for(key).primaries
        if self.name in primaries or req.body.get("fwd") is True:
            return False
        reachable = [name for name in primaries if self.is_up(name)]
        if not reachable:  # always writable: with every primary down, coordinate here
            return False
        timeout = self._timeout(req.body)
        errors: dict[str, str] = {}
        body = dict(req.body, fwd=True)  # the receiver coordinates, never forwards again
        passed_on = relay(responder.outcome)
        peers = self.peers
        assert peers is not None

        def attempt(i: int) -> None:
            if i >= len(reachable):
                if req.op == p.OP_PUT or req.op == p.OP_DELETE:
                    # every reachable primary vanished meanwhile: coordinate here after all
                    self._dispatch_write_locally(responder, req)
                    return
                responder.fail(Unavailable(f"no primary of the key is reachable: {errors}"))
                return

            def done(reply: Reply | None, error: DynqError | None) -> None:
                if not_executed(reply, error):  # next primary
                    failure = reply_error(reply, error)
                    errors[reachable[i]] = failure.message if failure else ""
                    attempt(i + 1)
                else:
                    passed_on(reply, error)

            peers.request(reachable[i], req.op, body, timeout, done)

        attempt(0)
        return True

    def _coordinate_as_fallback(
        self, targets: list[tuple[str, str | None]], primaries: tuple[str, ...]
    ) -> list[tuple[str, str | None]]:
        """Every primary is unreachable and this node coordinates: it must write first (its
        dot must be durable here before anyone sees it), so it joins the targets as a
        fallback standing in for a primary no other fallback covers."""
        covered = {name for name, _ in targets} | {hint for _, hint in targets if hint}
        free = [primary for primary in primaries if primary not in covered]
        if not free:  # N fallbacks already: take the place (and hint) of the last one
            free = [targets[-1][1] or primaries[-1]]
            targets = targets[:-1]
        return [(self.name, free[0])] + targets

    def _dispatch_write_locally(self, responder: Responder, req: Request) -> None:
        req.body["fwd"] = True
        guarded(responder, self.handlers[req.op], responder, req)

    def _write(
        self,
        responder: Responder,
        req: Request,
        key: bytes,
        value: bytes | None,
        context: dict[str, int],
    ) -> None:
        if self._forward_if_not_primary(responder, req, key):
            return
        targets, primaries = self.targets(key)
        if self.name not in {name for name, _ in targets}:
            targets = self._coordinate_as_fallback(targets, primaries)
        w = self._quorum(req.body, "w", self.config.w)
        pw = p.get_int(req.body, "pw", lo=0, hi=self.ring.n, default=0) or 0
        local = self.storage.current(key)
        forgotten = self.storage.is_forgotten(key)
        actor = self.actor_for(local, forgotten)
        new = update(local, context, actor, value, int(time.time() * 1000))
        if len(new.clock) > self.limits.max_clock_entries:
            raise InvalidContext(
                f"the write's version vector would have {len(new.clock)} entries (limit "
                f"{self.limits.max_clock_entries}): the context names actors this key never had"
            )
        if len(new.siblings) > self.limits.max_siblings:
            raise TooManySiblings(
                f"key would have {len(new.siblings)} siblings (limit {self.limits.max_siblings}); "
                "read it, resolve the siblings and write back with the context"
            )
        if len(new.siblings) > self.limits.sibling_warn:
            self.stats.sibling_warnings += 1
            log.warning("key %r has %d siblings; the application should resolve them", key[:64], len(new.siblings))
        blob = encode_object(new)
        if len(blob) > self.limits.max_message_bytes - self.limits.max_key_bytes - 1024:
            raise ValueTooLarge(
                f"the object with all its siblings would be {len(blob)} bytes; "
                f"the limit is {self.limits.max_message_bytes - self.limits.max_key_bytes - 1024}"
            )
        if len(targets) < w:
            raise NotEnoughReplicas(
                f"put failed: w={w} but only {len(targets)} replicas are reachable",
                required=w, succeeded=0, errors={name: "down" for name in self.health.down()},
            )
        used = {name for name, _ in targets}
        spares = [f for f in self.ring.preference_list_for(key).fallbacks if f not in used and self.is_up(f)]
        incoming = [x for x in self.state.pending_replicas(self.ring.partition_for(key)) if x not in used]
        outcome = responder.outcome
        if forgotten:  # minted by a fresh actor now: later writes may use it again
            def outcome(body: dict[str, Any] | None, error: DynqError | None) -> None:
                if error is None:
                    self.storage.remember(key)
                responder.outcome(body, error)

        coordinator = PutCoordinator(
            self, key, new, blob, targets, w, self._timeout(req.body), outcome, pw, spares, incoming
        )
        if coordinator.hinted:
            self.stats.hinted_writes += 1
        coordinator.start()

    def actor_for(self, local: VersionedObject | None, forgotten: bool) -> str:
        """The actor that mints this node's next dot of a key.

        A dot must never be minted twice, and a new clock entry must not claim dots this
        node minted but can no longer see: merge would silently keep one of two writes (or
        a stale context would supersede a newer write: Riak's KV679). Both can happen once
        this node dropped its copy of the key (handed off, reaped) while others kept it.
        So: after such a drop, a fresh actor ``ACTOR~N`` (N never handed out before);
        otherwise the newest of this node's actors in the local clock (all of its dots
        are in the local copy), or the node's own actor for a key it never held.
        """
        if forgotten:
            return f"{self.actor}~{self.storage.next_dot()}"
        if local is None:
            return self.actor
        prefix = self.actor + "~"
        fresh = [a for a in local.clock if a.startswith(prefix) and a[len(prefix):].isdigit()]
        if fresh:
            return max(fresh, key=lambda a: int(a[len(prefix):]))
        return self.actor

    # --- handlers: replica-facing --------------------------------------------------------

    def handle_replica_get(self, responder: Responder, req: Request) -> None:
        responder.ok({"ob": self.storage.get_blob(self._key(req.body))})

    def handle_replica_put(self, responder: Responder, req: Request) -> None:
        if req.op == p.OP_READ_REPAIR:
            self.stats.read_repairs_received += 1

        def committed(error: StorageError | None) -> None:
            if error is not None:
                responder.fail(error)
            else:
                responder.ok({})

        self._apply_replica_put(req.body, committed)

    def handle_replica_put_batch(self, responder: Responder, req: Request) -> None:
        items = req.body.get("items")
        if not isinstance(items, list) or not items:
            raise InvalidRequest("field 'items' must be a non-empty list")
        results: list[dict[str, Any] | None] = [None] * len(items)
        remaining = len(items)

        def item_done(i: int, error: DynqError | None) -> None:
            nonlocal remaining
            results[i] = None if error is None else error.to_wire()
            remaining -= 1
            if remaining == 0:
                responder.ok({"r": results})

        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise InvalidRequest("each item must be a map")
                self._apply_replica_put(item, functools.partial(item_done, i))
            except DynqError as exc:
                item_done(i, exc)
            except Exception as exc:  # a bug costs this item, not the items already staged
                log.exception("replica write in a batch failed")
                item_done(i, InternalError(f"{type(exc).__name__}: {exc}"))

    def _apply_replica_put(self, body: dict[str, Any], done: Callable[[StorageError | None], None]) -> None:
        """Merge a replica's object into ours; ``done`` runs after the commit."""
        key = self._key(body)
        blob = p.get_bytes(body, "ob")
        assert blob is not None
        hint_for = p.get_str(body, "h", required=False)
        if hint_for is not None and hint_for not in self.cluster.member_names:
            raise InvalidRequest(f"hint names {hint_for!r:.64}, which is not a member")
        if hint_for is None:
            partition = self.ring.partition_for(key)
            if not self.state.is_replica(self.name, partition):
                # Sent by a node routing by an older ring: keep it, and hand it on like a
                # fallback's write, to the key's replicas as this node knows them.
                self.stats.stray_writes += 1
                hint_for = self.ring.preference_list(partition).primaries[0]
        incoming = decode_object(blob, self.limits)
        merged = merge(self.storage.current(key), incoming)
        # Staged even when nothing changed, so the ack waits for any staged write of the key.
        merged_blob = blob if merged == incoming else encode_object(merged)
        self.stage_local(key, merged, merged_blob, done, hint_for)

    def handle_inspect(self, responder: Responder, req: Request) -> None:
        """What this node holds for one key, and which hints it keeps for it (dynq inspect)."""
        key = self._key(req.body)
        responder.ok({"ob": self.storage.get_blob(key), "hints": self.storage.hints_for_key(key),
                      "partition": self.ring.partition_for(key)})

    def handle_backup(self, responder: Responder, req: Request) -> None:
        """Copy the database, consistently and online, to a file on this node's machine."""
        path = p.get_str(req.body, "path")
        assert path is not None
        if not path.startswith("/"):
            raise InvalidRequest("backup path must be absolute (it is a path on the node's machine)")
        self.storage.flush()
        steps = self.storage.backup_steps(path)
        assert self.loop is not None
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

    def handle_stats(self, responder: Responder, req: Request) -> None:
        responder.ok(self.stats_snapshot())

    def stats_snapshot(self) -> dict[str, Any]:
        storage = self.storage
        gossip = self.liveness.gossip if self.liveness else None
        return {
            "name": self.name,
            "actor": self.actor,
            "epoch": self.ring.epoch,
            "uptime_s": round(time.time() - self.started, 1),
            "in_flight": self.in_flight,
            "requests": dict(self.stats.requests),
            "errors": dict(self.stats.errors),
            "dropped_frames": self.stats.dropped_frames,
            "dropped_replies": self.stats.dropped_replies,
            "late_replies": self.peers.late_replies if self.peers else 0,
            "send_retries": self.peers.send_retries if self.peers else 0,
            "sibling_warnings": self.stats.sibling_warnings,
            "keys": storage.count(),
            "storage_bytes": storage.size_bytes(),
            "commits": storage.commits,
            "rows_committed": storage.rows_committed,
            "commit_failures": storage.commit_failures,
            "wal_bytes": storage.wal_bytes(),
            **self._checkpoint_stats(),
            "partitions_owned": len(self.ring.partitions_of(self.name)),
            "hinted_writes": self.stats.hinted_writes,
            "hints_stored": self.stats.hints_stored,
            "hints_refused": self.stats.hints_refused,
            "hints_pending": dict(storage.hints_pending),
            "hints_pending_total": storage.hint_count,
            "hints_replayed": self.handoff.replayed if self.handoff else 0,
            "read_repairs": self.stats.read_repairs,
            "read_repairs_received": self.stats.read_repairs_received,
            "replica_batches": self.stats.replica_batches,
            "replica_batch_items": self.stats.replica_batch_items,
            "latency": {op: hist.summary() for op, hist in sorted(self.latencies.by_op.items())},
            "peers": self.health.snapshot(),
            "peers_down": self.health.down(),
            "stray_writes": self.stats.stray_writes,
            "security": self.config.security,
            "forbidden": self.stats.forbidden,
            "overloaded": self.stats.overloaded,
            "cluster": {
                "version": self.state.version,
                "status": self.state.status_of(self.name),
                "claimant": claimant(self.state),
                "members": len(self.state.ring.members),
                "transfers_pending": len(self.state.transfers),
                "transfers_planned": self.state.planned,
                "staged": bool(self.cluster.staged),
            },
            "transfers": {
                "active": len(self.transfers.active),
                "keys_sent": self.transfers.keys_sent,
                "bytes_sent": self.transfers.bytes_sent,
                "completed": self.transfers.completed,
                "retries": self.transfers.failures,
            },
            "gossip": {
                "sent": gossip.sent if gossip else 0,
                "received": gossip.received if gossip else 0,
                "malformed": gossip.malformed if gossip else 0,
                "marked_down": self.stats.marked_down_by_gossip,
                "state_pulls": self.stats.state_pulls,
            },
            "anti_entropy": self.anti_entropy.snapshot(),
        }


def run_node(config: NodeConfig) -> None:
    """Run a node in this process until SIGTERM (the body of `dynq node start`)."""
    node = Node(config)
    # The request path allocates many short-lived objects and few cycles: move what exists
    # now out of the collector's sight and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    asyncio.run(node.serve())
