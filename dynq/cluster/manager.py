"""The owner of this node's cluster state (riak_core's ring manager and ring events).

:class:`~dynq.cluster.membership.ClusterState` is a value; this object holds the one this
node serves by, persists every new one *before* acting on it, and tells subscribers of
each change: the peer links reconnect, transfers wake up, replies carry the new epoch, a
node that left starts its exit. The owner does not know its dependents; they subscribe.
"""

from __future__ import annotations

import logging
from typing import Callable

from dynq_client import protocol as p
from dynq_client.errors import DynqError
from dynq_client.ring import Ring, RingError

from ..config import ConfigError, NodeConfig
from ..server.ports import MetaStore
from .membership import ClusterState, MembershipError, Staged, claimant, initial_state, member_to_wire

log = logging.getLogger(__name__)

Listener = Callable[[ClusterState, ClusterState], None]
"""Called with (old, new) after each change of the cluster state, once it is persisted."""


class ClusterManager:
    """This node's cluster state and staged changes, persisted; change events."""

    def __init__(self, meta: MetaStore, name: str, state: ClusterState, staged: Staged) -> None:
        self.meta = meta
        self.name = name  # this node
        self.state = state  # serving ring, next ring, transfers
        self.ring = state.ring  # state.ring, the one requests are routed by
        self.staged = staged  # changes staged here (meaningful on the claimant)
        self.member_names = frozenset(m.name for m in state.members)  # serving and next ring
        self._listeners: list[Listener] = []

    @classmethod
    def load(cls, meta: MetaStore, config: NodeConfig) -> ClusterManager:
        return cls(meta, config.name, _load_state(meta, config), _load_staged(meta))

    # --- reading ----------------------------------------------------------------------------

    @property
    def is_member(self) -> bool:
        """Whether this node is in the serving or the next ring."""
        return self.name in self.member_names

    def claimant(self) -> str:
        return claimant(self.state)

    # --- changing ---------------------------------------------------------------------------

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(old, new)`` after every change; returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def adopt(self, state: ClusterState, reason: str) -> None:
        """Make ``state`` this node's cluster state (persisted first), and tell subscribers."""
        old = self.state
        if state.key == old.key:
            return
        self.meta.set_meta("cluster", p.packb(state.to_wire()))
        self.state = state
        self.ring = state.ring
        self.member_names = frozenset(m.name for m in state.members)
        log.info("cluster state %d -> %d (%s): %d members, %d transfers pending%s",
                 old.version, state.version, reason, len(state.ring.members), len(state.transfers),
                 f", moving to {len(state.next_ring.members)} members" if state.next_ring else "")
        for listener in list(self._listeners):
            listener(old, state)

    def offer(self, state: ClusterState, reason: str) -> bool:
        """Gossip merge: adopt ``state`` if it is newer and concerns this node (a node that
        belongs to a cluster ignores states of clusters it is not part of)."""
        if state.key <= self.state.key:
            return False
        names = {m.name for m in state.members}
        if self.name not in names and self.is_member and self.name not in self.state.leaving:
            return False
        self.adopt(state, reason)
        return True

    def set_staged(self, staged: Staged) -> None:
        self.staged = staged
        self.meta.set_meta("staged", p.packb(staged.to_wire()))


def _load_state(meta: MetaStore, config: NodeConfig) -> ClusterState:
    """The stored cluster state, or (first start) the config's: its static members, or
    this node alone. A static member list that the operator edited since it was last
    applied starts a transition to it, as a commit would."""
    raw = meta.get_meta("cluster")
    legacy = meta.get_meta("ring")
    configured = p.packb([member_to_wire(m) for m in config.members])
    try:
        if raw is not None:
            state = ClusterState.from_wire(p.unpackb(raw))
        elif legacy is not None:  # written by a version without membership changes
            state = ClusterState(Ring.from_wire(p.unpackb(legacy)))
        else:
            state = initial_state(config.members, config.q, config.n)
            meta.set_meta("static_members", configured)
    except (RingError, MembershipError, DynqError) as exc:
        raise ConfigError(f"stored cluster state in {config.db_path} is unreadable: {exc}") from exc
    if config.static_members:
        if state.ring.q != config.q:
            raise ConfigError(
                f"{config.source}: 'cluster.q' is {config.q} but this node's data was "
                f"created with q = {state.ring.q}; the ring size cannot change"
            )
        edited = meta.get_meta("static_members") != configured
        if edited and (set(state.ring.members) != set(config.members) or state.ring.n != config.n):
            try:
                state = state.begin(config.members, n=config.n)
                log.info("configured members changed: cluster state version %d, %d transfers",
                         state.version, len(state.transfers))
            except MembershipError as exc:
                log.warning("configured members changed but not applied: %s", exc)
        meta.set_meta("static_members", configured)
    meta.set_meta("cluster", p.packb(state.to_wire()))
    return state


def _load_staged(meta: MetaStore) -> Staged:
    raw = meta.get_meta("staged")
    if raw is None:
        return Staged()
    try:
        return Staged.from_wire(p.unpackb(raw))
    except (MembershipError, DynqError) as exc:
        log.warning("dropping unreadable staged changes: %s", exc)
        return Staged()
