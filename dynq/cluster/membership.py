"""Cluster membership as a value: the serving ring, the ring being moved to, and the
partition transfers that stand between them. Pure: no sockets, no storage.

A membership change goes through three steps, as operators know them from riak-admin:

1. **stage**: joins and leaves are collected at the *claimant* (:func:`claimant`, the
   member with the smallest name), which alone changes the cluster state, so two
   operators racing cannot fork the ring; they are serialised there.
2. **plan / commit**: :func:`plan` computes the next ring (minimal movement, weights,
   zones: :meth:`Ring.with_members`) and the transfers it needs; committing starts the
   *transition*: ``next_ring`` is set and ``transfers`` lists what must move.
3. **transfer / switch**: each source streams its copy of a key partition to the node
   that replaces it in that partition's preference list; when the last transfer is
   reported done the state switches to ``next_ring``.

During a transition reads use the serving ring (its replicas hold everything) and writes
go to the serving ring's replicas *and*, best effort, to the incoming ones
(:meth:`ClusterState.pending_replicas`), so a transfer only has to carry what existed
before, plus what its source saw meanwhile.

Every state has a version (its ring's epoch) and a digest. Gossip merges two states by
keeping the bigger ``(version, digest)``: commutative, associative and idempotent, so all
nodes converge on one state whatever order they hear of changes in.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable

import msgpack

from dynq_client.buckets import EMPTY_BUCKETS, BucketProps, Buckets
from dynq_client.errors import ProtocolError
from dynq_client.ring import Member, Ring, RingError
from dynq_client.protocol import short_repr


class MembershipError(ValueError):
    """A membership change that cannot be made; the message says why."""


@dataclass(frozen=True, order=True)
class Transfer:
    """``source`` streams its copy of the keys whose home partition is ``partition`` to
    ``target``, which becomes one of that partition's replicas. ``n``: only the keys of
    buckets with that replication factor (0: the ring's own n, i.e. the default bucket
    and every bucket of the same n); each n has its own preference lists."""

    partition: int
    source: str
    target: str
    n: int = 0

    def to_wire(self) -> list[Any]:
        if self.n:
            return [self.partition, self.source, self.target, self.n]
        return [self.partition, self.source, self.target]

    def describe(self) -> str:
        return f"partition {self.partition}{f' (n={self.n})' if self.n else ''}: {self.source} -> {self.target}"


def plan_transfers(old: Ring, new: Ring, ns: Iterable[int] = ()) -> tuple[Transfer, ...]:
    """What must move so that every replica in ``new`` holds what the replicas in ``old`` held.

    Per key partition, each node that leaves the preference list hands its copy to a node
    that enters it (paired in list order); a node entering with nobody leaving copies from
    the first old replica, and a node leaving with nobody entering hands its copy to a new
    replica anyway, so a departing node never takes a write with it. Done for the ring's
    n and for every other n in ``ns`` (buckets' replication factors), whose preference
    lists differ.
    """
    transfers: set[Transfer] = set()
    for n in [0] + sorted({x for x in ns if x != old.n}):
        for p in range(old.q):
            before = old.preference_list(p, n or None).primaries
            after = new.preference_list(p, n or None).primaries
            added = [x for x in after if x not in before]
            removed = [x for x in before if x not in after]
            for i, target in enumerate(added):
                source = removed[i] if i < len(removed) else before[0]
                transfers.add(Transfer(p, source, target, n))
            for i, source in enumerate(removed[len(added):]):
                transfers.add(Transfer(p, source, after[i % len(after)], n))
    return tuple(sorted(transfers))


@dataclass(frozen=True)
class ClusterState:
    """One version of the cluster's membership. ``ring.epoch`` is the version."""

    ring: Ring
    next_ring: Ring | None = None
    transfers: tuple[Transfer, ...] = ()  # still to do, sorted
    planned: int = 0  # transfers the running transition started with (for progress)
    buckets: Buckets = EMPTY_BUCKETS  # named buckets and their properties
    _pending: dict[int, tuple[str, ...]] = field(default_factory=dict, init=False, repr=False, compare=False)
    _digest: list[bytes] = field(default_factory=list, init=False, repr=False, compare=False)

    @property
    def version(self) -> int:
        return self.ring.epoch

    @property
    def digest(self) -> bytes:
        """Short hash of the canonical wire form: equal states, equal digests."""
        if not self._digest:
            packed = msgpack.packb(self.to_wire(), use_bin_type=True)
            self._digest.append(hashlib.blake2b(packed, digest_size=8).digest())
        return self._digest[0]

    @property
    def key(self) -> tuple[int, bytes]:
        """Order of states: newer wins, the digest breaks ties deterministically."""
        return (self.version, self.digest)

    @property
    def members(self) -> tuple[Member, ...]:
        """Everyone a node must talk to: the serving ring's members and the incoming ones."""
        by_name = {m.name: m for m in self.ring.members}
        if self.next_ring is not None:
            for m in self.next_ring.members:
                by_name.setdefault(m.name, m)
        return tuple(sorted(by_name.values(), key=lambda m: m.name))

    @property
    def leaving(self) -> tuple[str, ...]:
        if self.next_ring is None:
            return ()
        staying = {m.name for m in self.next_ring.members}
        return tuple(m.name for m in self.ring.members if m.name not in staying)

    @property
    def joining(self) -> tuple[str, ...]:
        if self.next_ring is None:
            return ()
        serving = {m.name for m in self.ring.members}
        return tuple(m.name for m in self.next_ring.members if m.name not in serving)

    def status_of(self, name: str) -> str:
        if name in self.leaving:
            return "leaving"
        if name in self.joining:
            return "joining"
        if any(m.name == name for m in self.ring.members):
            return "valid"
        return "none"

    def pending_replicas(self, partition: int, n: int | None = None) -> tuple[str, ...]:
        """Nodes that will replicate ``partition`` (for keys of replication factor ``n``)
        after the transition but do not now: writes go to them too (best effort), so
        transfers need not chase new writes."""
        if self.next_ring is None:
            return ()
        slot = partition if n is None or n == self.ring.n else partition + self.ring.q * n
        cached = self._pending.get(slot)
        if cached is None:
            now = self.ring.preference_list(partition, n).primaries
            cached = tuple(x for x in self.next_ring.preference_list(partition, n).primaries if x not in now)
            self._pending[slot] = cached
        return cached

    def is_replica(self, name: str, partition: int, n: int | None = None) -> bool:
        """Whether ``name`` replicates ``partition`` (keys of replication factor ``n``)
        now or after the running transition."""
        return (name in self.ring.preference_list(partition, n).primaries
                or name in self.pending_replicas(partition, n))

    def n_values(self) -> list[int]:
        """The ring's n, then every other n a bucket uses."""
        return self.buckets.ns(self.ring.n)

    @property
    def max_n(self) -> int:
        return max(self.n_values())

    # --- changes (each returns a new state with a bigger version) ---------------------------

    def _next_version(self, ring: Ring, next_ring: Ring | None, transfers: tuple[Transfer, ...],
                      planned: int) -> ClusterState:
        version = self.version + 1
        ring = Ring(version, ring.q, ring.n, ring.members, ring.owners)
        if next_ring is not None:
            next_ring = Ring(version, next_ring.q, next_ring.n, next_ring.members, next_ring.owners)
        return ClusterState(ring, next_ring, transfers, planned, self.buckets)

    def with_bucket(self, props: BucketProps) -> ClusterState:
        """A new version with ``props`` created or changed (checked against the members;
        the caller checked the rest). Effective at once: no plan, no transfers."""
        members = len(self.ring.members) if self.next_ring is None else min(
            len(self.ring.members), len(self.next_ring.members))
        if props.n > members:
            raise MembershipError(f"bucket {props.name!r}: n = {props.n} but the cluster has {members} members")
        if self.next_ring is not None and props.n not in self.n_values():
            raise MembershipError(
                f"bucket {props.name!r}: n = {props.n} is used by no bucket yet, and a membership change is "
                "in progress (its transfers were planned without it); wait for it to finish")
        new = self._next_version(self.ring, self.next_ring, self.transfers, self.planned)
        return ClusterState(new.ring, new.next_ring, new.transfers, new.planned, self.buckets.with_bucket(props))

    def begin(self, members: Iterable[Member], n: int | None = None) -> ClusterState:
        """Start moving to a ring of ``members`` (and replication factor ``n``)."""
        if self.next_ring is not None:
            raise MembershipError(
                f"a membership change is still in progress ({len(self.transfers)} transfers left); "
                "wait for it to finish (dynq cluster transfers)"
            )
        try:
            target = self.ring.with_members(members)
        except RingError as exc:
            raise MembershipError(str(exc)) from exc
        if n is not None and n != target.n:
            target = Ring(target.epoch, target.q, n, target.members, target.owners)
        transfers = plan_transfers(self.ring, target, self.n_values())
        if not transfers:  # nothing has to move (say, a weight change within rounding)
            return self._next_version(target, None, (), 0)
        return self._next_version(self.ring, target, transfers, len(transfers))

    def transfer_done(self, transfer: Transfer) -> ClusterState:
        """Record one finished transfer; the last one switches to the next ring."""
        if transfer not in self.transfers:
            return self
        left = tuple(t for t in self.transfers if t != transfer)
        assert self.next_ring is not None
        if not left:
            return self._next_version(self.next_ring, None, (), 0)
        return self._next_version(self.ring, self.next_ring, left, self.planned)

    # --- wire form ---------------------------------------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        wire = {
            "ring": self.ring.to_wire(),
            "next": None if self.next_ring is None else self.next_ring.to_wire(),
            "transfers": [t.to_wire() for t in self.transfers],
            "planned": self.planned,
        }
        if self.buckets:  # absent without buckets: a state from before buckets keeps its digest
            wire["buckets"] = self.buckets.to_wire()
        return wire

    @classmethod
    def from_wire(cls, data: object) -> ClusterState:
        """Parse an untrusted peer's state; MembershipError on anything inconsistent."""
        if not isinstance(data, dict):
            raise MembershipError(f"cluster state must be a map, got {type(data).__name__}")
        try:
            ring = Ring.from_wire(data.get("ring"))
            raw_next = data.get("next")
            next_ring = None if raw_next is None else Ring.from_wire(raw_next)
        except RingError as exc:
            raise MembershipError(f"bad ring in cluster state: {exc}") from exc
        raw_transfers = data.get("transfers", [])
        planned = data.get("planned", 0)
        if not isinstance(raw_transfers, list) or not isinstance(planned, int) or isinstance(planned, bool):
            raise MembershipError("cluster state: 'transfers' must be a list and 'planned' an integer")
        if next_ring is not None and (next_ring.q != ring.q or next_ring.epoch != ring.epoch):
            raise MembershipError("cluster state: next ring disagrees with the serving ring on q or epoch")
        if next_ring is None and raw_transfers:
            raise MembershipError("cluster state: transfers without a next ring")
        names = {m.name for m in ring.members} | ({m.name for m in next_ring.members} if next_ring else set())
        transfers: list[Transfer] = []
        for raw in raw_transfers:
            transfer = transfer_from_wire(raw, ring.q)
            if transfer.source not in names or transfer.target not in names:
                raise MembershipError(f"cluster state: bad transfer {short_repr(raw)}")
            transfers.append(transfer)
        try:
            buckets = Buckets.from_wire(data.get("buckets"))
        except ProtocolError as exc:
            raise MembershipError(f"cluster state: {exc.message}") from exc
        return cls(ring, next_ring, tuple(sorted(set(transfers))), planned, buckets)


