"""Liveness: heartbeats out, heartbeats in, the failure detector, probes of down peers.

Every gossip interval this node publishes a heartbeat carrying its cluster state's
version and digest (see :mod:`dynq.cluster.gossip`) and marks down the members whose
silence the phi-accrual detector finds suspect. A heartbeat from a member marked down
marks it up again; one announcing a newer cluster state makes this node pull that state
(one pull at a time). Peers marked down are pinged every probe interval, so that they
are used again as soon as they answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from dynq_client import protocol as p
from dynq_client.errors import DynqError, StorageError
from dynq_client.health import Health, PeerState
from dynq_client.protocol import Reply

from ..config import NodeConfig
from ..server.peers import PeerLink
from ..server.ports import ignore_reply
from ..server.stats import Stats
from .failure_detector import PhiAccrualDetector
from .gossip import Gossip, Heartbeat, gossip_address
from .manager import ClusterManager
from .membership import ClusterState, MembershipError

log = logging.getLogger(__name__)

STATE_TIMEOUT_S = 2.0  # a cluster state pull (small; the next heartbeat triggers another)


class Liveness:
    """This node's heartbeats, its failure detector and its view of the members' health."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cluster: ClusterManager, peers: PeerLink,
                 health: Health, stats: Stats, config: NodeConfig,
                 open_gossip: Callable[[Callable[[Heartbeat], None]], Gossip]) -> None:
        self.loop = loop
        self.cluster = cluster
        self.peers = peers
        self.health = health  # shared with the peer mux: timeouts mark down, heartbeats mark up
        self.stats = stats
        self.config = config
        self.name = config.name
        self.detector = PhiAccrualDetector(config.gossip_interval_ms / 1000, config.phi_threshold)
        self.gossip = open_gossip(self._on_heartbeat)
        self._pulling = False  # a cluster_state pull is in flight

    def start(self) -> None:
        """Connect to the members, and listen to the seeds that are not members yet."""
        self.sync_members()
        known = {m.address for m in self.cluster.state.members}
        for seed in self.config.seeds:
            if seed not in known:  # bootstrap only: listen to it until it is a member
                self.gossip.subscribe("~" + seed, gossip_address(seed))

    def on_cluster_change(self, old: ClusterState, new: ClusterState) -> None:
        self.sync_members()

    def sync_members(self) -> None:
        """Connect to every member (and subscribe to its gossip); drop departed ones."""
        wanted = {m.name: m.address for m in self.cluster.state.members if m.name != self.name}
        for name, address in wanted.items():
            self.peers.connect(name, address)
            self.gossip.subscribe(name, gossip_address(address))
            if self.detector.last_heard(name) is None:  # silence from now on counts, too
                self.detector.heartbeat(name, self.loop.time())
        for name in self.peers.connected():
            if name not in wanted and not name.startswith("~"):
                self.peers.disconnect(name)
        for name in self.gossip.subscribed():
            if name not in wanted and not name.startswith("~"):
                self.gossip.unsubscribe(name)
                self.detector.forget(name)

    # --- heartbeats out -------------------------------------------------------------------

    async def run_gossip(self) -> None:
        """Publish a heartbeat every interval and mark silent peers down (phi accrual)."""
        interval = self.config.gossip_interval_ms / 1000
        while True:
            self.gossip_round()
            await asyncio.sleep(interval)

    def gossip_round(self) -> None:
        state = self.cluster.state
        self.gossip.publish(self.name, self.config.listen, state.version, state.digest)
        now = self.loop.time()
        members = self.cluster.member_names
        for name in self.detector.known():
            if (name in members and self.health.state(name) is not PeerState.DOWN
                    and self.detector.is_suspect(name, now)):
                log.warning("no heartbeat from %s for %.1f s (phi %.1f): marking it down", name,
                            now - (self.detector.last_heard(name) or now), self.detector.phi(name, now))
                self.stats.marked_down_by_gossip += 1
                self.health.unreachable(name, now)

    async def run_probes(self) -> None:
        """Ping peers marked down, so they are used again as soon as they answer."""
        interval = self.config.probe_interval_ms / 1000
        while True:
            await asyncio.sleep(interval)
            for name in self.health.down():
                self.peers.request(name, p.OP_PING, {}, interval, ignore_reply)

    # --- heartbeats in --------------------------------------------------------------------

    def _on_heartbeat(self, heartbeat: Heartbeat) -> None:
        name = heartbeat.name
        if name == self.name:
            return
        now = self.loop.time()
        members = self.cluster.member_names
        if name in members:
            self.detector.heartbeat(name, now)
            if self.health.state(name) is PeerState.DOWN:
                log.info("heartbeat from %s again: marking it up", name)
                self.health.success(name, now)
        if (heartbeat.version, heartbeat.digest) > self.cluster.state.key and not self._pulling:
            peer = name if name in members else "~" + heartbeat.address
            if peer.startswith("~"):
                if not heartbeat.address.startswith(("tcp://", "ipc://")):
                    return
                self.peers.connect(peer, heartbeat.address)
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
            try:
                self.cluster.offer(state, f"gossip from {peer}")
            except StorageError as exc:  # not persisted, so not adopted: the next heartbeat retries
                log.warning("cannot adopt the cluster state from %s: %s", peer, exc)

        self.peers.request(peer, p.OP_CLUSTER_STATE, {}, STATE_TIMEOUT_S, got)
