"""Convergent data types as delta-state dotted causal containers (pure, shared by client and node).

After Almeida, Shoker and Baquero, *Delta State Replicated Data Types* (2018), and the
bounded observed-remove set of Riak's ``riak_dt_orswot``. Every typed key's state is a
pair (causal *context*, dot *store*)::

    context = version vector {a: 7, b: 3} + dot cloud {(b, 5)}   # every dot ever seen
    store   = what is alive, each piece tagged with the dot of the op that wrote it

Join keeps a dot in the store if both sides hold it, or if the other side has never seen
it; a dot the other side saw but no longer holds was removed there. That one rule gives
every type here its semantics (the store kinds nest, so a map holds the other types):

=========  ===========================  =================================================
type       store                        op -> delta (applied by the coordinating primary)
=========  ===========================  =================================================
counter    DotFun dot -> (P, N) totals  increment: new dot with this actor's new totals,
           of the dot's actor           replacing its previous dot (value = per actor,
                                        the totals at its highest dot; summed)
set        element -> DotSet            add x: new dot on x, replacing the dots of x seen;
                                        remove x: context = the dots of x observed
register   DotFun dot -> (ts, value)    assign: new dot, context = every dot seen (MV:
                                        concurrent assignments all survive; ``value`` is
                                        the newest by timestamp, ``values`` all of them)
flag       DotSet                       enable: new dot; disable: context = dots seen
                                        (a concurrent enable survives: enable wins)
map        (name, type) -> store        update a field: the field's delta; remove a
                                        field: context = every dot in it observed
=========  ===========================  =================================================

The context is bounded: a dot is kept explicitly (in the cloud) only until the dots
before it arrive, then folded into the version vector; a removal leaves no per-element
tombstone, only the context's advance. A *delta* is itself a state (small: the new dot,
the dots it replaces), so hints, read repair, anti-entropy and transfers all just join.

**Expiry** (a bucket's ``ttl``): the context's wire form carries a key-level
``expires_ms`` (0: never), set by every op to now + ttl and joined by max, so a key
expires ttl after its last update. A read of an expired state shows the type's empty
value; an op on one first removes every dot the coordinator holds (an observed-remove of
everything: old increments and adds never count again), then applies itself to the empty
store (:func:`apply_op`).

A delta also lists the elements (or fields) it ``touched``: every dot in its context
belongs to one of them, which lets a replica join it into a large stored set by reading
and writing only those elements' rows (``touched`` is None for a full state).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Union

from .errors import InvalidRequest, ProtocolError
from .protocol import DEFAULT_LIMITS, Limits, packb, short_repr, unpackb

Dot = tuple[str, int]
COUNTER, SET, MAP, REGISTER, FLAG = "counter", "set", "map", "register", "flag"
TYPES = (COUNTER, SET, MAP, REGISTER, FLAG)
"""The data types a bucket may hold (``datatype`` property; ``none`` for plain values)."""
MAX_ACTOR_LEN = 128
MAX_FIELD_NAME = 255
MAX_MAP_DEPTH = 4
STATE_TAG = "dt"
STATE_PREFIX = b"\x95\xa2dt"  # msgpack of ["dt", ...] with five items: a typed state blob

Counts = tuple[int, int]  # (P, N): the totals of increments and decrements of one actor
Stamped = tuple[int, bytes]  # (timestamp_ms, value) of a register assignment
DotSet = frozenset[Dot]
Store = Any  # DotSet | dict[Dot, Counts] | dict[Dot, Stamped] | dict[bytes, DotSet] | dict[FieldKey, Store]
FieldKey = tuple[str, str]  # (name, type) of a map field


# --- causal context ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Context:
    """Every dot a replica has seen: a version vector plus the dots beyond it (the cloud)."""

    vv: Mapping[str, int] = field(default_factory=dict)
    cloud: frozenset[Dot] = frozenset()

    def __contains__(self, dot: Dot) -> bool:
        return self.vv.get(dot[0], 0) >= dot[1] or dot in self.cloud

    def join(self, other: Context) -> Context:
        if other is self or (not other.cloud and not other.vv):
            return self
        vv = dict(self.vv)
        for actor, n in other.vv.items():
            if n > vv.get(actor, 0):
                vv[actor] = n
        return compact(vv, self.cloud | other.cloud)

    def max_counter(self, actor: str) -> int:
        """The highest counter of ``actor`` seen: the next dot it mints is one above."""
        top = self.vv.get(actor, 0)
        for a, n in self.cloud:
            if a == actor and n > top:
                top = n
        return top

    @property
    def clock(self) -> dict[str, int]:
        """A version vector covering at least this context (for :func:`actor_for`)."""
        clock = dict(self.vv)
        for a, n in self.cloud:
            clock[a] = max(clock.get(a, 0), n)
        return clock


EMPTY_CONTEXT = Context()


def compact(vv: dict[str, int], cloud: Iterable[Dot]) -> Context:
    """Fold every cloud dot that extends the version vector into it; drop covered ones."""
    rest = []
    for actor, n in sorted(cloud, key=lambda d: (d[0], d[1])):
        top = vv.get(actor, 0)
        if n == top + 1:
            vv[actor] = n
        elif n > top:
            rest.append((actor, n))
    return Context(vv, frozenset(rest))  # ascending per actor: one pass folds every run


def context_of(dots: Iterable[Dot]) -> Context:
    return compact({}, dots)


# --- joins of dot stores -------------------------------------------------------------------------


def _join_dotset(a: DotSet, ca: Context, b: DotSet, cb: Context) -> DotSet:
    if a == b:
        return a
    return frozenset([d for d in a if d in b or d not in cb] + [d for d in b if d not in a and d not in ca])


def _join_dotfun(a: dict[Dot, Any], ca: Context, b: dict[Dot, Any], cb: Context) -> dict[Dot, Any]:
    out: dict[Dot, Any] = {}
    for d, v in a.items():
        if d in b:
            out[d] = max(v, b[d])  # the same dot is the same op; max keeps join commutative over junk
        elif d not in cb:
            out[d] = v
    for d, v in b.items():
        if d not in a and d not in ca:
            out[d] = v
    return out


def is_bottom(store: Store) -> bool:
    return not store


def join_store(kind: str, a: Store, ca: Context, b: Store, cb: Context) -> Store:
    """The join of two stores of type ``kind`` under their contexts (bottoms dropped)."""
    if kind == FLAG:
        return _join_dotset(a, ca, b, cb)
    if kind in (COUNTER, REGISTER):
        return _join_dotfun(a, ca, b, cb)
    out: dict[Any, Any] = {}
    for k in a.keys() | b.keys():
        sub = SET_ITEM if kind == SET else k[1]
        empty = empty_store(sub)
        v = join_store(sub, a.get(k, empty), ca, b.get(k, empty), cb)
        if not is_bottom(v):
            out[k] = v
    return out


SET_ITEM = FLAG  # an element's store: the dots of the adds that put it there


def empty_store(kind: str) -> Store:
    return frozenset() if kind == FLAG else {}


def dots_of(kind: str, store: Store) -> Iterable[Dot]:
    """Every dot alive in a store (what a removal of the whole store observes)."""
    if kind == FLAG:
        yield from store
    elif kind in (COUNTER, REGISTER):
        yield from store
    else:
        for k, v in store.items():
            yield from dots_of(SET_ITEM if kind == SET else k[1], v)


@dataclass(frozen=True, slots=True)
class State:
    """A typed key's state, or a delta of it: the type, the context, the store, and for a
    delta the elements or fields whose dots its context holds (None: a full state)."""

    kind: str
    ctx: Context
    store: Store
    touched: frozenset[Any] | None = None
    expires_ms: int = 0  # the key's expiry (0: never); joined by max


def is_expired(state: State, now_ms: int) -> bool:
    """Whether the key has expired: it reads as the type's empty value."""
    return 0 < state.expires_ms <= now_ms


