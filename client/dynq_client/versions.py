"""Per-key causal versions: dotted version vectors, as Riak 2.0 does with ``dvv_enabled``.

An object is a *dotted causal container*: a version vector ``clock`` (actor -> highest
counter seen) that summarises every write the object has seen, and a list of siblings,
each tagged with the *dot* ``(actor, counter)`` of the write that made it::

    clock = {a: 3, b: 1}
    siblings = [ (a,3) "x" ,  (b,1) "y" ]      # two concurrent writes, both kept

A sibling is obsolete as soon as some clock that saw its dot exists on the other side of
a merge and does not hold it any more; that is how a write with a context supersedes
exactly what the reader was shown, while a concurrent write (whose dot the context does
not cover) survives as a sibling. Unlike plain per-object version vectors, the dot per
sibling stops "sibling explosion": the number of siblings is bounded by the number of
truly concurrent writers, not by the number of retries.

Actors are node identities, and a node only mints a dot for a key after its own
durable copy of that key includes every dot it minted before (the coordinator writes
locally first), so an actor's counters for a key never collide. A node that loses its
data comes back under a new actor id, so its new writes are not dominated by clocks
that remember its old ones (the Riak "KV679" lesson).

The functions here are pure; :func:`merge` is commutative, associative and idempotent
(property-tested), which is what lets replicas, read repair, hinted handoff and
anti-entropy all converge by merging in any order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .errors import InvalidContext, ProtocolError
from .protocol import DEFAULT_LIMITS, Limits, packb, short_repr, unpackb

Clock = Mapping[str, int]
"""A version vector: actor id -> highest counter of that actor seen."""

OBJECT_FORMAT = 1
CONTEXT_FORMAT = 1
MAX_ACTOR_LEN = 128


@dataclass(frozen=True, slots=True)
class Sibling:
    """One concurrent version of a value; ``value is None`` marks a tombstone (a delete).

    ``expires_ms`` (wall-clock ms, 0: never) is part of the write, minted with its dot by
    the coordinator and carried wherever the sibling goes (replicas, hints, transfers,
    anti-entropy), so every copy of a sibling expires at the same instant."""

    actor: str
    counter: int
    timestamp_ms: int
    value: bytes | None
    expires_ms: int = 0

    @property
    def dot(self) -> tuple[str, int]:
        return (self.actor, self.counter)

    @property
    def is_tombstone(self) -> bool:
        return self.value is None

    def expired(self, now_ms: int) -> bool:
        """True once the sibling's expiry has passed (by ``now_ms``, the caller's clock)."""
        return 0 < self.expires_ms <= now_ms


@dataclass(frozen=True, slots=True)
class VersionedObject:
    """A key's stored state: causal clock plus the surviving siblings, in canonical order."""

    clock: dict[str, int]
    siblings: tuple[Sibling, ...]

    @property
    def values(self) -> list[bytes]:
        """The live values (tombstones left out), in dot order."""
        return [s.value for s in self.siblings if s.value is not None]

    @property
    def found(self) -> bool:
        """True when at least one sibling is a live value (not every sibling is a delete)."""
        return any(s.value is not None for s in self.siblings)

    @property
    def is_tombstone(self) -> bool:
        """True when every sibling is a delete: the key reads as not found."""
        return bool(self.siblings) and not self.found

    @property
    def expires(self) -> bool:
        """True when some sibling carries an expiry."""
        return any(s.expires_ms for s in self.siblings)

    def live(self, now_ms: int) -> VersionedObject:
        """This object as a read at ``now_ms`` sees it: expired siblings left out, the clock
        kept. Dropping a sibling while keeping a clock that covers its dot is exactly how a
        write supersedes it, so the result merges with any other replica's copy without
        bringing the expired sibling back."""
        if not any(0 < s.expires_ms <= now_ms for s in self.siblings):
            return self
        return VersionedObject(self.clock, tuple(s for s in self.siblings if not s.expired(now_ms)))

    def dead_since_ms(self) -> int:
        """When this object stopped holding any live value by expiry: the latest expiry
        (or tombstone time) of its siblings if every sibling expires or is a delete and at
        least one expires; 0 otherwise (it holds a value that never expires, or it is a
        plain tombstone, whose reaping has its own grace)."""
        if not self.expires or any(s.value is not None and not s.expires_ms for s in self.siblings):
            return 0
        return max(s.expires_ms if s.expires_ms else s.timestamp_ms for s in self.siblings)


EMPTY = VersionedObject({}, ())


def covers(clock: Clock, actor: str, counter: int) -> bool:
    """True if ``clock`` has seen the dot ``(actor, counter)``."""
    return clock.get(actor, 0) >= counter


