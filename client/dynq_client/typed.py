"""Handles on typed keys: ``db.counter(bucket, key)``, ``db.set``, ``db.map``, ``db.register``,
``db.flag`` (async on :class:`~dynq_client.client.AsyncClient`, sync on ``Client``).

A handle sends *operations* (``increment(5)``, ``add(b"x")``) to a primary of the key,
which applies them under its own dot and replicates the delta (see dynq_client.crdt);
reads join R replicas' states on a node. A handle keeps the causal context of its last
read and sends it with removals, so a remove takes effect on exactly the adds that read
observed and a concurrent add survives. Without a read first, a remove observes whatever
the coordinating primary holds.

    cart = db.set("carts", "alice")
    await cart.add(b"socks")
    if await cart.contains(b"shoes"):      # the handle now holds that read's context
        await cart.remove(b"shoes")
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable, Coroutine, TypeVar

import tenacity

from . import buckets as _b
from . import crdt
from .buckets import BucketProps
from .errors import InvalidRequest, Unavailable, WrongDataType
from .protocol import OP_DT_GET, OP_DT_UPDATE

if TYPE_CHECKING:
    from .client import AsyncClient, KeyLike

T = TypeVar("T")


def _elem(x: object) -> bytes:
    if isinstance(x, str):
        return x.encode()
    if not isinstance(x, bytes):
        raise InvalidRequest(f"set elements are bytes (or str, encoded as UTF-8), got {type(x).__name__}")
    return x


def _stop_after(seconds: float) -> Callable[[tenacity.RetryCallState], bool]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    return lambda state: loop.time() >= deadline


class AsyncTyped:
    """What every handle shares: the key, its bucket, sending ops and reads."""

    kind = ""

    def __init__(self, client: AsyncClient, bucket: str, key: KeyLike) -> None:
        _b.check_name(bucket, error=InvalidRequest)
        self.client = client
        self.bucket = bucket
        self.key = key
        self.context: bytes | None = None  # causal context of the last read (sent with removals)
        self.seen: crdt.Store | None = None  # the store that read returned (its dots go with removals)

    async def _props(self) -> BucketProps:
        await self.client.connect()
        props = await self.client._props(self.bucket)
        if props is None or props.datatype != self.kind:
            have = "plain values" if props is None or props.datatype in (None, "none") else f"{props.datatype}s"
            raise WrongDataType(f"bucket {self.bucket!r} holds {have}, not {self.kind}s")
        return props

    async def _body(self, **extra: Any) -> tuple[dict[str, Any], tuple[str, ...]]:
        props = await self._props()
        raw = self.client._check_key(self.key)
        table = self.client.table
        assert table is not None
        plist = table.ring.preference_list_for(_b.storage_key(props.name, raw), props.n)
        body = {"k": raw, "bk": props.name, "t": int(self.client.timeout * 1000), **extra}
        return body, plist.primaries + plist.fallbacks

    async def _update(self, op: list[Any], *, observed: bool = False, w: int | None = None) -> None:
        """Send one op; Unavailable (executed nowhere) is retried, anything else is not: an
        op is not idempotent, and a timeout leaves its outcome unknown."""
        extra: dict[str, Any] = {"op": op}
        if w is not None:
            extra["w"] = w
        if observed and self.context:
            extra["ctx"] = self.context
        body, candidates = await self._body(**extra)
        try:
            await self.client._first_taker(OP_DT_UPDATE, body, candidates)
        except Unavailable:
            async for attempt in tenacity.AsyncRetrying(
                stop=_stop_after(self.client.timeout), wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
                retry=tenacity.retry_if_exception_type(Unavailable), reraise=True,
            ):
                with attempt:
                    await self.client._first_taker(OP_DT_UPDATE, body, candidates)

    async def _read(self, sel: list[Any] | None = None, r: int | None = None) -> dict[str, Any]:
        extra: dict[str, Any] = {} if sel is None else {"sel": sel}
        if r is not None:
            extra["r"] = r
        body, candidates = await self._body(**extra)
        reply = await self.client._first_taker(OP_DT_GET, body, candidates)
        return reply.body

    async def state(self, r: int | None = None) -> crdt.State:
        """The joined state of R replicas (and remember its context)."""
        blob = (await self._read(None, r)).get("st")
        if blob is None:
            self.context = self.seen = None
            return crdt.bottom(self.kind)
        if not isinstance(blob, bytes):
            raise InvalidRequest("the node's reply carried no state")
        state = crdt.decode_state(blob, self.client.limits)
        self.context = crdt.encode_context(state.ctx)
        self.seen = state.store
        return state

    def _seen_dots(self, kind: str, store: crdt.Store | None) -> list[list[Any]]:
        """The dots the last read saw of ``store`` (a part of it), for a removal."""
        return [] if store is None else crdt.dots_to_wire(crdt.dots_of(kind, store))

    async def delete(self, w: int | None = None) -> None:
        """Remove everything this handle's last read saw (everything the primary holds
        without a read): the key reads empty; concurrent updates survive."""
        seen = self._seen_dots(self.kind, self.seen)
        await self._update(["clear", seen] if self.context and len(seen) <= crdt.MAX_SEEN_DOTS else ["clear"],
                           observed=True, w=w)


class AsyncCounter(AsyncTyped):
    """A PN-counter: increments and decrements by any integer, from any replica."""

    kind = crdt.COUNTER

    async def increment(self, n: int = 1, *, w: int | None = None) -> None:
        if not isinstance(n, int) or isinstance(n, bool):
            raise InvalidRequest(f"increment must be an integer, got {type(n).__name__}")
        await self._update(["incr", n], w=w)

    async def decrement(self, n: int = 1, *, w: int | None = None) -> None:
        if not isinstance(n, int) or isinstance(n, bool):
            raise InvalidRequest(f"decrement must be an integer, got {type(n).__name__}")
        await self._update(["incr", -n], w=w)

    async def value(self, r: int | None = None) -> int:
        result: int = crdt.value_of(self.kind, (await self.state(r)).store)
        return result


class AsyncSet(AsyncTyped):
    """An add-wins observed-remove set of byte strings."""

    kind = crdt.SET

    async def add(self, *elements: bytes | str, w: int | None = None) -> None:
        await self._update(["add", [_elem(x) for x in elements]], w=w)

    async def remove(self, *elements: bytes | str, w: int | None = None) -> None:
        """Remove what this handle's last read observed of ``elements``."""
        xs = [_elem(x) for x in elements]
        store = self.seen or {}
        seen = [self._seen_dots(crdt.FLAG, store.get(x, frozenset())) for x in xs]
        await self._update(["rem", xs, seen] if self.context else ["rem", xs], observed=True, w=w)

    async def value(self, r: int | None = None) -> set[bytes]:
        return set((await self.state(r)).store)

    async def contains(self, element: bytes | str, r: int | None = None) -> bool:
        """Membership of one element, without moving the set."""
        x = _elem(element)
        blob = (await self._read(["has", x], r)).get("st")
        if not isinstance(blob, bytes):
            return False
        state = crdt.decode_state(blob, self.client.limits)
        self.context = crdt.encode_context(state.ctx)
        self.seen = state.store
        return x in state.store

    async def size(self, r: int | None = None) -> int:
        """How many elements (from the replicas' headers when they agree)."""
        body = await self._read(["size"], r)
        ctx = body.get("ctx")
        self.context = ctx if isinstance(ctx, bytes) else None
        self.seen = None
        n = body.get("n")
        return n if isinstance(n, int) else 0