def visible(state: State, now_ms: int) -> State:
    """What a read shows of ``state``: itself, or its empty store once it has expired
    (the context stays: removals sent back with it still observe what they saw)."""
    if not is_expired(state, now_ms) or is_bottom(state.store):
        return state
    return State(state.kind, state.ctx, empty_store(state.kind), state.touched, state.expires_ms)


def bottom(kind: str) -> State:
    return State(kind, EMPTY_CONTEXT, empty_store(kind))


def join(a: State, b: State) -> State:
    """Join two states (or deltas) of one key: commutative, associative, idempotent."""
    if a.kind != b.kind:
        raise ProtocolError(f"cannot join a {a.kind} with a {b.kind}")
    touched = None if a.touched is None or b.touched is None else a.touched | b.touched
    return State(a.kind, a.ctx.join(b.ctx), join_store(a.kind, a.store, a.ctx, b.store, b.ctx), touched,
                 max(a.expires_ms, b.expires_ms))


# --- values --------------------------------------------------------------------------------------


def counter_value(store: Mapping[Dot, Counts]) -> int:
    """Each actor's totals at its highest dot (an older dot of the same actor, not yet
    superseded here, is a prefix of the same history), summed over actors."""
    latest: dict[str, tuple[int, Counts]] = {}
    for (actor, n), counts in store.items():
        if actor not in latest or n > latest[actor][0]:
            latest[actor] = (n, counts)
    return sum(p - m for _, (p, m) in latest.values())


