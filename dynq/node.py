"""A dynq node: the composition root. It builds the parts, wires them, and starts and
stops them in one declared order.

==============================  ====================================================
part                            what it does
==============================  ====================================================
server.runtime.Runtime          zmq context, ZAP, the bound ROUTER, the peer mux
server.router.RequestServer     requests in (admission, dispatch by op), replies out
server.peers.PeerLink           requests to peers: callbacks, batching, awaitables
server.services.ServiceGroup    background loops under one supervision policy
cluster.manager.ClusterManager  the cluster state, persisted, with change events
cluster.liveness.Liveness       gossip heartbeats, failure detection, probes
cluster.admin.ClusterAdmin      membership ops, claimant routing
cluster.transfers               outgoing partition transfers
kv.local.LocalReplica           this node's writes (group commit), commit watchers
kv.service.KvService            get/put/delete and replica ops (the hot path)
kv.admin.KvAdmin                ping, routing table, stats, inspect, backup
repair.hinted_handoff           hints back to their primaries
repair.tree_server / anti_entropy  Merkle exchange: answering side / scheduler
==============================  ====================================================

The parts meet at the ports of :mod:`dynq.server.ports`, never at this module.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from dynq_client.health import Health
from dynq_client.ring import Ring

from .cluster.admin import ClusterAdmin
from .cluster.gossip import Gossip, Heartbeat, gossip_address
from .cluster.liveness import Liveness
from .cluster.manager import ClusterManager
from .cluster.membership import ClusterState
from .cluster.transfers import RETRY_MAX_S, PartitionTransfers
from .config import ConfigError, NodeConfig
from .env import SYSTEM, Env
from .kv import admin as kv_admin
from .kv import service as kv_service
from .kv import listing as kv_listing
from .kv.admin import KvAdmin
from .kv.listing import KeyLister
from .kv.local import LocalReplica
from .kv.service import KvService
from .ops import sdnotify
from .ops.admin_api import AdminApi, start_admin_api
from .ops.api_tokens import TokenError, tokens_for
from .ops.metrics import Latencies, render_prometheus, serve_metrics
from .ops.stats import Sources, stats_reply
from .repair.anti_entropy import AntiEntropy
from .repair.hinted_handoff import HintedHandoff
from .repair.tree_server import TreeServer
from .repair.trees import PartitionTrees
from .security import GOSSIP_DOMAIN, REGISTERED_PEERS_DIR, KeyAdmin, NodeSecurity
from .server.local_call import LocalCaller
from .server.peers import PeerLink
from .server.router import RequestServer
from .server.runtime import Runtime
from .server.services import ServiceGroup
from .server.stats import Stats
from .store.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class Parts:
    """The parts of a serving node (built once the loop and the sockets exist)."""

    runtime: Runtime
    server: RequestServer
    group: ServiceGroup
    peers: PeerLink
    liveness: Liveness
    local: LocalReplica
    kv: KvService
    kv_admin: KvAdmin
    cluster_admin: ClusterAdmin
    transfers: PartitionTransfers
    handoff: HintedHandoff
    tree_server: TreeServer
    anti_entropy: AntiEntropy
    admin_api: AdminApi


class Node:
    """One dynq node. ``asyncio.run(Node(config).serve())`` runs it until SIGTERM.

    Construction opens what lives on disk (storage, cluster state, Merkle trees); the
    rest is built in :meth:`serve`, once the loop and the sockets exist."""

    def __init__(self, config: NodeConfig, env: Env = SYSTEM) -> None:
        self.config = config
        self.env = env  # clocks, randomness, zmq context and SQLite VFS (the simulator's seam)
        self.name = config.name
        self.security: NodeSecurity | None = None
        if config.security == "curve":
            assert config.server_key and config.node_key and config.peer_keys and config.client_keys
            try:
                self.security = NodeSecurity.load(config.server_key, config.node_key, config.peer_keys,
                                                  config.client_keys, config.data_dir / REGISTERED_PEERS_DIR)
            except ValueError as exc:
                raise ConfigError(f"{config.source}: [security] {exc}") from exc
        self.storage = Storage(config.db_path, synchronous=config.synchronous, limits=config.limits,
                               vfs=env.sqlite_vfs, token_hex=env.token_hex, mmap_bytes=config.mmap_mb << 20)
        self.actor = self.storage.actor_id(config.name)  # the identity this node mints dots with
        self.cluster = ClusterManager.load(self.storage, config)  # the cluster state; change events
        # The trees observe every commit from the start (they are storage's, in memory).
        self.trees = PartitionTrees(self.storage, self.name, lambda: self.cluster.ring, wall_ms=env.wall_ms,
                                    buckets=lambda: self.cluster.state.buckets)
        self.stats = Stats()
        self.latencies = Latencies()  # per-op request latency histograms
        self.health = Health(timeouts_to_down=2)  # this node's view of its peers
        self.started = env.wall()
        self.parts: Parts | None = None  # while serving
        self._stopping: asyncio.Event | None = None
        self._left = False  # this node left the cluster: it exits once it handed everything off

    @property
    def ring(self) -> Ring:
        return self.cluster.ring

    # --- build and wire ----------------------------------------------------------------

    def _build(self, loop: asyncio.AbstractEventLoop, runtime: Runtime) -> Parts:
        config, storage, cluster, stats = self.config, self.storage, self.cluster, self.stats
        security = self.security
        peers = PeerLink(loop, runtime.mux, self.health, stats, name=self.name, limits=config.limits,
                         timeout_s=config.request_timeout_ms / 1000)

        def open_gossip(on_heartbeat: Callable[[Heartbeat], None]) -> Gossip:
            return Gossip(
                loop, runtime.context, gossip_address(config.listen), on_heartbeat,
                secure_pub=(lambda sock: security.serve(sock, GOSSIP_DOMAIN)) if security else None,
                secure_sub=security.own.apply if security else None,
            )

        try:
            liveness = Liveness(loop, cluster, peers, self.health, stats, config, open_gossip)
        except (zmq.ZMQError, ValueError) as exc:
            raise ConfigError(f"cannot bind gossip for {config.listen}: {exc}") from exc
        runtime.own(liveness.gossip.close)
        server = RequestServer(
            loop, runtime.router, stats, self.latencies, name=self.name, limits=config.limits,
            max_in_flight_per_connection=config.max_in_flight_per_connection, security=security,
            epoch=cluster.ring.epoch,
        )
        group = ServiceGroup(loop)
        local = LocalReplica(loop, storage, cluster, stats, max_hints=config.max_hints, wall_ms=self.env.wall_ms)
        cluster_admin = ClusterAdmin(cluster, peers, config, keys=storage.count)
        tree_server = TreeServer(self.trees, storage, cluster, group, limits=config.limits)
        transfers = PartitionTransfers(storage, peers, cluster, cluster_admin, local, config, env=self.env)
        handoff = HintedHandoff(storage, peers, cluster, config)
        anti_entropy = AntiEntropy(self.trees, tree_server, storage, peers, cluster, local, group, config,
                                   started=self.started, env=self.env)
        admin = KvAdmin(loop, cluster, peers, storage, config, actor=self.actor, stats=self.stats_snapshot)
        kv = KvService(loop, cluster, local, peers, storage, stats, config, actor=self.actor, env=self.env)
        try:
            tokens = tokens_for(config.data_dir, config.http_read_token_file,
                                config.http_admin_token_file) if config.http_port else None
        except TokenError as exc:
            raise ConfigError(f"{config.source}: [http] {exc}") from exc
        admin_api = AdminApi(loop, config, LocalCaller(loop, server.handlers), peers, latencies=self.latencies,
                             stats=stats, hint_count=lambda: storage.hint_count, tokens=tokens)
        return Parts(runtime, server, group, peers, liveness, local, kv, admin, cluster_admin, transfers, handoff,
                     tree_server, anti_entropy, admin_api)

    def _wire(self, parts: Parts) -> None:
        server = parts.server
        server.register(parts.kv_admin.handlers(), kv_admin.CLIENT_OPS)
        server.register(parts.kv.handlers(), kv_service.CLIENT_OPS)
        server.register(parts.cluster_admin.handlers())
        server.register(parts.transfers.handlers())
        server.register(parts.tree_server.handlers())
        server.register(parts.anti_entropy.handlers())
        server.register(KeyAdmin(self.security).handlers())
        lister = KeyLister(self.cluster, self.storage, self.config, clock=self.env.monotonic,
                           wall_ms=self.env.wall_ms)
        server.register(lister.handlers(), kv_listing.CLIENT_OPS)
        server.register(parts.admin_api.handlers())
        # The cluster state's dependents, in this order, after each change (persisted first).
        self.cluster.subscribe(lambda old, new: setattr(server, "epoch", new.ring.epoch))
        self.cluster.subscribe(parts.liveness.on_cluster_change)
        self.cluster.subscribe(lambda old, new: parts.transfers.wake.set())
        self.cluster.subscribe(self._on_cluster_change)

    # --- lifecycle ---------------------------------------------------------------------

    async def serve(self, ready: Callable[[], None] | None = None) -> None:
        """Bind, connect to peers, and serve until :meth:`stop` (or SIGTERM/SIGINT)."""
        loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        runtime = Runtime.open(loop, self.config, self.security, self.health, context_factory=self.env.zmq_context)
        try:
            parts = self._build(loop, runtime)
        except BaseException:
            runtime.close()
            raise
        self.parts = parts
        self._wire(parts)
        config = self.config
        # Start, in order: peers and gossip, checkpoints, requests, then background work.
        parts.liveness.start()
        self.storage.start_checkpointer(config.checkpoint_interval_ms, config.wal_limit_mb * 1024 * 1024,
                                        self.env.checkpointer)
        parts.server.start()
        for sig, handler in ((signal.SIGTERM, self.stop), (signal.SIGINT, self.stop), (signal.SIGHUP, self.reload)):
            try:
                loop.add_signal_handler(sig, handler)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests in-process)
                pass
        ring = self.ring
        log.info("node %s (actor %s) serving on %s; ring epoch %d, %d members, n=%d q=%d",
                 self.name, self.actor, config.listen, ring.epoch, len(ring.members), ring.n, ring.q)
        group = parts.group
        group.add("probe of down peers", parts.liveness.run_probes)
        group.add("hinted handoff", parts.handoff.run)
        group.add("gossip", parts.liveness.run_gossip)
        group.add("transfers", parts.transfers.run, restart_delay_s=RETRY_MAX_S)
        group.add("anti-entropy", parts.anti_entropy.run)
        group.add("expiry", parts.anti_entropy.reclaim_expired)
        group.add("console history", parts.admin_api.run_history)
        group.add("key count", functools.partial(_count_keys, self.storage, lambda: self.cluster.ring.q))
        try:
            http_server = await start_admin_api(parts.admin_api)
        except OSError as exc:
            raise ConfigError(f"cannot serve [http] on {config.http_host}:{config.http_port}: {exc}") from exc
        metrics_server: asyncio.AbstractServer | None = None
        if config.metrics_port:
            metrics_server = await serve_metrics(
                config.metrics_host, config.metrics_port,
                lambda: render_prometheus(self.stats_snapshot(), self.latencies),
            )
            log.info("metrics on http://%s:%d/metrics", config.metrics_host, config.metrics_port)
        interval = sdnotify.watchdog_interval()
        if interval is not None:
            group.add("systemd watchdog", functools.partial(_watchdog, interval))
        sdnotify.notify("READY=1", f"STATUS=serving on {config.listen}, ring epoch {ring.epoch}")
        if ready is not None:
            ready()
        await self._stopping.wait()
        sdnotify.notify("STOPPING=1", f"STATUS=stopping: {parts.server.in_flight} requests in flight")
        await self._shutdown(parts, metrics_server, http_server)

    async def _shutdown(self, parts: Parts, metrics_server: asyncio.AbstractServer | None,
                        http_server: asyncio.AbstractServer | None = None) -> None:
        """Stop taking requests, stop background work and let requests in flight finish
        (bounded), flush, close the sockets, close the storage last."""
        loop = asyncio.get_running_loop()
        log.info("node %s stopping: %d requests in flight", self.name, parts.server.in_flight)
        parts.server.refuse_new()
        timeout = self.config.request_timeout_ms / 1000
        deadline = loop.time() + timeout
        await parts.group.stop(timeout)
        await parts.server.drain(deadline - loop.time())
        parts.server.stop_reading()
        for http in (metrics_server, http_server):
            if http is not None:
                http.close()
        self.storage.flush()
        parts.runtime.close()
        self.storage.close()
        log.info("node %s stopped", self.name)

    def stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def reload(self) -> None:
        """SIGHUP: re-read the allowed keys (a removed key is refused from its next message)."""
        if self.security is not None:
            self.security.keyring.reload()
        else:
            log.info("SIGHUP: nothing to reload (security is off)")

    def _on_cluster_change(self, old: ClusterState, new: ClusterState) -> None:
        """A node that left starts its exit: once its transfers and hints are delivered."""
        if self.name in old.leaving and not self.cluster.is_member and not self._left:
            self._left = True
            log.info("%s has left the cluster; handing off what remains, then exiting", self.name)
            assert self.parts is not None
            self.parts.group.spawn(self._exit_when_handed_off(self.parts.transfers), "exit when handed off")

    async def _exit_when_handed_off(self, transfers: PartitionTransfers) -> None:
        waited = 0.0
        while transfers.busy or self.storage.hint_count:
            await asyncio.sleep(0.5)
            waited += 0.5
            if waited % 30 == 0:
                log.info("left the cluster; waiting for %d hints and %d transfers before exiting",
                         self.storage.hint_count, len(transfers.active))
        log.info("%s left the cluster and handed everything off: exiting", self.name)
        self.stop()

    def stats_snapshot(self) -> dict[str, Any]:
        parts = self.parts
        assert parts is not None
        return stats_reply(Sources(
            self.config, self.actor, self.started, self.stats, self.storage, self.cluster, parts.server, parts.peers,
            self.health, parts.liveness, parts.handoff, parts.transfers, parts.anti_entropy, self.env.wall,
        ))


KEY_COUNT_STEP_S = 0.25
"""A large store's key count refreshes one partition per step (Q=64: every 16 s)."""


async def _count_keys(storage: Storage, partitions: Callable[[], int]) -> None:
    while True:
        await asyncio.sleep(KEY_COUNT_STEP_S)
        storage.count_step(partitions())


async def _watchdog(interval: float) -> None:
    """Tell systemd the event loop is alive; a wedged loop stops these and gets restarted."""
    while True:
        sdnotify.notify("WATCHDOG=1")
        await asyncio.sleep(interval)


def run_node(config: NodeConfig) -> None:
    """Run a node in this process until SIGTERM (the body of `dynq node start`)."""
    node = Node(config)
    # The request path allocates many short-lived objects and few cycles: move what exists
    # now out of the collector's sight and collect the young generation less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    asyncio.run(node.serve())
