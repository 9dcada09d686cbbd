"""The consistent-hashing ring: which nodes hold which keys.

dynq uses the Dynamo paper's partitioning *strategy 3* (DeCandia et al., 2007, section 6.2):
the 128-bit MD5 hash space is cut into ``Q`` fixed, equal-sized partitions (``Q`` a power
of two, chosen at cluster creation and never changed), and nodes own whole partitions.
Compared with random tokens (strategy 1) this decouples partitioning from placement:
a key's partition never changes, membership changes only move whole partitions (which
is what makes handoff and anti-entropy simple), and the ring is a short list of ``Q``
owner names that every node and client can hold and compare by a single ``epoch``.

Three pure pieces:

* :func:`claim` decides ownership. Each member's target is ``Q * weight / sum(weights)``
  rounded by largest remainder. Given the previous owners it moves only what must move:
  partitions of departed members, and partitions of members above target, which go to
  members below target. So adding a node moves only what the new node takes and
  removing one moves only what it owned (always with equal weights; with unequal
  weights, rounding to whole partitions can rarely force one more hand-over). While
  placing, it prefers spots where the member (and its zone) is not already among the
  ``n - 1`` partitions on either side, so the ``N`` partitions after a key usually
  belong to ``N`` distinct nodes in distinct zones; a fresh ring comes out as a
  weighted round-robin. The ideas, not the code, follow riak_core's
  ``riak_core_claim`` (targets, "wants", spacing by ``target_n_val``) and ``chash``.
* :meth:`Ring.preference_list` walks the ring clockwise from a key's partition, taking
  distinct nodes (and, when zones are configured, distinct zones first) until it has
  ``N`` primaries; the rest of the members, in walk order, are fallbacks for a sloppy
  quorum. Correctness of replica placement therefore never depends on how good the
  claim was: the walk skips repeated nodes.
* :class:`Ring` is an immutable value with a wire form; bigger epoch = newer ring.

Nothing here does I/O, and every function is deterministic across machines (members are
always processed in name order), which is what lets each node compute the same ring
independently from the same configuration.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Iterable, Mapping, Sequence
from .protocol import short_repr

RING_BITS = 128
"""Size of the hash space: MD5 digests, read as big-endian unsigned integers."""

_NODE_PENALTY = 8  # a node twice in one window costs more than two zones meeting
_ZONE_PENALTY = 1
_REPAIR_BUDGET = 500_000  # swap candidates looked at; bounds the fresh-ring polish


class RingError(ValueError):
    """An invalid ring, member list or wire representation of a ring."""


def key_hash(key: bytes) -> int:
    """The key's position on the 2**128 ring: MD5 as in the Dynamo paper; not for security."""
    return int.from_bytes(hashlib.md5(key, usedforsecurity=False).digest(), "big")


def _check_q(q: object) -> int:
    if not isinstance(q, int) or isinstance(q, bool) or q < 1 or q & (q - 1):
        raise RingError(f"q must be a power of two >= 1, got {short_repr(q)}")
    if q.bit_length() - 1 > RING_BITS:
        raise RingError(f"q must be at most 2**{RING_BITS}, got {q}")
    return q


def partition_of(key: bytes, q: object) -> int:
    """The partition holding ``key``: the top ``log2(q)`` bits of its hash (``q`` is
    ``object``, not ``int``: compiled by mypyc, an ``int`` parameter turns True into 1
    before the check could refuse it).

    Using the top bits makes partition ``p`` the contiguous arc ``[p, p + 1) * 2**128 / q``,
    so partitions are ordered clockwise like the hash space itself.
    """
    return key_hash(key) >> (RING_BITS - (_check_q(q).bit_length() - 1))


@dataclass(frozen=True, slots=True)
class Member:
    """A node as the ring sees it; ``weight`` scales its share of partitions."""

    name: str
    address: str  # e.g. "tcp://127.0.0.1:7100"
    zone: str = ""  # "" means no zone
    weight: int = 1  # >= 1