def register_values(store: Mapping[Dot, Stamped]) -> list[bytes]:
    """Concurrent assignments, newest first (by timestamp, then dot)."""
    return [v for (_, (_, v)) in sorted(store.items(), key=lambda kv: (kv[1][0], kv[0]), reverse=True)]


def value_of(kind: str, store: Store) -> Any:
    """The application's view: int, set of bytes, bytes|None, bool, or dict of fields."""
    if kind == COUNTER:
        return counter_value(store)
    if kind == SET:
        return set(store)
    if kind == REGISTER:
        values = register_values(store)
        return values[0] if values else None
    if kind == FLAG:
        return bool(store)
    names = [name for name, _ in store]
    # a name used with two types (concurrent updates of different types) shows both as name:type
    return {(name if names.count(name) == 1 else f"{name}:{t}"): value_of(t, sub)
            for (name, t), sub in sorted(store.items())}


# --- operations ----------------------------------------------------------------------------------


Op = list[Any]
"""An operation on the wire: ``["incr", n]``, ``["add", [x...]]``, ``["rem", [x...]]``,
``["assign", value]``, ``["enable"]``, ``["disable"]``, ``["update", name, type, op]``,
``["remove_field", name, type]`` and ``["clear"]`` (the key's delete). Removals may end
with the dots their caller's read observed (see :data:`SEEN_AT`)."""

OPS_OF = {
    COUNTER: {"incr", "clear"},
    SET: {"add", "rem", "clear"},
    REGISTER: {"assign", "clear"},
    FLAG: {"enable", "disable", "clear"},
    MAP: {"update", "remove_field", "clear"},
}