def transfer_from_wire(raw: object, q: int) -> Transfer:
    """[partition, source, target] or [partition, source, target, n]."""
    if (not isinstance(raw, list) or len(raw) not in (3, 4) or not isinstance(raw[0], int)
            or isinstance(raw[0], bool) or not 0 <= raw[0] < q
            or not isinstance(raw[1], str) or not isinstance(raw[2], str)
            or (len(raw) == 4 and (not isinstance(raw[3], int) or isinstance(raw[3], bool) or raw[3] < 1))):
        raise MembershipError(f"cluster state: bad transfer {short_repr(raw)}")
    return Transfer(raw[0], raw[1], raw[2], raw[3] if len(raw) == 4 else 0)


def initial_state(members: Iterable[Member], q: int, n: int) -> ClusterState:
    """The state a brand-new cluster starts from (the same on every node given the same config)."""
    from dynq_client.ring import new_ring

    return ClusterState(new_ring(members, q=q, n=n))


def newest(a: ClusterState, b: ClusterState) -> ClusterState:
    """Gossip merge: the newer state (ties broken by digest)."""
    return a if a.key >= b.key else b


def claimant(state: ClusterState) -> str:
    """The one member that changes the state: the smallest name in the serving ring."""
    return min(m.name for m in state.ring.members)


