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
    ProtocolError,
    StorageError,
    Timeout,
    TooManySiblings,
    Unavailable,
    ValueTooLarge,
)
from dynq_client.health import Health, PeerState, sloppy_targets
from dynq_client.protocol import Reply, Request, reply_error
from dynq_client.ring import Ring, RingError
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

from .config import ConfigError, NodeConfig
from .kv.coordinator import GetCoordinator, PutCoordinator, not_executed
from .ops import sdnotify
from .cluster.failure_detector import PhiAccrualDetector
from .cluster.gossip import Gossip, Heartbeat, gossip_address
from .repair.hinted_handoff import HintedHandoff
from .cluster.membership import (
    ClusterState,
    MembershipError,
    Staged,
    Transfer,
    claimant,
    commit,
    initial_state,
    member_from_wire,
    member_to_wire,
    plan,
)
from .repair.anti_entropy import AntiEntropy
from .ops.metrics import Latencies, render_prometheus, serve_metrics
from .security import GOSSIP_DOMAIN, NodeSecurity
from .server.peers import PeerLink, relay
from .server.ports import Handler
from .server.responder import Responder, guarded
from .server.router import RequestServer
from .server.runtime import Runtime
from .server.services import ServiceGroup
from .server.ports import ReplyCallback, ignore_reply
from .server.stats import Stats
from .store.storage import Storage
from .cluster.transfers import RETRY_MAX_S, PartitionTransfers

log = logging.getLogger(__name__)