def check_op(kind: str, op: object, limits: Limits = DEFAULT_LIMITS, depth: int = 0) -> Op:
    """Validate an operation from a client for a key of type ``kind``; raises InvalidRequest."""
    if not isinstance(op, list) or not op or not isinstance(op[0], str):
        raise InvalidRequest(f"a {kind} operation must be a list [name, args...], got {short_repr(op)}")
    name = op[0]
    if name not in OPS_OF.get(kind, ()):
        raise InvalidRequest(f"{name!r:.40} is not an operation of a {kind} (one of {sorted(OPS_OF[kind])})")
    arity = {"incr": 2, "add": 2, "rem": 2, "assign": 2, "update": 4, "remove_field": 3}.get(name, 1)
    if len(op) != arity and not (name in SEEN_AT and len(op) == arity + 1):
        raise InvalidRequest(f"operation {name} takes {arity - 1} argument(s)")
    if name in SEEN_AT and len(op) > SEEN_AT[name]:
        seen = op[SEEN_AT[name]]
        try:
            if name == "rem":
                if not isinstance(seen, list) or len(seen) != len(op[1]):
                    raise ValueError("one list of dots per element")
                [_dots(d) for d in seen]
            else:
                _dots(seen)
        except ValueError as exc:
            raise InvalidRequest(f"the dots a removal observed are malformed: {exc}") from exc
    if name == "incr" and (type(op[1]) is not int or not -2**62 < op[1] < 2**62):
        raise InvalidRequest("increment must be an integer between -2**62 and 2**62")
    if name in ("add", "rem"):
        if not isinstance(op[1], list) or not op[1] or len(op[1]) > 10_000 or not all(
                isinstance(x, bytes) and len(x) <= limits.max_key_bytes for x in op[1]):
            raise InvalidRequest(f"set elements must be a non-empty list of at most 10000 byte strings "
                                 f"of at most {limits.max_key_bytes} bytes")
    if name == "assign" and (not isinstance(op[1], bytes) or len(op[1]) > limits.max_value_bytes):
        raise InvalidRequest(f"a register's value must be bytes of at most {limits.max_value_bytes}")
    if name in ("update", "remove_field"):
        if not isinstance(op[1], str) or not 0 < len(op[1]) <= MAX_FIELD_NAME:
            raise InvalidRequest("a map field's name must be a non-empty string")
        if op[2] not in TYPES:
            raise InvalidRequest(f"a map field's type must be one of {', '.join(TYPES)}, got {short_repr(op[2])}")
        if name == "update":
            if depth >= MAX_MAP_DEPTH:
                raise InvalidRequest(f"maps nest at most {MAX_MAP_DEPTH} deep")
            check_op(op[2], op[3], limits, depth + 1)
    return op


SEEN_AT = {"rem": 2, "remove_field": 3, "disable": 1, "clear": 1}
"""Where a removal carries the dots its caller's read saw of what it removes (optional):
the coordinator may not hold them yet (the read reached other replicas), and a removal
must still take effect on every add it observed."""

MAX_SEEN_DOTS = 100_000


def _dots(raw: object) -> list[Dot]:
    if not isinstance(raw, list) or len(raw) > MAX_SEEN_DOTS:
        raise ValueError(f"dots must be a list of at most {MAX_SEEN_DOTS}")
    return [_dot(d) for d in raw]


def dots_to_wire(dots: Iterable[Dot]) -> list[list[Any]]:
    return [[a, n] for a, n in sorted(dots)]


def _seen(op: Op, observed: Context | None, index: int | None = None) -> list[Dot]:
    """The observed dots an op carries (only those its caller's context covers)."""
    at = SEEN_AT.get(op[0])
    if observed is None or at is None or len(op) <= at:
        return []
    raw = op[at] if index is None else op[at][index]
    return [d for d in _dots(raw) if d in observed]


def _own_counts(store: Mapping[Dot, Counts], actor: str) -> tuple[list[Dot], Counts]:
    mine = [d for d in store if d[0] == actor]
    if not mine:
        return [], (0, 0)
    return mine, store[max(mine, key=lambda d: d[1])]


def _restrict(dots: Iterable[Dot], observed: Context | None) -> list[Dot]:
    """The dots a removal acts on: those the caller observed (all, without a context)."""
    return [d for d in dots if observed is None or d in observed]