# --- staged changes and plans ------------------------------------------------------------------


@dataclass(frozen=True)
class Staged:
    """Changes an operator staged and nobody committed yet (kept by the claimant)."""

    joins: tuple[Member, ...] = ()
    leaves: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.joins or self.leaves)

    def to_wire(self) -> dict[str, Any]:
        return {
            "joins": [[m.name, m.address, m.zone, m.weight] for m in self.joins],
            "leaves": list(self.leaves),
        }

    @classmethod
    def from_wire(cls, data: object) -> Staged:
        if not isinstance(data, dict):
            raise MembershipError("staged changes must be a map")
        raw_joins = data.get("joins", [])
        if not isinstance(raw_joins, list):
            raise MembershipError("staged joins must be a list of members")
        joins = tuple(member_from_wire(raw) for raw in raw_joins)
        leaves = data.get("leaves", [])
        if not isinstance(leaves, list) or not all(isinstance(x, str) for x in leaves):
            raise MembershipError("staged leaves must be a list of names")
        return cls(joins, tuple(leaves))

    def join(self, state: ClusterState, member: Member) -> Staged:
        """Stage ``member`` joining; idempotent for the same member."""
        for m in state.members:
            if m.name == member.name:
                if m == member:
                    raise MembershipError(f"{member.name} is already a member")
                raise MembershipError(f"a member called {member.name} exists already (at {m.address})")
            if m.address == member.address:
                raise MembershipError(f"{m.name} already uses the address {member.address}")
        others = [m for m in self.joins if m.name != member.name]
        for m in others:
            if m.address == member.address:
                raise MembershipError(f"{m.name} is already staged to join at {member.address}")
        return Staged(tuple(sorted(others + [member], key=lambda m: m.name)), self.leaves)

    def leave(self, state: ClusterState, name: str) -> Staged:
        """Stage ``name`` leaving; a staged join of ``name`` is simply withdrawn."""
        if any(m.name == name for m in self.joins):
            return Staged(tuple(m for m in self.joins if m.name != name), self.leaves)
        if not any(m.name == name for m in state.ring.members):
            raise MembershipError(f"{name} is not a member of the cluster")
        leaves = tuple(sorted(set(self.leaves) | {name}))
        remaining = len(state.ring.members) + len(self.joins) - len(leaves)
        if remaining < 1:
            raise MembershipError("the last member cannot leave")
        if remaining < state.max_n:
            raise MembershipError(
                f"{name} cannot leave: {remaining} members would remain, fewer than n = {state.max_n} "
                "replicas per key" + (" of some bucket" if state.max_n != state.ring.n else "")
                + " (join a node first)"
            )
        return Staged(self.joins, leaves)