class AsyncRegister(AsyncTyped):
    """A multi-value register: concurrent assignments all survive until the next one;
    :meth:`value` reads the newest by timestamp, :meth:`values` all of them."""

    kind = crdt.REGISTER

    async def assign(self, value: bytes, *, w: int | None = None) -> None:
        if not isinstance(value, bytes):
            raise InvalidRequest(f"a register holds bytes, got {type(value).__name__}")
        await self._update(["assign", value], w=w)

    async def value(self, r: int | None = None) -> bytes | None:
        values = await self.values(r)
        return values[0] if values else None

    async def values(self, r: int | None = None) -> list[bytes]:
        return crdt.register_values((await self.state(r)).store)


class AsyncFlag(AsyncTyped):
    """An enable-wins flag: a disable does not cancel an enable it did not observe."""

    kind = crdt.FLAG

    async def enable(self, *, w: int | None = None) -> None:
        await self._update(["enable"], w=w)

    async def disable(self, *, w: int | None = None) -> None:
        seen = self._seen_dots(crdt.FLAG, self.seen)
        await self._update(["disable", seen] if self.context else ["disable"], observed=True, w=w)

    async def value(self, r: int | None = None) -> bool:
        return bool((await self.state(r)).store)


class AsyncMap(AsyncTyped):
    """A map of named fields, each a counter, set, register, flag or nested map::

        user = db.map("users", "alice")
        await user.counter("visits").increment()
        await user.set("tags").add(b"admin")
        await user.map("address").register("city").assign(b"Paris")
        await user.value()   # {"visits": 1, "tags": {b"admin"}, "address": {"city": b"Paris"}}
    """

    kind = crdt.MAP

    async def value(self, r: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = crdt.value_of(self.kind, (await self.state(r)).store)
        return result

    async def update(self, name: str, kind: str, op: list[Any], *, observed: bool = False,
                     w: int | None = None) -> None:
        """Apply ``op`` (the wire form, see dynq_client.crdt.Op) to field ``name`` of type ``kind``."""
        await self._update(["update", name, kind, op], observed=observed, w=w)

    async def remove(self, name: str, kind: str, *, w: int | None = None) -> None:
        """Remove field ``name`` (of type ``kind``) as this handle's last read observed it."""
        await MapField(self, [(name, kind)]).remove()

    def counter(self, name: str) -> MapField:
        return MapField(self, [(name, crdt.COUNTER)])

    def set(self, name: str) -> MapField:
        return MapField(self, [(name, crdt.SET)])

    def register(self, name: str) -> MapField:
        return MapField(self, [(name, crdt.REGISTER)])

    def flag(self, name: str) -> MapField:
        return MapField(self, [(name, crdt.FLAG)])

    def map(self, name: str) -> MapField:
        return MapField(self, [(name, crdt.MAP)])


class MapField:
    """A field of a map (at any depth): the verbs of its type, sent as map updates."""

    def __init__(self, root: AsyncMap, path: list[tuple[str, str]]) -> None:
        self.root = root
        self.path = path  # (name, type) from the root map down to this field
        self.kind = path[-1][1]

    def _wrap(self, op: list[Any]) -> list[Any]:
        for name, kind in reversed(self.path):
            op = ["update", name, kind, op]
        return op

    async def _send(self, op: list[Any], observed: bool = False) -> None:
        wrapped = self._wrap(op)
        await self.root._update(wrapped, observed=observed)

    def _seen_store(self) -> crdt.Store | None:
        """This field's store in the map's last read (None: not read, or not there)."""
        store = self.root.seen
        for key in self.path:
            if store is None:
                return None
            store = store.get(key)
        return store

    def _need(self, *kinds: str) -> None:
        if self.kind not in kinds:
            raise WrongDataType(f"field {self.path[-1][0]!r} is a {self.kind}")

    async def increment(self, n: int = 1) -> None:
        self._need(crdt.COUNTER)
        await self._send(["incr", n])

    async def decrement(self, n: int = 1) -> None:
        self._need(crdt.COUNTER)
        await self._send(["incr", -n])

    async def add(self, *elements: bytes | str) -> None:
        self._need(crdt.SET)
        await self._send(["add", [_elem(x) for x in elements]])

    async def discard(self, *elements: bytes | str) -> None:
        """Remove elements of a set field (as the map's last read observed them)."""
        self._need(crdt.SET)
        xs = [_elem(x) for x in elements]
        store = self._seen_store() or {}
        seen = [crdt.dots_to_wire(store.get(x, frozenset())) for x in xs]
        await self._send(["rem", xs, seen] if self.root.context else ["rem", xs], observed=True)

    async def assign(self, value: bytes) -> None:
        self._need(crdt.REGISTER)
        await self._send(["assign", value])

    async def enable(self) -> None:
        self._need(crdt.FLAG)
        await self._send(["enable"])

    async def disable(self) -> None:
        self._need(crdt.FLAG)
        seen = crdt.dots_to_wire(self._seen_store() or frozenset())
        await self._send(["disable", seen] if self.root.context else ["disable"], observed=True)

    async def remove(self) -> None:
        """Remove this field (observed-remove: a concurrent update of it survives)."""
        name, kind = self.path[-1]
        store = self._seen_store()
        seen = [] if store is None else crdt.dots_to_wire(crdt.dots_of(kind, store))
        op: list[Any] = ["remove_field", name, kind, seen] if self.root.context else ["remove_field", name, kind]
        for pname, pkind in reversed(self.path[:-1]):
            op = ["update", pname, pkind, op]
        await self.root._update(op, observed=True)

    def _child(self, name: str, kind: str) -> MapField:
        self._need(crdt.MAP)
        return MapField(self.root, self.path + [(name, kind)])

    def counter(self, name: str) -> MapField:
        return self._child(name, crdt.COUNTER)

    def set(self, name: str) -> MapField:
        return self._child(name, crdt.SET)

    def register(self, name: str) -> MapField:
        return self._child(name, crdt.REGISTER)

    def flag(self, name: str) -> MapField:
        return self._child(name, crdt.FLAG)

    def map(self, name: str) -> MapField:
        return self._child(name, crdt.MAP)


# --- the synchronous handles: the same verbs on the Client's private loop ---------------------------

Runner = Callable[[Coroutine[Any, Any, Any]], Any]


class _Sync:
    """Runs an async handle's coroutines on the synchronous client's loop."""

    def __init__(self, handle: AsyncTyped, run: Runner) -> None:
        self._h = handle
        self._run = run

    @property
    def context(self) -> bytes | None:
        """The causal context of the last read (sent with removals)."""
        return self._h.context

    def state(self, r: int | None = None) -> crdt.State:
        result: crdt.State = self._run(self._h.state(r))
        return result

    def delete(self, w: int | None = None) -> None:
        self._run(self._h.delete(w))


class Counter(_Sync):
    """:class:`AsyncCounter`, synchronously."""

    _h: AsyncCounter

    def increment(self, n: int = 1, *, w: int | None = None) -> None:
        self._run(self._h.increment(n, w=w))

    def decrement(self, n: int = 1, *, w: int | None = None) -> None:
        self._run(self._h.decrement(n, w=w))

    def value(self, r: int | None = None) -> int:
        result: int = self._run(self._h.value(r))
        return result


class Set(_Sync):
    """:class:`AsyncSet`, synchronously."""

    _h: AsyncSet

    def add(self, *elements: bytes | str, w: int | None = None) -> None:
        self._run(self._h.add(*elements, w=w))

    def remove(self, *elements: bytes | str, w: int | None = None) -> None:
        self._run(self._h.remove(*elements, w=w))

    def value(self, r: int | None = None) -> set[bytes]:
        result: set[bytes] = self._run(self._h.value(r))
        return result

    def contains(self, element: bytes | str, r: int | None = None) -> bool:
        result: bool = self._run(self._h.contains(element, r))
        return result

    def size(self, r: int | None = None) -> int:
        result: int = self._run(self._h.size(r))
        return result


class Register(_Sync):
    """:class:`AsyncRegister`, synchronously."""

    _h: AsyncRegister

    def assign(self, value: bytes, *, w: int | None = None) -> None:
        self._run(self._h.assign(value, w=w))

    def value(self, r: int | None = None) -> bytes | None:
        result: bytes | None = self._run(self._h.value(r))
        return result

    def values(self, r: int | None = None) -> list[bytes]:
        result: list[bytes] = self._run(self._h.values(r))
        return result


class Flag(_Sync):
    """:class:`AsyncFlag`, synchronously."""

    _h: AsyncFlag

    def enable(self, *, w: int | None = None) -> None:
        self._run(self._h.enable(w=w))

    def disable(self, *, w: int | None = None) -> None:
        self._run(self._h.disable(w=w))

    def value(self, r: int | None = None) -> bool:
        result: bool = self._run(self._h.value(r))
        return result


class Map(_Sync):
    """:class:`AsyncMap`, synchronously."""

    _h: AsyncMap

    def value(self, r: int | None = None) -> dict[str, Any]:
        result: dict[str, Any] = self._run(self._h.value(r))
        return result

    def update(self, name: str, kind: str, op: list[Any], *, observed: bool = False, w: int | None = None) -> None:
        self._run(self._h.update(name, kind, op, observed=observed, w=w))

    def remove(self, name: str, kind: str, *, w: int | None = None) -> None:
        self._run(self._h.remove(name, kind, w=w))

    def counter(self, name: str) -> SyncMapField:
        return SyncMapField(self._h.counter(name), self._run)

    def set(self, name: str) -> SyncMapField:
        return SyncMapField(self._h.set(name), self._run)

    def register(self, name: str) -> SyncMapField:
        return SyncMapField(self._h.register(name), self._run)

    def flag(self, name: str) -> SyncMapField:
        return SyncMapField(self._h.flag(name), self._run)

    def map(self, name: str) -> SyncMapField:
        return SyncMapField(self._h.map(name), self._run)


class SyncMapField:
    """:class:`MapField`, synchronously."""

    def __init__(self, field: MapField, run: Runner) -> None:
        self._f = field
        self._run = run

    def increment(self, n: int = 1) -> None:
        self._run(self._f.increment(n))

    def decrement(self, n: int = 1) -> None:
        self._run(self._f.decrement(n))

    def add(self, *elements: bytes | str) -> None:
        self._run(self._f.add(*elements))

    def discard(self, *elements: bytes | str) -> None:
        self._run(self._f.discard(*elements))

    def assign(self, value: bytes) -> None:
        self._run(self._f.assign(value))

    def enable(self) -> None:
        self._run(self._f.enable())

    def disable(self) -> None:
        self._run(self._f.disable())

    def remove(self) -> None:
        self._run(self._f.remove())

    def counter(self, name: str) -> SyncMapField:
        return SyncMapField(self._f.counter(name), self._run)

    def set(self, name: str) -> SyncMapField:
        return SyncMapField(self._f.set(name), self._run)

    def register(self, name: str) -> SyncMapField:
        return SyncMapField(self._f.register(name), self._run)

    def flag(self, name: str) -> SyncMapField:
        return SyncMapField(self._f.flag(name), self._run)

    def map(self, name: str) -> SyncMapField:
        return SyncMapField(self._f.map(name), self._run)


HANDLES: dict[str, type[AsyncTyped]] = {
    crdt.COUNTER: AsyncCounter, crdt.SET: AsyncSet, crdt.MAP: AsyncMap, crdt.REGISTER: AsyncRegister,
    crdt.FLAG: AsyncFlag,
}


def handle(client: AsyncClient, kind: str, bucket: str, key: KeyLike) -> AsyncTyped:
    """The handle class of a data type (for a key whose bucket's type is known)."""
    return HANDLES[kind](client, bucket, key)