def apply_op(state: State, op: Op, actor: str, now_ms: int, observed: Context | None = None,
             ttl_ms: int = 0) -> State:
    """The delta of ``op`` applied by ``actor`` to ``state`` (which must hold every dot
    ``actor`` minted for this key). ``observed`` is the caller's context for removals.
    With ``ttl_ms`` the delta sets the key's expiry to now + ttl; on an expired state
    (which must then be whole: every element of a set) the delta first removes every dot
    of it, and the op starts from the empty store."""
    counter = state.ctx.max_counter(actor)
    removed: list[Dot] = []
    old_store = state.store
    if is_expired(state, now_ms):
        removed = list(dots_of(state.kind, state.store))
        state = State(state.kind, state.ctx, empty_store(state.kind), state.touched, state.expires_ms)
    store, ctx = _apply(state.kind, state.store, op, actor, now_ms, observed, [counter])
    touched: frozenset[Any] | None
    if state.kind == SET:  # a clear or a reset observes every element: joined as a full state
        touched = None if op[0] == "clear" or removed else frozenset(store) | frozenset(op[1])
    elif state.kind == MAP:
        touched = (frozenset(store) | frozenset(old_store) if removed else
                   frozenset(store) | (frozenset([(op[1], op[2])]) if op[0] != "clear" else frozenset(state.store)))
    else:
        touched = frozenset()
    return State(state.kind, context_of(ctx + removed), store, touched, now_ms + ttl_ms if ttl_ms > 0 else 0)


def _apply(kind: str, store: Store, op: Op, actor: str, now_ms: int, observed: Context | None,
           counter: list[int]) -> tuple[Store, list[Dot]]:
    """(delta store, delta context dots) of one op on one store; ``counter`` is the
    actor's highest counter, advanced in place as dots are minted."""
    name = op[0]

    def mint() -> Dot:
        counter[0] += 1
        return (actor, counter[0])

    if name == "clear":
        return empty_store(kind), _restrict(dots_of(kind, store), observed) + _seen(op, observed)
    if kind == COUNTER:
        mine, (p, m) = _own_counts(store, actor)
        d = mint()
        n = op[1]
        return {d: (p + max(n, 0), m + max(-n, 0))}, mine + [d]
    if kind == FLAG:
        if name == "enable":
            d = mint()
            return frozenset([d]), list(store) + [d]
        return frozenset(), _restrict(store, observed) + _seen(op, observed)
    if kind == REGISTER:
        d = mint()
        return {d: (now_ms, op[1])}, list(store) + [d]
    if kind == SET:
        delta: dict[bytes, DotSet] = {}
        dots: list[Dot] = []
        for i, x in enumerate(op[1]):
            seen = store.get(x, frozenset())
            if name == "add":
                if x in delta:
                    continue
                d = mint()
                delta[x] = frozenset([d])
                dots += list(seen) + [d]
            else:
                dots += _restrict(seen, observed) + _seen(op, observed, i)
        return delta, dots
    # map
    fkey = (op[1], op[2])
    sub = store.get(fkey, empty_store(op[2]))
    if name == "remove_field":
        return {}, _restrict(dots_of(op[2], sub), observed) + _seen(op, observed)
    sub_delta, dots = _apply(op[2], sub, op[3], actor, now_ms, observed, counter)
    return ({fkey: sub_delta} if not is_bottom(sub_delta) else {}), dots


# --- encoding ------------------------------------------------------------------------------------


def context_to_wire(ctx: Context, expires_ms: int = 0) -> list[Any]:
    """``[vector, cloud]``, or in a state's header ``[vector, cloud, expires_ms]`` for a
    key that expires (a key without one encodes as before it could)."""
    wire: list[Any] = [[[a, ctx.vv[a]] for a in sorted(ctx.vv)], [[a, n] for a, n in sorted(ctx.cloud)]]
    if expires_ms:
        wire.append(expires_ms)
    return wire


def header_from_wire(raw: object, limits: Limits = DEFAULT_LIMITS) -> tuple[Context, int]:
    """(context, expires_ms) of a state's header (see :func:`context_to_wire`)."""
    if isinstance(raw, list) and len(raw) == 3:
        expires = raw[2]
        if type(expires) is not int or not 0 <= expires < 2**63:
            raise ValueError(f"invalid expiry {short_repr(expires)}")
        return context_from_wire(raw[:2], limits), expires
    return context_from_wire(raw, limits), 0


