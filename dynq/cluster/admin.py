"""Membership changes: join, leave, plan, commit, transfer reports; claimant routing.

Changes are made by the claimant alone (the first member of the serving ring, see
:func:`dynq.cluster.membership.claimant`): every other node forwards a membership request
there, at most a few hops while the nodes disagree on who that is, and learns the state
the claimant answers with. A change is staged first; ``cluster commit`` turns the staged
changes into a new cluster state with the transfers that move the data.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from dynq_client import buckets as b
from dynq_client import protocol as p
from dynq_client.errors import DynqError, InvalidRequest, ProtocolError, Timeout, Unavailable, UnknownBucket
from dynq_client.protocol import Request

from ..config import NodeConfig
from ..server import fields
from ..server.peers import PeerLink, relay
from ..server.ports import Handler, ignore_reply
from ..server.responder import Responder
from .manager import ClusterManager
from .membership import (
    ClusterState,
    MembershipError,
    Staged,
    Transfer,
    claimant,
    commit,
    member_from_wire,
    member_to_wire,
    plan,
    transfer_from_wire,
)

log = logging.getLogger(__name__)

MAX_HOPS = 3  # forwards towards the claimant before the nodes are told they disagree
STATE_TIMEOUT_S = 2.0  # cluster state pushes (small; gossip repeats them anyway)


class ClusterAdmin:
    """The membership ops, and the claimant's side of transfers (implements ``Claimant``)."""

    def __init__(self, cluster: ClusterManager, peers: PeerLink, config: NodeConfig, *,
                 keys: Callable[[], int]) -> None:
        self.cluster = cluster
        self.peers = peers
        self.config = config
        self.name = config.name
        self.keys = keys  # how many keys this node holds (only an empty node may join)

    def handlers(self) -> dict[str, Handler]:
        return {
            p.OP_CLUSTER_STATE: self.handle_cluster_state,
            p.OP_CLUSTER_JOIN: self.handle_cluster_join,
            p.OP_MEMBER_JOIN: self.handle_member_join,
            p.OP_CLUSTER_LEAVE: self.handle_cluster_leave,
            p.OP_CLUSTER_PLAN: self.handle_cluster_plan,
            p.OP_CLUSTER_CLEAR: self.handle_cluster_clear,
            p.OP_CLUSTER_COMMIT: self.handle_cluster_commit,
            p.OP_TRANSFER_DONE: self.handle_transfer_done,
            p.OP_BUCKET_CREATE: self.handle_bucket_create,
            p.OP_BUCKET_SET: self.handle_bucket_set,
        }

    # --- claimant routing -----------------------------------------------------------------

    def _at_claimant(self, responder: Responder, req: Request) -> bool:
        """Forward the request to the claimant (True) unless this node is it (False)."""
        boss = self.cluster.claimant()
        if boss == self.name:
            return False
        hops = p.get_int(req.body, "hops", lo=0, hi=10, default=0) or 0
        if hops >= MAX_HOPS:
            raise Unavailable("the nodes disagree on who the claimant is (the cluster state is still spreading); retry")
        body = dict(req.body, hops=hops + 1)

        def unreachable(error: DynqError) -> DynqError:
            if isinstance(error, (Unavailable, Timeout)):
                return Unavailable(f"the claimant {boss} (which makes membership changes) is unreachable: {error.message}")
            return error

        def learn(body: dict[str, Any]) -> dict[str, Any]:
            self._learn(boss, body)
            return body

        self.peers.request(boss, req.op, body, fields.deadline_s(req.body, self.config.request_timeout_ms),
                           relay(responder.outcome, body=learn, unreachable=unreachable))
        return True

    def _learn(self, boss: str, body: dict[str, Any]) -> None:
        """Adopt the (newer) state the claimant answered with."""
        if isinstance(body.get("state"), dict):
            try:
                self.cluster.offer(ClusterState.from_wire(body["state"]), f"from the claimant {boss}")
            except MembershipError as exc:
                log.warning("the claimant sent an unusable state: %s", exc)

    async def transfer_done(self, transfer: Transfer) -> dict[str, Any]:
        """Report a finished transfer to the claimant (or record it, if this node is it)."""
        boss = self.cluster.claimant()
        if boss == self.name:
            return self.record_transfer_done(transfer)
        reply = await self.peers.call(boss, p.OP_TRANSFER_DONE, {"t": transfer.to_wire()})
        self._learn(boss, reply)
        return reply

    def _push_state(self) -> None:
        """After a change made here, tell every member at once (gossip would, a round later).
        A node that just left hears of it by gossip, or in the reply to its next report."""
        state = self.cluster.state
        body = {"state": state.to_wire()}
        for name in sorted(m.name for m in state.members):
            if name != self.name:
                self.peers.request(name, p.OP_CLUSTER_STATE, body, STATE_TIMEOUT_S, ignore_reply)

    # --- handlers ---------------------------------------------------------------------------

    def handle_cluster_state(self, responder: Responder, req: Request) -> None:
        """This node's cluster state; a peer may offer a newer one in ``state``."""
        if "state" in req.body:
            self.cluster.offer(ClusterState.from_wire(req.body["state"]), "pushed by a peer")
        state = self.cluster.state
        responder.ok({"state": state.to_wire(), "claimant": claimant(state),
                      "status": state.status_of(self.name), "name": self.name})

    def handle_cluster_join(self, responder: Responder, req: Request) -> None:
        """Sent to a new node: ask the cluster that ``cluster`` (an address) belongs to to
        take this node in. The join is staged; `cluster commit` makes it happen."""
        address = p.get_str(req.body, "cluster")
        assert address is not None
        if not address.startswith(("tcp://", "ipc://")):
            raise InvalidRequest(f"'cluster' must be a node address like tcp://HOST:PORT, got {address!r:.80}")
        if address == self.config.listen:
            raise InvalidRequest("a node cannot join itself: give the address of a node in the cluster to join")
        cluster = self.cluster
        others = [m.name for m in cluster.state.members if m.name != self.name]
        if cluster.is_member and others:
            raise InvalidRequest(
                f"{self.name} already belongs to a cluster with {', '.join(others)}; leave it first")
        keys = self.keys()
        if keys:
            raise InvalidRequest(f"{self.name} holds {keys} keys; only an empty node can join a cluster")
        channel = "~" + address
        self.peers.connect(channel, address)

        def joined(body: dict[str, Any]) -> dict[str, Any]:
            try:
                state = ClusterState.from_wire(body.get("state"))
            except MembershipError as exc:
                raise ProtocolError(f"{address} answered with an unusable cluster state: {exc}") from exc
            if state.ring.q != cluster.ring.q:
                log.info("joining a cluster with q = %d (this node's config says %d; the cluster's wins)",
                         state.ring.q, cluster.ring.q)
            cluster.adopt(state, f"joining via {address}")
            return {"claimant": claimant(state), "members": [m.name for m in state.members],
                    "staged": body.get("staged")}

        self.peers.request(channel, p.OP_MEMBER_JOIN, {"member": member_to_wire(self.config.self_member)},
                           fields.deadline_s(req.body, self.config.request_timeout_ms),
                           relay(responder.outcome, body=joined))

    def handle_member_join(self, responder: Responder, req: Request) -> None:
        member = member_from_wire(req.body.get("member"))
        if self._at_claimant(responder, req):
            return
        cluster = self.cluster
        cluster.set_staged(cluster.staged.join(cluster.state, member))
        log.info("staged: %s joins (at %s)", member.name, member.address)
        responder.ok({"state": cluster.state.to_wire(), "staged": cluster.staged.to_wire()})

    def handle_cluster_leave(self, responder: Responder, req: Request) -> None:
        name = p.get_str(req.body, "node", required=False)
        if not name:  # default: the node the operator talked to (named, for the claimant)
            req.body["node"] = name = self.name
        if self._at_claimant(responder, req):
            return
        cluster = self.cluster
        cluster.set_staged(cluster.staged.leave(cluster.state, name))
        log.info("staged: %s leaves", name)
        responder.ok({"staged": cluster.staged.to_wire()})

    def handle_cluster_plan(self, responder: Responder, req: Request) -> None:
        if self._at_claimant(responder, req):
            return
        state, staged = self.cluster.state, self.cluster.staged
        body: dict[str, Any] = {"claimant": self.name, "version": state.version,
                                "in_progress": len(state.transfers)}
        if not staged:
            responder.ok(dict(body, empty=True))
            return
        responder.ok(dict(body, **plan(state, staged).to_wire(state)))

    def handle_cluster_clear(self, responder: Responder, req: Request) -> None:
        if self._at_claimant(responder, req):
            return
        cleared = self.cluster.staged.to_wire()
        self.cluster.set_staged(Staged())
        log.info("staged changes cleared: %s", cleared)
        responder.ok({"cleared": cleared})

    def handle_cluster_commit(self, responder: Responder, req: Request) -> None:
        plan_id = p.get_str(req.body, "plan", required=False)
        if self._at_claimant(responder, req):
            return
        cluster = self.cluster
        state = commit(cluster.state, cluster.staged, plan_id)
        cluster.set_staged(Staged())
        cluster.adopt(state, "committed")
        self._push_state()
        responder.ok({"state": state.to_wire(), "version": state.version, "transfers": len(state.transfers)})

    def record_transfer_done(self, transfer: Transfer) -> dict[str, Any]:
        """(claimant) One transfer finished; the last one switches the ring."""
        previous = self.cluster.state
        state = previous.transfer_done(transfer)
        if state is not previous:
            self.cluster.adopt(state, f"transfer done: {transfer.describe()}")
            self._push_state()
        return {"state": self.cluster.state.to_wire()}

    def handle_transfer_done(self, responder: Responder, req: Request) -> None:
        try:
            transfer = transfer_from_wire(req.body.get("t"), self.cluster.ring.q)
        except MembershipError as exc:
            raise InvalidRequest("field 't' must be [partition, source, target] or [partition, source, target, n]"
                                 ) from exc
        if self._at_claimant(responder, req):
            return
        responder.ok(self.record_transfer_done(transfer))

    # --- buckets (made by the claimant, effective at once: no plan) ----------------------------

    def _bucket_fields(self, req: Request) -> tuple[str, dict[str, Any]]:
        name = b.check_name(req.body.get("name"))
        props = req.body.get("props", {})
        if not isinstance(props, dict) or not all(isinstance(k, str) for k in props):
            raise InvalidRequest("field 'props' must be a map of property -> value")
        return name, props

    def _adopt_bucket(self, responder: Responder, props: b.BucketProps, reason: str) -> None:
        cluster = self.cluster
        current = cluster.state.buckets.get(props.name)
        if current == props:  # nothing to change: no new version
            responder.ok({"bucket": props.describe(), "version": cluster.state.version, "changed": False})
            return
        state = cluster.state.with_bucket(props)
        cluster.adopt(state, reason)
        self._push_state()
        responder.ok({"bucket": props.describe(), "version": state.version, "changed": True,
                      "state": state.to_wire()})

    def handle_bucket_create(self, responder: Responder, req: Request) -> None:
        name, raw = self._bucket_fields(req)
        if self._at_claimant(responder, req):
            return
        state = self.cluster.state
        unknown = [k for k in raw if k not in b.PROPS]
        if unknown:
            raise b.BucketError(f"unknown bucket properties: {', '.join(sorted(unknown))} (known: {', '.join(b.PROPS)})")
        members = len(state.ring.members)
        props = b.new_bucket(
            name, n=raw.get("n", state.ring.n), r=raw.get("r"), w=raw.get("w"), pw=raw.get("pw", 0),
            conflict=raw.get("conflict", "siblings"), max_siblings=raw.get("max_siblings"), ttl=raw.get("ttl"),
            datatype=raw.get("datatype"), members=members, default_r=self.config.r, default_w=self.config.w,
            limit_siblings=self.config.limits.max_siblings)
        existing = state.buckets.get(name)
        if existing is not None and existing != props:
            raise b.BucketError(f"bucket {name!r} exists already (n={existing.n}); change it with dynq bucket set")
        self._adopt_bucket(responder, props, f"bucket {name} created")

    def handle_bucket_set(self, responder: Responder, req: Request) -> None:
        name, raw = self._bucket_fields(req)
        if self._at_claimant(responder, req):
            return
        existing = self.cluster.state.buckets.get(name)
        if existing is None:
            if name == b.DEFAULT:
                raise b.BucketError("the default bucket's properties are the cluster's (n, r, w in the node config)")
            raise UnknownBucket(f"no bucket called {name!r} (dynq bucket create {name})")
        props = b.changed(existing, raw, limit_siblings=self.config.limits.max_siblings)
        self._adopt_bucket(responder, props, f"bucket {name} changed")