def descends(a: Clock, b: Clock) -> bool:
    """True if ``a`` has seen everything ``b`` has (a >= b pointwise)."""
    return all(a.get(actor, 0) >= counter for actor, counter in b.items())


def merge_clocks(a: Clock, b: Clock) -> dict[str, int]:
    merged = dict(a)
    for actor, counter in b.items():
        if counter > merged.get(actor, 0):
            merged[actor] = counter
    return merged


def _dot_order(s: Sibling) -> tuple[str, int]:
    return (s.actor, s.counter)


def _canonical(siblings: Iterable[Sibling]) -> tuple[Sibling, ...]:
    if isinstance(siblings, (list, tuple)) and len(siblings) <= 1:  # most objects: nothing to sort
        return tuple(siblings)
    return tuple(sorted(siblings, key=_dot_order))


def update(
    local: VersionedObject | None,
    context: Clock,
    actor: str,
    value: bytes | None,
    now_ms: int,
    expires_ms: int = 0,
) -> VersionedObject:
    """The coordinator's step of a put (or a delete when ``value`` is None).

    Mints a new dot for ``actor``, drops every local sibling the ``context`` covers (the
    reader saw them and chose to replace them), and keeps every sibling it does not cover
    (a concurrent write the reader never saw) unless it has expired by ``now_ms``: the
    clock still covers an expired sibling's dot, so it stays superseded everywhere.
    ``expires_ms`` (0: never) is the new sibling's expiry.
    """
    base = local or EMPTY
    counter = max(base.clock.get(actor, 0), context.get(actor, 0)) + 1
    kept = [s for s in base.siblings
            if context.get(s.actor, 0) < s.counter and not 0 < s.expires_ms <= now_ms]
    kept.append(Sibling(actor, counter, now_ms, value, expires_ms if value is not None else 0))
    clock = merge_clocks(base.clock, context)
    clock[actor] = counter
    return VersionedObject(clock, _canonical(kept))


def _pick(a: Sibling, b: Sibling) -> Sibling:
    """Two siblings with the same dot are the same write; choose deterministically anyway
    so that merge stays commutative even over corrupt input."""
    ka = (a.timestamp_ms, a.value is not None, a.value or b"", a.expires_ms)
    kb = (b.timestamp_ms, b.value is not None, b.value or b"", b.expires_ms)
    return a if ka >= kb else b


def merge(a: VersionedObject | None, b: VersionedObject | None) -> VersionedObject:
    """Merge two replicas' states of one key (sync of dotted causal containers).

    A sibling survives if the other side holds it too, or if the other side never saw its
    dot; a sibling whose dot the other side saw but no longer holds was superseded there.
    """
    if a is None:
        return b or EMPTY
    if b is None or a is b or a == b:  # the common case: replicas agree
        return a
    a_dots = {s.dot: s for s in a.siblings}
    b_dots = {s.dot: s for s in b.siblings}
    out: list[Sibling] = []
    for dot, s in a_dots.items():
        other = b_dots.get(dot)
        if other is not None:
            out.append(_pick(s, other))
        elif not covers(b.clock, *dot):
            out.append(s)
    for dot, s in b_dots.items():
        if dot not in a_dots and not covers(a.clock, *dot):
            out.append(s)
    return VersionedObject(merge_clocks(a.clock, b.clock), _canonical(out))


def last_write_wins(obj: VersionedObject) -> VersionedObject:
    """Keep only the newest sibling (by timestamp, then dot): the resolution of a bucket
    with ``conflict = "lww"``. The clock stays, so the dropped siblings stay superseded
    wherever this object is merged; the choice is deterministic, so replicas that resolve
    independently agree. Concurrent writes with older timestamps are lost, by design."""
    if len(obj.siblings) <= 1:
        return obj
    newest = max(obj.siblings, key=lambda s: (s.timestamp_ms, s.actor, s.counter))
    return VersionedObject(obj.clock, (newest,))


def merge_all(objects: Iterable[VersionedObject | None]) -> VersionedObject | None:
    result: VersionedObject | None = None
    for obj in objects:
        if obj is not None:
            result = obj if result is None else merge(result, obj)
    return result


# --- encoding ---------------------------------------------------------------------------


def object_to_wire(obj: VersionedObject) -> list[Any]:
    """Canonical plain form (sorted clock, siblings in dot order): equal objects encode
    to equal bytes, which anti-entropy hashes rely on. A sibling without expiry is the
    4-element form every version wrote; one with an expiry adds it as a fifth element."""
    return [
        OBJECT_FORMAT,
        [[actor, obj.clock[actor]] for actor in sorted(obj.clock)],
        [[s.actor, s.counter, s.timestamp_ms, s.value, s.expires_ms] if s.expires_ms
         else [s.actor, s.counter, s.timestamp_ms, s.value] for s in obj.siblings],
    ]