def encode_context(ctx: Context) -> bytes:
    """The opaque context a handle keeps from its last read (sent back with removals)."""
    return packb(["dtc", context_to_wire(ctx)])


def _dot(raw: object) -> Dot:
    if (not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], str)
            or not 0 < len(raw[0]) <= MAX_ACTOR_LEN or type(raw[1]) is not int or not 0 < raw[1] < 2**63):
        raise ValueError(f"invalid dot {short_repr(raw)}")
    return (raw[0], raw[1])


def context_from_wire(raw: object, limits: Limits = DEFAULT_LIMITS) -> Context:
    if not isinstance(raw, list) or len(raw) != 2 or not isinstance(raw[0], list) or not isinstance(raw[1], list):
        raise ValueError("a context must be [vector, cloud]")
    if len(raw[0]) > limits.max_clock_entries:
        raise ValueError(f"a context's vector has more than {limits.max_clock_entries} actors")
    vv: dict[str, int] = {}
    for pair in raw[0]:
        a, n = _dot(pair)
        vv[a] = n
    return compact(vv, [_dot(d) for d in raw[1]])


def decode_context(blob: bytes | None, limits: Limits = DEFAULT_LIMITS) -> Context | None:
    """A handle's context from a client (None: the caller read nothing: observe all)."""
    if not blob:
        return None
    try:
        data = unpackb(blob, limits)
        if not isinstance(data, list) or len(data) != 2 or data[0] != "dtc":
            raise ValueError("not a data type context")
        return context_from_wire(data[1], limits)
    except (ValueError, ProtocolError) as exc:
        from .errors import InvalidContext
        raise InvalidContext(f"invalid data type context: {exc}") from exc


def store_to_wire(kind: str, store: Store) -> Any:
    """Canonical plain form (everything sorted): equal states encode to equal bytes."""
    if kind == FLAG:
        return [[a, n] for a, n in sorted(store)]
    if kind == COUNTER:
        return [[a, n, p, m] for (a, n), (p, m) in sorted(store.items())]
    if kind == REGISTER:
        return [[a, n, ts, v] for (a, n), (ts, v) in sorted(store.items())]
    if kind == SET:
        return [[x, store_to_wire(FLAG, store[x])] for x in sorted(store)]
    return [[name, t, store_to_wire(t, store[(name, t)])] for name, t in sorted(store)]


def store_from_wire(kind: str, raw: object, depth: int = 0) -> Store:
    if not isinstance(raw, list):
        raise ValueError(f"a {kind} store must be a list")
    if kind == FLAG:
        return frozenset(_dot(d) for d in raw)
    if kind in (COUNTER, REGISTER):
        out: dict[Dot, Any] = {}
        for item in raw:
            if not isinstance(item, list) or len(item) != 4 or type(item[2]) is not int:
                raise ValueError(f"invalid {kind} entry {short_repr(item)}")
            if kind == COUNTER and (type(item[3]) is not int or item[2] < 0 or item[3] < 0):
                raise ValueError(f"invalid counter entry {short_repr(item)}")
            if kind == REGISTER and not isinstance(item[3], bytes):
                raise ValueError(f"invalid register entry {short_repr(item)}")
            out[_dot(item[:2])] = (item[2], item[3])
        return out
    if kind == SET:
        elems: dict[bytes, DotSet] = {}
        for item in raw:
            if not isinstance(item, list) or len(item) != 2 or not isinstance(item[0], bytes):
                raise ValueError(f"invalid set entry {short_repr(item)}")
            dots = store_from_wire(FLAG, item[1])
            if dots:
                elems[item[0]] = dots
        return elems
    if depth > MAX_MAP_DEPTH:
        raise ValueError("map nested too deep")
    fields: dict[FieldKey, Store] = {}
    for item in raw:
        if (not isinstance(item, list) or len(item) != 3 or not isinstance(item[0], str)
                or item[1] not in TYPES):
            raise ValueError(f"invalid map entry {short_repr(item)}")
        sub = store_from_wire(item[1], item[2], depth + 1)
        if not is_bottom(sub):
            fields[(item[0], item[1])] = sub
    return fields