def member_from_wire(raw: object) -> Member:
    if (not isinstance(raw, list) or len(raw) != 4 or not all(isinstance(x, str) for x in raw[:3])
            or not isinstance(raw[3], int) or isinstance(raw[3], bool) or raw[3] < 1):
        raise MembershipError(f"a member is [name, address, zone, weight], got {short_repr(raw)}")
    if not raw[0] or not str(raw[1]).startswith(("tcp://", "ipc://")):
        raise MembershipError(f"a member needs a name and a tcp:// address, got {short_repr(raw)}")
    return Member(raw[0], raw[1], raw[2], raw[3])


def member_to_wire(m: Member) -> list[Any]:
    return [m.name, m.address, m.zone, m.weight]


@dataclass(frozen=True)
class Plan:
    """What committing the staged changes would do."""

    staged: Staged
    version: int  # the state version the plan was computed from
    next_ring: Ring
    transfers: tuple[Transfer, ...]

    @property
    def id(self) -> str:
        """Names this exact plan: `commit --plan ID` refuses if anything changed since."""
        packed = msgpack.packb([self.version, self.staged.to_wire()], use_bin_type=True)
        return hashlib.blake2b(packed, digest_size=4).hexdigest()

    def to_wire(self, state: ClusterState) -> dict[str, Any]:
        before = state.ring.owned_counts()
        after = self.next_ring.owned_counts()
        return {
            "id": self.id,
            "version": self.version,
            "staged": self.staged.to_wire(),
            "transfers": [t.to_wire() for t in self.transfers],
            "balance": {name: [before.get(name, 0), after.get(name, 0)] for name in sorted(set(before) | set(after))},
            "ring": self.next_ring.to_wire(),
        }


def plan(state: ClusterState, staged: Staged) -> Plan:
    """The next ring and the transfers for the staged changes."""
    if not staged:
        raise MembershipError("nothing is staged: use dynq cluster join / leave first")
    if state.next_ring is not None:
        raise MembershipError(
            f"a membership change is still in progress ({len(state.transfers)} transfers left); "
            "wait for it to finish (dynq cluster transfers)"
        )
    members = {m.name: m for m in state.ring.members}
    for m in staged.joins:
        members[m.name] = m
    for name in staged.leaves:
        members.pop(name, None)
    try:
        target = state.ring.with_members(members.values())
    except RingError as exc:
        raise MembershipError(str(exc)) from exc
    return Plan(staged, state.version, target, plan_transfers(state.ring, target, state.n_values()))


def commit(state: ClusterState, staged: Staged, plan_id: str | None = None) -> ClusterState:
    """Start the transition the staged changes describe."""
    current = plan(state, staged)
    if plan_id is not None and plan_id != current.id:
        raise MembershipError(
            f"the plan changed since you looked at it (it is now {current.id}, you committed {plan_id}); "
            "run dynq cluster plan again"
        )
    return state.begin(current.next_ring.members)