@dataclass(frozen=True, slots=True)
class PreferenceList:
    """Where a partition's replicas live: ``primaries`` hold them, ``fallbacks`` stand in."""

    partition: int
    primaries: tuple[str, ...]  # the N distinct node names (fewer if the cluster has fewer nodes)
    fallbacks: tuple[str, ...]  # every other member: clockwise walk order, then non-owners by name


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_members(members: Iterable[Member]) -> tuple[Member, ...]:
    """Members sorted by name, validated: sorting here is what makes claims order-independent."""
    ms = tuple(members)
    if not ms:
        raise RingError("a ring needs at least one member")
    for m in ms:
        if not isinstance(m, Member):
            raise RingError(f"members must be Member values, got {short_repr(m)}")
        if not isinstance(m.name, str) or not m.name:
            raise RingError(f"member name must be a non-empty string, got {short_repr(m.name)}")
        if not isinstance(m.address, str):
            raise RingError(f"member {short_repr(m.name)}: address must be a string, got {short_repr(m.address)}")
        if not isinstance(m.zone, str):
            raise RingError(f"member {short_repr(m.name)}: zone must be a string, got {short_repr(m.zone)}")
        if not _is_int(m.weight) or m.weight < 1:
            raise RingError(f"member {short_repr(m.name)}: weight must be an integer >= 1, got {short_repr(m.weight)}")
    ms = tuple(sorted(ms, key=lambda m: m.name))
    for a, b in zip(ms, ms[1:]):
        if a.name == b.name:
            raise RingError(f"duplicate member name {short_repr(a.name)}")
    return ms


def _zone_keys(members: Sequence[Member]) -> dict[str, str]:
    """Failure domain per node; a node without a zone is a domain of its own."""
    return {m.name: m.zone if m.zone else "\0" + m.name for m in members}


# --- claim ------------------------------------------------------------------------------