def _touched_to_wire(kind: str, touched: frozenset[Any] | None) -> Any:
    if touched is None:
        return None
    if kind == MAP:
        return [[n, t] for n, t in sorted(touched)]
    return sorted(touched) if kind == SET else []


def state_to_wire(state: State) -> list[Any]:
    return [STATE_TAG, state.kind, context_to_wire(state.ctx, state.expires_ms), store_to_wire(state.kind, state.store),
            _touched_to_wire(state.kind, state.touched)]


def encode_state(state: State) -> bytes:
    return packb(state_to_wire(state))


def is_state_blob(blob: bytes | None) -> bool:
    """True for a typed state (as opposed to a plain versioned object)."""
    return blob is not None and blob[:4] == STATE_PREFIX


def state_from_wire(data: object, limits: Limits = DEFAULT_LIMITS) -> State:
    """Validate and build a state; raises ProtocolError. Every dot in the store must be in
    the context (that is what makes joins safe)."""
    try:
        if not isinstance(data, list) or len(data) != 5 or data[0] != STATE_TAG or data[1] not in TYPES:
            raise ValueError("not a dynq data type state")
        kind = data[1]
        ctx, expires = header_from_wire(data[2], limits)
        store = store_from_wire(kind, data[3])
        for d in dots_of(kind, store):
            if d not in ctx:
                raise ValueError(f"dot {d} is in the store but not in the context")
        raw_t = data[4]
        touched: frozenset[Any] | None = None
        if raw_t is not None:
            if not isinstance(raw_t, list):
                raise ValueError("touched must be a list")
            if kind == MAP:
                touched = frozenset((t[0], t[1]) for t in raw_t if isinstance(t, list) and len(t) == 2)
            else:
                touched = frozenset(x for x in raw_t if isinstance(x, bytes))
    except (ValueError, TypeError) as exc:
        raise ProtocolError(f"invalid data type state: {exc}") from exc
    return State(kind, ctx, store, touched, expires)


@functools.lru_cache(maxsize=16)
def state_limits(limits: Limits) -> Limits:
    """The limits a state blob decodes under: a set's elements are one array, bounded by
    the blob's size rather than by ``max_container_len`` (100,000 by default, fine for a
    request's lists, not for a large set: each element costs at least 8 bytes, so a
    message holds fewer than max_message_bytes // 8 of them)."""
    return dataclasses.replace(limits, max_container_len=max(limits.max_container_len,
                                                             limits.max_message_bytes // 8))


def decode_state(blob: bytes, limits: Limits = DEFAULT_LIMITS) -> State:
    # A blob of at most max_container_len bytes holds no longer array: the plain limits
    # (the common, small state) cost no second cache lookup.
    bounded = limits if len(blob) <= limits.max_container_len else state_limits(limits)
    return state_from_wire(unpackb(blob, bounded), limits)


def element_row(dots: DotSet) -> bytes:
    """The stored form of one set element's dots (one row per element on a node)."""
    return packb(store_to_wire(FLAG, dots))


def element_from_row(row: bytes) -> DotSet:
    result: DotSet = store_from_wire(FLAG, unpackb(row))
    return result


def element_hash(elem: bytes, row: bytes) -> int:
    """An element's share of a set's digest: the XOR of these over the elements is the
    set's fingerprint, updated in O(1) per changed element (the Merkle leaf follows it)."""
    return int.from_bytes(hashlib.blake2b(len(elem).to_bytes(4, "big") + elem + row, digest_size=16).digest(), "big")


Value = Union[int, set[bytes], bytes, None, bool, dict[str, Any]]