def encode_object(obj: VersionedObject) -> bytes:
    return packb(object_to_wire(obj))


def _clock_from_pairs(pairs: object, limits: Limits, what: str) -> dict[str, int]:
    if not isinstance(pairs, list) or len(pairs) > limits.max_clock_entries:
        raise ValueError(f"{what} must be a list of at most {limits.max_clock_entries} entries")
    clock: dict[str, int] = {}
    for pair in pairs:
        if (
            not isinstance(pair, list)
            or len(pair) != 2
            or not isinstance(pair[0], str)
            or not 0 < len(pair[0]) <= MAX_ACTOR_LEN
            or type(pair[1]) is not int
            or not 0 < pair[1] < 2**63
            or pair[0] in clock
        ):
            raise ValueError(f"{what} has an invalid entry {short_repr(pair)}")
        clock[pair[0]] = pair[1]
    return clock


def object_from_wire(data: object, limits: Limits = DEFAULT_LIMITS) -> VersionedObject:
    """Validate and build an object from its plain form; raises ProtocolError."""
    try:
        if not isinstance(data, list) or len(data) != 3 or type(data[0]) is not int or data[0] != OBJECT_FORMAT:
            raise ValueError("not a dynq object")
        clock = _clock_from_pairs(data[1], limits, "object clock")
        raw_siblings = data[2]
        if not isinstance(raw_siblings, list) or len(raw_siblings) > limits.max_siblings * 2:
            raise ValueError("object siblings must be a bounded list")
        siblings = []
        seen: set[tuple[str, int]] = set()
        for raw in raw_siblings:
            if not isinstance(raw, list):
                raise ValueError("sibling must be [actor, counter, timestamp, value(, expires)]")
            if len(raw) == 4:
                actor, counter, ts, value = raw
                expires = 0
            elif len(raw) == 5:
                actor, counter, ts, value, expires = raw
                if type(expires) is not int or not 0 < expires < 2**63 or value is None:
                    raise ValueError(f"invalid sibling {short_repr(raw)}")
            else:
                raise ValueError("sibling must be [actor, counter, timestamp, value(, expires)]")
            if (
                not isinstance(actor, str)
                or type(counter) is not int
                or type(ts) is not int
                or not (value is None or isinstance(value, bytes))
                or clock.get(actor, 0) < counter
                or counter <= 0
                or (actor, counter) in seen
            ):
                raise ValueError(f"invalid sibling {short_repr(raw)}")
            if len(raw_siblings) > 1:
                seen.add((actor, counter))
            siblings.append(Sibling(actor, counter, ts, value, expires))
    except ValueError as exc:
        raise ProtocolError(f"invalid object: {exc}") from exc
    return VersionedObject(clock, _canonical(siblings))


def decode_object(blob: bytes, limits: Limits = DEFAULT_LIMITS) -> VersionedObject:
    return object_from_wire(unpackb(blob, limits), limits)


def decode_reply_object(body: dict[str, Any], limits: Limits = DEFAULT_LIMITS) -> VersionedObject | None:
    """The object in a reply body (``"ob"``: encoded bytes, or nil when the replica has none)."""
    blob = body.get("ob")
    if blob is None:
        return None
    if not isinstance(blob, bytes):
        raise ProtocolError(f"reply object must be bytes, got {type(blob).__name__}")
    return decode_object(blob, limits)


def encode_context(clock: Clock) -> bytes:
    """The opaque context handed to applications: the clock of what they read."""
    return packb([CONTEXT_FORMAT, [[actor, clock[actor]] for actor in sorted(clock)]])


def decode_context(context: bytes | None, limits: Limits = DEFAULT_LIMITS) -> dict[str, int]:
    """Parse a context from a client; an empty or absent context means 'saw nothing'."""
    if not context:
        return {}
    if len(context) > limits.max_context_bytes:
        raise InvalidContext(f"context is {len(context)} bytes; the limit is {limits.max_context_bytes}")
    try:
        data = unpackb(context, limits)
        if not isinstance(data, list) or len(data) != 2 or type(data[0]) is not int or data[0] != CONTEXT_FORMAT:
            raise ValueError("not a dynq context")
        return _clock_from_pairs(data[1], limits, "context")
    except (ValueError, ProtocolError) as exc:
        raise InvalidContext(f"invalid context: {exc}") from exc