def _targets(members: Sequence[Member], q: int, counts: Mapping[str, int] | None) -> dict[str, int]:
    """Partitions each member should own: ``q * w / sum(w)`` by largest remainder.

    The ``k`` leftover partitions go to the largest remainders, ties by name. With a
    previous ring (``counts``) two criteria come first: members that already hold their
    rounded-up share keep it, then the members holding the fewest partitions per unit
    of weight (a newcomer holds none). Rounding either way is equally fair, and choosing
    the one that matches the current layout is what stops a membership change from
    shuffling partitions between members it did not touch. Without counts every member
    holds zero, so this is plain largest remainder.
    """
    total = sum(m.weight for m in members)
    targets = {m.name: q * m.weight // total for m in members}
    remainder = {m.name: q * m.weight % total for m in members}
    leftover = q - sum(targets.values())
    held = counts or {}

    def rank(m: Member) -> tuple[bool, Fraction, int, str]:
        have = held.get(m.name, 0)
        return (have <= targets[m.name], Fraction(have, m.weight), -remainder[m.name], m.name)

    for m in sorted((m for m in members if remainder[m.name]), key=rank)[:leftover]:
        targets[m.name] += 1
    return targets


class _Layout:
    """Mutable owner array plus the spacing rules used while claiming."""

    def __init__(self, owners: list[str | None], n: int, members: Sequence[Member], active: int) -> None:
        self.owners = owners
        self.q = q = len(owners)
        self.zone_of = _zone_keys(members)
        # Spacing beyond the number of nodes (or zones) that own anything cannot be met,
        # so asking for it would only make every candidate look equally bad.
        node_span = min(n, active) - 1
        zones = len(set(self.zone_of.values())) if any(m.zone for m in members) else 1
        zone_span = min(n, zones) - 1
        self.node_offsets = sorted({d % q for d in range(-node_span, node_span + 1)} - {0})
        self.zone_offsets = sorted({d % q for d in range(-zone_span, zone_span + 1)} - {0})

    def conflicts(self, name: str, p: int) -> tuple[int, int]:
        """(same node, same zone) owners near ``p`` if ``name`` owned it."""
        owners, q, zone_of = self.owners, self.q, self.zone_of
        same_node = 0
        for d in self.node_offsets:
            if owners[(p + d) % q] == name:
                same_node += 1
        same_zone = 0
        zone = zone_of[name]
        for d in self.zone_offsets:
            other = owners[(p + d) % q]
            if other is not None and other != name and zone_of[other] == zone:
                same_zone += 1
        return same_node, same_zone

    def penalty(self, p: int) -> int:
        owner = self.owners[p]
        if owner is None:
            return 0
        same_node, same_zone = self.conflicts(owner, p)
        return _NODE_PENALTY * same_node + _ZONE_PENALTY * same_zone


def _fill(layout: _Layout, targets: dict[str, int]) -> None:
    """Give members below target partitions that are free or held above target.

    One sweep over the candidates in ring order per pass. The first pass paces each
    member (it may take its ``i``-th partition only once it is due, ``deficit * i / C``
    candidates in), which spreads a newcomer's partitions evenly around the ring and
    makes a fresh ring a weighted round-robin; it also insists on perfect spacing. Later
    passes relax the rules step by step, so the loop always finishes: while anyone is
    below target there is a free partition or one held above target.
    """
    owners = layout.owners
    counts = Counter(o for o in owners if o is not None)
    need = {name: t - counts[name] for name, t in sorted(targets.items()) if t > counts[name]}
    excess = {name: counts[name] - t for name, t in targets.items() if counts[name] > t}
    candidates = [p for p, o in enumerate(owners) if o is None or o in excess]
    total = len(candidates)
    initial = dict(need)
    taken = dict.fromkeys(need, 0)
    for strictness in (3, 2, 1, 0):
        for i, p in enumerate(candidates):
            if not need:
                return
            current = owners[p]
            if current is not None and excess.get(current, 0) <= 0:
                continue
            best: tuple[int, int, int, str] | None = None
            for name, wanted in need.items():
                if strictness == 3:
                    urgency = initial[name] * (i + 1) - taken[name] * total
                    if urgency <= 0:
                        continue
                else:
                    urgency = wanted
                same_node, same_zone = layout.conflicts(name, p)
                if (same_node and strictness >= 1) or (same_zone and strictness >= 2):
                    continue
                key = (same_node, same_zone, -urgency, name)
                if best is None or key < best:
                    best = key
            if best is None:
                continue
            name = best[3]
            if current is not None:
                excess[current] -= 1
            owners[p] = name
            taken[name] += 1
            need[name] -= 1
            if not need[name]:
                del need[name]
    if need:  # pragma: no cover - unreachable by the counting argument above
        raise AssertionError(f"claim left members below target: {need}")


def _polish(layout: _Layout) -> None:
    """Swap owners of badly spaced partitions in a fresh ring (counts stay the same).

    Pacing leaves a seam where the round-robin wraps from partition ``q - 1`` to ``0``;
    a few swaps usually remove it. Only used without a previous ring, since a swap is
    a move, and skipped when conflicts are everywhere (a member whose weight is more
    than ``1/n`` of the total cannot be spaced out): polishing could not fix that.
    """
    owners, q = layout.owners, layout.q
    reach = max((min(d, q - d) for d in layout.node_offsets + layout.zone_offsets), default=0)
    limit = 8 * reach + 8
    bad = [p for p in range(q) if layout.penalty(p)]
    if len(bad) > limit:  # zones too unequal to space out: still fix repeated nodes
        bad = [p for p in bad if layout.penalty(p) >= _NODE_PENALTY]
    if not bad or len(bad) > limit:
        return

    def cost(name: str | None, p: int) -> int:
        if name is None:  # pragma: no cover - the layout is complete when polishing
            return 0
        same_node, same_zone = layout.conflicts(name, p)
        return _NODE_PENALTY * same_node + _ZONE_PENALTY * same_zone

    def local(p: int, r: int) -> int:
        near = {(x + d) % q for x in (p, r) for d in range(-reach, reach + 1)}
        return sum(layout.penalty(x) for x in near)

    budget = _REPAIR_BUDGET
    for _ in range(3):
        improved = False
        for p in bad:
            x = owners[p]
            here = cost(x, p)
            if not here:
                continue
            for r in range(q):
                y = owners[r]
                budget -= 1
                if budget < 0:
                    return
                if y == x or cost(y, p) + cost(x, r) >= here + cost(y, r):
                    continue  # cheap estimate says no gain; skip the exact check
                before = local(p, r)
                owners[p], owners[r] = y, x
                if local(p, r) < before:
                    improved = True
                    break
                owners[p], owners[r] = x, y
        if not improved:
            return


def claim(
    members: Sequence[Member], q: int, n: int, previous: Sequence[str] | None = None
) -> tuple[str, ...]:
    """Owner of each of the ``q`` partitions, moving as little as possible from ``previous``.

    Deterministic: the result depends only on the member set (not its order), ``q``,
    ``n`` and ``previous``. Members keep what they own up to their target and only
    members below target receive, so every move is one the new targets force.
    ``previous`` may name departed members; their partitions are dealt out again.
    """
    ms = _check_members(members)
    _check_q(q)
    if not _is_int(n) or n < 1:
        raise RingError(f"n must be an integer >= 1, got {short_repr(n)}")
    names = {m.name for m in ms}
    owners: list[str | None]
    if previous is None:
        owners = [None] * q
    else:
        if len(previous) != q:
            raise RingError(f"previous owners has {len(previous)} entries, expected q = {q}")
        owners = [o if o in names else None for o in previous]
    counts = Counter(o for o in owners if o is not None) if previous is not None else None
    targets = _targets(ms, q, counts)
    active = sum(1 for t in targets.values() if t)
    layout = _Layout(owners, n, ms, active)
    _fill(layout, targets)
    if previous is None:
        _polish(layout)
    return tuple(o for o in layout.owners if o is not None)


# --- the ring value ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ring:
    """One version of the ring: members, the owner of every partition, and replicas per key."""

    epoch: int  # version of this ring value; bigger = newer
    q: int  # number of partitions, power of two
    n: int  # replicas per key
    members: tuple[Member, ...]  # sorted by name
    owners: tuple[str, ...]  # len q; owners[p] = name of the member owning partition p
    _by_name: dict[str, Member] = field(init=False, repr=False, compare=False)
    _zone_of: dict[str, str] | None = field(init=False, repr=False, compare=False)  # None: no zones
    _owning: int = field(init=False, repr=False, compare=False)  # members that own a partition
    _plists: dict[int, PreferenceList] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        """Validate and normalise, so a Ring that exists is always usable."""
        if not _is_int(self.epoch) or self.epoch < 0:
            raise RingError(f"epoch must be an integer >= 0, got {short_repr(self.epoch)}")
        _check_q(self.q)
        if not _is_int(self.n) or self.n < 1:
            raise RingError(f"n must be an integer >= 1, got {short_repr(self.n)}")
        if not isinstance(self.members, (tuple, list)):
            raise RingError(f"members must be a sequence of Member, got {type(self.members).__name__}")
        members = _check_members(self.members)
        if not isinstance(self.owners, (tuple, list)):
            raise RingError(f"owners must be a sequence of names, got {type(self.owners).__name__}")
        owners: tuple[object, ...] = tuple(self.owners)  # unchecked yet (compiled: no str cast)
        if len(owners) != self.q:
            raise RingError(f"owners has {len(owners)} entries, expected q = {self.q}")
        by_name = {m.name: m for m in members}
        for p, owner in enumerate(owners):
            if not isinstance(owner, str) or owner not in by_name:
                raise RingError(f"partition {p} is owned by {short_repr(owner)}, which is not a member")
        object.__setattr__(self, "members", members)
        object.__setattr__(self, "owners", owners)
        object.__setattr__(self, "_by_name", by_name)
        zoned = any(m.zone for m in members)
        object.__setattr__(self, "_zone_of", _zone_keys(members) if zoned else None)
        object.__setattr__(self, "_owning", len(set(owners)))
        object.__setattr__(self, "_plists", {})

    def member(self, name: str) -> Member:
        """The member called ``name``; KeyError if there is none."""
        return self._by_name[name]

    def partition_for(self, key: bytes) -> int:
        return partition_of(key, self.q)

    def preference_list(self, partition: int, n: int | None = None) -> PreferenceList:
        """Replicas for ``partition`` (``n`` of them: a bucket's; default the ring's),
        computed once per ring value (rings are immutable). The primaries for a smaller
        ``n`` are the first of those for a bigger one."""
        if n is not None and n != self.n:
            return self._preference_list_n(partition, n)
        cached = self._plists.get(partition)
        if cached is None:
            if not _is_int(partition) or not 0 <= partition < self.q:
                raise ValueError(f"partition must be in 0..{self.q - 1}, got {short_repr(partition)}")
            cached = self._plists[partition] = self._walk(partition, self.n)
        return cached

    def _preference_list_n(self, partition: int, n: int) -> PreferenceList:
        slot = partition + self.q * n  # one cache for every n: keys never collide
        cached = self._plists.get(slot)
        if cached is None:
            if not _is_int(partition) or not 0 <= partition < self.q:
                raise ValueError(f"partition must be in 0..{self.q - 1}, got {short_repr(partition)}")
            if not _is_int(n) or n < 1:
                raise ValueError(f"n must be an integer >= 1, got {short_repr(n)}")
            cached = self._plists[slot] = self._walk(partition, n)
        return cached

    def _walk(self, start: int, n: int) -> PreferenceList:
        """Distinct owners clockwise from ``start``: distinct zones first, then any node."""
        q, owners, owning, zone_of = self.q, self.owners, self._owning, self._zone_of
        order: list[str] = []
        seen: set[str] = set()
        for i in range(q):
            owner = owners[(start + i) % q]
            if owner not in seen:
                seen.add(owner)
                order.append(owner)
                if len(order) == owning:
                    break
        want = min(n, len(self.members))
        primaries: list[str] = []
        if zone_of is not None:
            zones: set[str] = set()
            for name in order:
                if len(primaries) == want:
                    break
                if zone_of[name] not in zones:
                    zones.add(zone_of[name])
                    primaries.append(name)
        for name in order:
            if len(primaries) == want:
                break
            if name not in primaries:
                primaries.append(name)
        idle = [m.name for m in self.members if m.name not in seen]
        # A member that owns nothing (tiny weight, or q < members) still counts as one of
        # the N replicas when the owners alone are too few: N copies beat a neat layout.
        while len(primaries) < want:
            primaries.append(idle.pop(0))
        chosen = set(primaries)
        fallbacks = [name for name in order + idle if name not in chosen]
        return PreferenceList(start, tuple(primaries), tuple(fallbacks))

    def preference_list_for(self, key: bytes, n: int | None = None) -> PreferenceList:
        return self.preference_list(self.partition_for(key), n)

    def owned_counts(self) -> dict[str, int]:
        """Partitions per member, including members that own none (for balance reports)."""
        counts = dict.fromkeys((m.name for m in self.members), 0)
        for owner in self.owners:
            counts[owner] += 1
        return counts

    def partitions_of(self, name: str) -> list[int]:
        """Partitions ``name`` owns, ascending; empty for a non-member."""
        return [p for p, owner in enumerate(self.owners) if owner == name]

    def to_wire(self) -> dict[str, Any]:
        """Plain str/int/list form (msgpack- and JSON-able)."""
        return {
            "epoch": self.epoch,
            "q": self.q,
            "n": self.n,
            "members": [[m.name, m.address, m.zone, m.weight] for m in self.members],
            "owners": list(self.owners),
        }

    @classmethod
    def from_wire(cls, data: object) -> Ring:
        """Parse :meth:`to_wire` output from an untrusted peer; RingError on anything wrong."""
        if not isinstance(data, dict):
            raise RingError(f"ring must be a map, got {type(data).__name__}")
        # fname, not name: below, name holds unchecked wire data (compiled, a variable has one type)
        for fname in ("epoch", "q", "n", "members", "owners"):
            if fname not in data:
                raise RingError(f"ring has no '{fname}'")
        for fname in ("epoch", "q", "n"):
            if not _is_int(data[fname]):
                raise RingError(f"ring '{fname}' must be an integer, got {short_repr(data[fname])}")
        raw_members = data["members"]
        if not isinstance(raw_members, (list, tuple)):
            raise RingError(f"ring 'members' must be a list, got {type(raw_members).__name__}")
        members: list[Member] = []
        for i, raw in enumerate(raw_members):
            if not isinstance(raw, (list, tuple)) or len(raw) != 4:
                raise RingError(f"ring member {i} must be [name, address, zone, weight], got {short_repr(raw)}")
            name, address, zone, weight = raw
            if not (isinstance(name, str) and isinstance(address, str) and isinstance(zone, str)):
                raise RingError(f"ring member {i}: name, address and zone must be strings, got {short_repr(raw)}")
            if not _is_int(weight):
                raise RingError(f"ring member {i}: weight must be an integer, got {short_repr(weight)}")
            members.append(Member(name, address, zone, weight))
        raw_owners = data["owners"]
        if not isinstance(raw_owners, (list, tuple)):
            raise RingError(f"ring 'owners' must be a list, got {type(raw_owners).__name__}")
        return cls(data["epoch"], data["q"], data["n"], tuple(members), tuple(raw_owners))

    def with_members(self, members: Iterable[Member]) -> Ring:
        """The next ring (epoch + 1) for a new member list, moving as few partitions as possible."""
        ms = _check_members(members)
        owners = claim(ms, self.q, self.n, previous=self.owners)
        return Ring(self.epoch + 1, self.q, self.n, ms, owners)


def new_ring(members: Iterable[Member], q: int = 64, n: int = 3, epoch: int = 1) -> Ring:
    """A fresh ring (no previous owners) for a new cluster."""
    ms = _check_members(members)
    return Ring(epoch, q, n, ms, claim(ms, q, n))