DEEP_PING_TIMEOUT_S = 1.0  # a peer that does not answer a ping within this is not "reachable"
STATE_TIMEOUT_S = 2.0  # cluster state pulls and pushes (small; gossip repeats them anyway)

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
        self.state = self._load_state()  # cluster membership: serving ring, next ring, transfers
        self.ring = self.state.ring
        self.staged = self._load_staged()  # changes staged here (meaningful on the claimant)
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
            p.OP_CLUSTER_STATE: self.handle_cluster_state,
            p.OP_CLUSTER_JOIN: self.handle_cluster_join,
            p.OP_MEMBER_JOIN: self.handle_member_join,
            p.OP_CLUSTER_LEAVE: self.handle_cluster_leave,
            p.OP_CLUSTER_PLAN: self.handle_cluster_plan,
            p.OP_CLUSTER_CLEAR: self.handle_cluster_clear,
            p.OP_CLUSTER_COMMIT: self.handle_cluster_commit,
            p.OP_TRANSFER_DONE: self.handle_transfer_done,
            p.OP_TRANSFERS: self.handle_transfers,
        }
        self.loop: asyncio.AbstractEventLoop | None = None
        self.runtime: Runtime | None = None  # context, ROUTER, peer mux
        self.server: RequestServer | None = None  # requests in, replies out
        self.group: ServiceGroup | None = None  # background loops and request-bound tasks
        self.mux: RequestMux | None = None  # DEALERs to the peers
        self.peers: PeerLink | None = None  # requests to the peers, over the mux
        self._stopping: asyncio.Event | None = None
        self._backup_pages = 0  # progress of the running backup
        self._member_names = {m.name for m in self.state.members}
        self.health = Health(timeouts_to_down=2)  # this node's view of its peers
        self.detector = PhiAccrualDetector(config.gossip_interval_ms / 1000, config.phi_threshold)
        self.gossip: Gossip | None = None
        self.transfers = PartitionTransfers(self)
        self._pulling = False  # a cluster_state pull is in flight
        self._left = False  # this node left the cluster: it exits once it handed everything off
        self._replica_timeout = config.request_timeout_ms / 1000
        self.handoff: HintedHandoff | None = None
        self.anti_entropy = AntiEntropy(self)  # Merkle trees, exchange, repair loop, reaping

    # --- ring --------------------------------------------------------------------------

    def _load_state(self) -> ClusterState:
        """The stored cluster state, or (first start) the config's: its static members, or
        this node alone. A static member list that the operator edited since it was last
        applied starts a transition to it, as a commit would."""
        config = self.config
        raw = self.storage.get_meta("cluster")
        legacy = self.storage.get_meta("ring")
        configured = p.packb([member_to_wire(m) for m in config.members])
        try:
            if raw is not None:
                state = ClusterState.from_wire(p.unpackb(raw))
            elif legacy is not None:  # written by a version without membership changes
                state = ClusterState(Ring.from_wire(p.unpackb(legacy)))
            else:
                state = initial_state(config.members, config.q, config.n)
                self.storage.set_meta("static_members", configured)
        except (RingError, MembershipError, DynqError) as exc:
            raise ConfigError(f"stored cluster state in {config.db_path} is unreadable: {exc}") from exc
        if config.static_members:
            if state.ring.q != config.q:
                raise ConfigError(
                    f"{config.source}: 'cluster.q' is {config.q} but this node's data was "
                    f"created with q = {state.ring.q}; the ring size cannot change"
                )
            edited = self.storage.get_meta("static_members") != configured
            if edited and (set(state.ring.members) != set(config.members) or state.ring.n != config.n):
                try:
                    state = state.begin(config.members, n=config.n)
                    log.info("configured members changed: cluster state version %d, %d transfers",
                             state.version, len(state.transfers))
                except MembershipError as exc:
                    log.warning("configured members changed but not applied: %s", exc)
            self.storage.set_meta("static_members", configured)
        self.storage.set_meta("cluster", p.packb(state.to_wire()))
        return state

    def _load_staged(self) -> Staged:
        raw = self.storage.get_meta("staged")
        if raw is None:
            return Staged()
        try:
            return Staged.from_wire(p.unpackb(raw))
        except (MembershipError, DynqError) as exc:
            log.warning("dropping unreadable staged changes: %s", exc)
            return Staged()

    def _set_staged(self, staged: Staged) -> None:
        self.staged = staged
        self.storage.set_meta("staged", p.packb(staged.to_wire()))

    @property
    def is_member(self) -> bool:
        """Whether this node is in the serving or the next ring."""
        return any(m.name == self.name for m in self.state.members)

    def adopt(self, state: ClusterState, reason: str) -> None:
        """Make ``state`` this node's cluster state (persisted first), and act on it."""
        old = self.state
        if state.key == old.key:
            return
        self.storage.set_meta("cluster", p.packb(state.to_wire()))
        self.state = state
        self.ring = state.ring
        if self.server is not None:
            self.server.epoch = state.ring.epoch
        self._member_names = {m.name for m in state.members}
        log.info("cluster state %d -> %d (%s): %d members, %d transfers pending%s",
                 old.version, state.version, reason, len(state.ring.members), len(state.transfers),
                 f", moving to {len(state.next_ring.members)} members" if state.next_ring else "")
        self._sync_peers()
        self.transfers.wake.set()
        if self.name in old.leaving and not self.is_member and not self._left:
            self._left = True
            log.info("%s has left the cluster; handing off what remains, then exiting", self.name)
            assert self.group is not None
            self.group.spawn(self._exit_when_handed_off(), "exit when handed off")

    def offer_state(self, state: ClusterState, reason: str) -> bool:
        """Gossip merge: adopt ``state`` if it is newer and concerns this node (a node that
        belongs to a cluster ignores states of clusters it is not part of)."""
        if state.key <= self.state.key:
            return False
        names = {m.name for m in state.members}
        if self.name not in names and self.is_member and self.name not in self.state.leaving:
            return False
        self.adopt(state, reason)
        return True

    def _sync_peers(self) -> None:
        """Connect to every member (and subscribe to its gossip); drop departed ones."""
        if self.mux is None or self.gossip is None:
            return
        wanted = {m.name: m.address for m in self.state.members if m.name != self.name}
        assert self.loop is not None
        for name, address in wanted.items():
            self.mux.connect(name, address)
            self.gossip.subscribe(name, gossip_address(address))
            if self.detector.last_heard(name) is None:  # silence from now on counts, too
                self.detector.heartbeat(name, self.loop.time())
        for name in self.mux.connected_names():
            if name not in wanted and not name.startswith("~"):
                self.mux.disconnect(name)
        for name in self.gossip.subscribed():
            if name not in wanted and not name.startswith("~"):
                self.gossip.unsubscribe(name)
                self.detector.forget(name)

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
        try:
            self.gossip = Gossip(
                loop, runtime.context, gossip_address(self.config.listen), self._on_heartbeat,
                secure_pub=(lambda sock: security.serve(sock, GOSSIP_DOMAIN)) if security else None,
                secure_sub=security.own.apply if security else None,
            )
        except (zmq.ZMQError, ValueError) as exc:
            runtime.close()
            raise ConfigError(f"cannot bind gossip for {self.config.listen}: {exc}") from exc
        runtime.own(self.gossip.close)
        self.server = RequestServer(
            loop, runtime.router, self.stats, self.latencies, name=self.name, limits=self.limits,
            max_in_flight_per_connection=self.config.max_in_flight_per_connection, security=security,
            epoch=self.ring.epoch,
        )
        self.server.register(self.handlers, CLIENT_OPS)
        self.server.register(self.anti_entropy.handlers())
        self._sync_peers()
        known = {m.address for m in self.state.members}
        for seed in self.config.seeds:
            if seed not in known:  # bootstrap only: listen to it until it is a member
                self.gossip.subscribe("~" + seed, gossip_address(seed))
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
        group.add("probe of down peers", self._probe_down_peers)
        group.add("hinted handoff", self.handoff.run)
        group.add("gossip", self._gossip_loop)
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

    async def _probe_down_peers(self) -> None:
        """Ping peers marked down, so they are used again as soon as they answer."""
        assert self.peers is not None
        while True:
            await asyncio.sleep(self.config.probe_interval_ms / 1000)
            for name in self.health.down():
                self.peers.request(name, p.OP_PING, {}, self.config.probe_interval_ms / 1000, ignore_reply)

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
        if hint_for is not None and hint_for not in self._member_names:
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

    # --- gossip and failure detection -------------------------------------------------------

    async def _gossip_loop(self) -> None:
        """Publish a heartbeat every interval and mark silent peers down (phi accrual)."""
        assert self.loop is not None and self.gossip is not None
        interval = self.config.gossip_interval_ms / 1000
        while True:
            self._gossip_round()
            await asyncio.sleep(interval)

    def _gossip_round(self) -> None:
        assert self.loop is not None and self.gossip is not None
        self.gossip.publish(self.name, self.config.listen, self.state.version, self.state.digest)
        now = self.loop.time()
        for name in self.detector.known():
            if (name in self._member_names and self.health.state(name) is not PeerState.DOWN
                    and self.detector.is_suspect(name, now)):
                log.warning("no heartbeat from %s for %.1f s (phi %.1f): marking it down", name,
                            now - (self.detector.last_heard(name) or now), self.detector.phi(name, now))
                self.stats.marked_down_by_gossip += 1
                self.health.unreachable(name, now)

    def _on_heartbeat(self, heartbeat: Heartbeat) -> None:
        assert self.loop is not None and self.mux is not None
        name = heartbeat.name
        if name == self.name:
            return
        now = self.loop.time()
        if name in self._member_names:
            self.detector.heartbeat(name, now)
            if self.health.state(name) is PeerState.DOWN:
                log.info("heartbeat from %s again: marking it up", name)
                self.health.success(name, now)
        if (heartbeat.version, heartbeat.digest) > self.state.key and not self._pulling:
            peer = name if name in self._member_names else "~" + heartbeat.address
            if peer.startswith("~"):
                if not heartbeat.address.startswith(("tcp://", "ipc://")):
                    return
                self.mux.connect(peer, heartbeat.address)
            self._pull_state(peer)

    def _pull_state(self, peer: str) -> None:
        self._pulling = True
        self.stats.state_pulls += 1

        def got(reply: Reply | None, error: DynqError | None) -> None:
            self._pulling = False
            if error is not None or reply is None or not reply.ok:
                return
            try:
                state = ClusterState.from_wire(reply.body.get("state"))
            except MembershipError as exc:
                log.warning("%s sent an unusable cluster state: %s", peer, exc)
                return
            self.offer_state(state, f"gossip from {peer}")

        assert self.peers is not None
        self.peers.request(peer, p.OP_CLUSTER_STATE, {}, STATE_TIMEOUT_S, got)

    def _push_state(self) -> None:
        """After a change made here, tell every member at once (gossip would, a round later).
        A node that just left hears of it by gossip, or in the reply to its next report."""
        assert self.peers is not None
        body = {"state": self.state.to_wire()}
        for name in sorted(m.name for m in self.state.members):
            if name != self.name:
                self.peers.request(name, p.OP_CLUSTER_STATE, body, STATE_TIMEOUT_S, ignore_reply)

    # --- handlers: membership --------------------------------------------------------------

    def handle_cluster_state(self, responder: Responder, req: Request) -> None:
        """This node's cluster state; a peer may offer a newer one in ``state``."""
        if "state" in req.body:
            self.offer_state(ClusterState.from_wire(req.body["state"]), "pushed by a peer")
        responder.ok({"state": self.state.to_wire(), "claimant": claimant(self.state),
                      "status": self.state.status_of(self.name), "name": self.name})

    def _at_claimant(self, responder: Responder, req: Request) -> bool:
        """Membership changes are made by the claimant alone: forward the request there
        (True) unless this node is it (False)."""
        boss = claimant(self.state)
        if boss == self.name:
            return False
        hops = p.get_int(req.body, "hops", lo=0, hi=10, default=0) or 0
        if hops >= 3:
            raise Unavailable("the nodes disagree on who the claimant is (the cluster state is still spreading); retry")
        body = dict(req.body, hops=hops + 1)

        def unreachable(error: DynqError) -> DynqError:
            if isinstance(error, (Unavailable, Timeout)):
                return Unavailable(f"the claimant {boss} (which makes membership changes) is unreachable: {error.message}")
            return error

        def learn(body: dict[str, Any]) -> dict[str, Any]:
            self._learn_from_claimant(boss, body)
            return body

        assert self.peers is not None
        self.peers.request(boss, req.op, body, self._timeout(req.body),
                           relay(responder.outcome, body=learn, unreachable=unreachable))
        return True

    def _learn_from_claimant(self, boss: str, body: dict[str, Any]) -> None:
        if isinstance(body.get("state"), dict):
            try:
                self.offer_state(ClusterState.from_wire(body["state"]), f"from the claimant {boss}")
            except MembershipError as exc:
                log.warning("the claimant sent an unusable state: %s", exc)

    def handle_cluster_join(self, responder: Responder, req: Request) -> None:
        """Sent to a new node: ask the cluster that ``cluster`` (an address) belongs to to
        take this node in. The join is staged; `cluster commit` makes it happen."""
        address = p.get_str(req.body, "cluster")
        assert address is not None
        if not address.startswith(("tcp://", "ipc://")):
            raise InvalidRequest(f"'cluster' must be a node address like tcp://HOST:PORT, got {address!r:.80}")
        if address == self.config.listen:
            raise InvalidRequest("a node cannot join itself: give the address of a node in the cluster to join")
        others = [m.name for m in self.state.members if m.name != self.name]
        if self.is_member and others:
            raise InvalidRequest(
                f"{self.name} already belongs to a cluster with {', '.join(others)}; leave it first")
        if self.storage.count():
            raise InvalidRequest(f"{self.name} holds {self.storage.count()} keys; only an empty node can join a cluster")
        channel = "~" + address
        assert self.mux is not None and self.peers is not None
        self.mux.connect(channel, address)

        def joined(body: dict[str, Any]) -> dict[str, Any]:
            try:
                state = ClusterState.from_wire(body.get("state"))
            except MembershipError as exc:
                raise ProtocolError(f"{address} answered with an unusable cluster state: {exc}") from exc
            if state.ring.q != self.ring.q:
                log.info("joining a cluster with q = %d (this node's config says %d; the cluster's wins)",
                         state.ring.q, self.ring.q)
            self.adopt(state, f"joining via {address}")
            return {"claimant": claimant(state), "members": [m.name for m in state.members],
                    "staged": body.get("staged")}

        self.peers.request(channel, p.OP_MEMBER_JOIN, {"member": member_to_wire(self.config.self_member)},
                           self._timeout(req.body), relay(responder.outcome, body=joined))

    def handle_member_join(self, responder: Responder, req: Request) -> None:
        member = member_from_wire(req.body.get("member"))
        if self._at_claimant(responder, req):
            return
        self._set_staged(self.staged.join(self.state, member))
        log.info("staged: %s joins (at %s)", member.name, member.address)
        responder.ok({"state": self.state.to_wire(), "staged": self.staged.to_wire()})

    def handle_cluster_leave(self, responder: Responder, req: Request) -> None:
        name = p.get_str(req.body, "node", required=False)
        if not name:  # default: the node the operator talked to
            req.body["node"] = name = self.name
        if self._at_claimant(responder, req):
            return
        self._set_staged(self.staged.leave(self.state, name))
        log.info("staged: %s leaves", name)
        responder.ok({"staged": self.staged.to_wire()})

    def handle_cluster_plan(self, responder: Responder, req: Request) -> None:
        if self._at_claimant(responder, req):
            return
        body: dict[str, Any] = {"claimant": self.name, "version": self.state.version,
                                "in_progress": len(self.state.transfers)}
        if not self.staged:
            responder.ok(dict(body, empty=True))
            return
        responder.ok(dict(body, **plan(self.state, self.staged).to_wire(self.state)))

    def handle_cluster_clear(self, responder: Responder, req: Request) -> None:
        if self._at_claimant(responder, req):
            return
        cleared = self.staged.to_wire()
        self._set_staged(Staged())
        log.info("staged changes cleared: %s", cleared)
        responder.ok({"cleared": cleared})

    def handle_cluster_commit(self, responder: Responder, req: Request) -> None:
        plan_id = p.get_str(req.body, "plan", required=False)
        if self._at_claimant(responder, req):
            return
        state = commit(self.state, self.staged, plan_id)
        self._set_staged(Staged())
        self.adopt(state, "committed")
        self._push_state()
        responder.ok({"state": state.to_wire(), "version": state.version, "transfers": len(state.transfers)})

    def record_transfer_done(self, transfer: Transfer) -> dict[str, Any]:
        """(claimant) One transfer finished; the last one switches the ring."""
        previous = self.state
        state = previous.transfer_done(transfer)
        if state is not previous:
            self.adopt(state, f"transfer done: {transfer.describe()}")
            self._push_state()
        return {"state": self.state.to_wire()}

    def handle_transfer_done(self, responder: Responder, req: Request) -> None:
        raw = req.body.get("t")
        if (not isinstance(raw, list) or len(raw) != 3 or not isinstance(raw[0], int)
                or not isinstance(raw[1], str) or not isinstance(raw[2], str)):
            raise InvalidRequest("field 't' must be [partition, source, target]")
        if self._at_claimant(responder, req):
            return
        responder.ok(self.record_transfer_done(Transfer(raw[0], raw[1], raw[2])))

    async def tell_claimant(self, op: str, body: dict[str, Any]) -> dict[str, Any]:
        """Send a membership request to the claimant (or handle it here, if this is it)."""
        boss = claimant(self.state)
        if boss == self.name and op == p.OP_TRANSFER_DONE:
            raw = body["t"]
            return self.record_transfer_done(Transfer(raw[0], raw[1], raw[2]))
        assert self.peers is not None
        reply = await self.peers.call(boss, op, body)
        self._learn_from_claimant(boss, reply)
        return reply

    def handle_transfers(self, responder: Responder, req: Request) -> None:
        """This node's outgoing transfers, and the cluster's pending ones as it knows them."""
        responder.ok({
            "name": self.name,
            "version": self.state.version,
            "planned": self.state.planned,
            "pending": [t.to_wire() for t in self.state.transfers],
            "progress": [pr.to_wire() for pr in self.transfers.progress.values()],
        })

    def handle_stats(self, responder: Responder, req: Request) -> None:
        responder.ok(self.stats_snapshot())

    def stats_snapshot(self) -> dict[str, Any]:
        storage = self.storage
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
                "staged": bool(self.staged),
            },
            "transfers": {
                "active": len(self.transfers.active),
                "keys_sent": self.transfers.keys_sent,
                "bytes_sent": self.transfers.bytes_sent,
                "completed": self.transfers.completed,
                "retries": self.transfers.failures,
            },
            "gossip": {
                "sent": self.gossip.sent if self.gossip else 0,
                "received": self.gossip.received if self.gossip else 0,
                "malformed": self.gossip.malformed if self.gossip else 0,
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
