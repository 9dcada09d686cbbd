"""The dynq client: routes and coordinates requests itself from a cached routing table.

* Reads go straight to R of the key's N replicas (rotating, so that every replica serves
  and is repaired by reads) and complete at R replies; the replies are merged (siblings
  kept) and returned with an opaque context. A replica that fails is replaced by the next
  one at once, and one that is slow is hedged: after a delay that follows the client's own
  read latency, the remaining replicas are asked too. ``read_fanout="all"`` asks all N
  every time (Dynamo's reads: more read repair, one more request per read);
  ``coordination="server"`` sends the read to one replica, which coordinates it (the
  paper's server-driven coordination, one more hop).
* Writes go to the first reachable primary of the key, which coordinates the write
  (it mints the new version's dot); if a primary cannot be reached at all (the send
  fails before anything is delivered) the next one is tried.
* Every reply carries the responder's ring epoch; a newer epoch makes the client fetch
  the routing table again in the background.

Only requests that are safe to repeat are retried: routing-table fetches and reads.
A write whose outcome is unknown (a timeout after it was sent) raises :class:`Timeout`.

:class:`AsyncClient` is the asyncio API; :class:`Client` runs one on a private event
loop for synchronous code (one :class:`Client` per thread).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Coroutine, Iterable, Iterator, Literal, TypeVar

import tenacity
import zmq

from .errors import (
    HandshakeFailed,
    Forbidden,
    StorageError,
    NotEnoughReplicas,
    DynqError,
    InvalidRequest,
    KeyTooLarge,
    ProtocolError,
    QuorumError,
    Timeout,
    Overloaded,
    Unavailable,
    UnknownBucket,
    ValueTooLarge,
    WrongDataType,
    error_from_wire,
)
from . import buckets as _b
from . import typed
from .buckets import MAX_TTL_S, BucketProps
from .protocol import (
    DEFAULT_LIMITS,
    OP_DELETE,
    OP_GET,
    OP_LIST_KEYS,
    OP_PUT,
    OP_READ_REPAIR,
    OP_ROUTING_TABLE,
    Limits,
    Reply,
)
from .health import Health, sloppy_targets
from .listing import KeyPage, plan_coverage
from .quorum import QuorumState, ReadQuorum
from .routing import RoutingTable
from .security import CurveKeys, KeysOption, find_keys
from .transport import ReplyCallback, RequestMux, SharedTimer
from .versions import VersionedObject, decode_reply_object, encode_context, encode_object, last_write_wins

log = logging.getLogger(__name__)

T = TypeVar("T")

KeyLike = bytes | str
ReadFanout = Literal["quorum", "all"]
Coordination = Literal["client", "server"]

HEDGE_FACTOR = 3.0
"""A read is hedged once it has taken this many times the client's typical read latency."""
HEDGE_MIN_S = 0.002
"""...but never sooner than this: below it a hedge costs more than the wait it saves."""


@dataclass(frozen=True)
class GetResult:
    """What a read returns.

    ``values`` holds every live sibling (more than one means concurrent writes that the
    application should resolve); ``context`` is opaque and must be passed to the next
    ``put``/``delete`` of this key so that it supersedes exactly these siblings.
    """

    values: list[bytes]
    context: bytes
    found: bool

    @property
    def value(self) -> bytes | None:
        """The single value, or None if the key is not found; raises if there are siblings."""
        if len(self.values) > 1:
            raise ValueError(f"key has {len(self.values)} siblings; resolve them via .values")
        return self.values[0] if self.values else None


def _key_bytes(key: KeyLike) -> bytes:
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytes, bytearray, memoryview)):
        return bytes(key)
    raise InvalidRequest(f"key must be bytes or str, got {type(key).__name__}")


def _value_bytes(value: object) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InvalidRequest(f"value must be bytes, got {type(value).__name__} (encode it first)")


def _ignore(reply: Reply | None, error: DynqError | None) -> None:
    """Callback of fire-and-forget requests (read repair): health already saw the outcome."""


RECONNECT_WINDOW_S = 1.2
"""How long a read keeps retrying replicas that are merely not connected: libzmq reconnects
a restarted peer within its RECONNECT_IVL_MAX (1 s), so longer means the node is gone."""


def _only_unreachable(exc: BaseException) -> bool:
    """A read that failed only because replicas could not be reached (nothing was sent to
    them) is worth one more try: connections to restarting nodes come back by themselves."""
    return isinstance(exc, QuorumError) and all(
        e.startswith(("unavailable", "overloaded")) for e in exc.errors.values())


def result_from_object(obj: VersionedObject | None, now_ms: int | None = None) -> GetResult:
    """What a read returns of ``obj``; with ``now_ms``, values expired by then are left out
    (a key whose every value expired reads as not found; its context still supersedes them)."""
    if obj is None:
        return GetResult([], encode_context({}), False)
    if now_ms is not None:
        obj = obj.live(now_ms)
    return GetResult(obj.values, encode_context(obj.clock), obj.found)


def _wall_ms() -> int:
    return int(time.time() * 1000)


def _condition_fields(ttl: int | None, if_none_match: bool, if_match: bytes | None) -> dict[str, Any]:
    """The put fields of a time to live and a condition, checked here for a clear error."""
    extra: dict[str, Any] = {}
    if ttl is not None:
        if not isinstance(ttl, int) or isinstance(ttl, bool) or not 0 <= ttl <= MAX_TTL_S:
            raise InvalidRequest(f"ttl must be whole seconds between 0 and {MAX_TTL_S} (0: never expires), "
                                 f"got {ttl!r}")
        extra["ttl"] = ttl
    if not isinstance(if_none_match, bool):
        raise InvalidRequest(f"if_none_match must be True or False, got {if_none_match!r}")
    if if_match is not None and not isinstance(if_match, bytes):
        raise InvalidRequest(f"if_match must be the context bytes of a get, got {type(if_match).__name__}")
    if if_none_match and if_match is not None:
        raise InvalidRequest("if_none_match and if_match cannot be combined")
    if if_none_match:
        extra["inm"] = True
    if if_match is not None:
        extra["im"] = if_match
    return extra


def _stop_after_loop_delay(seconds: float) -> Callable[[tenacity.RetryCallState], bool]:
    """tenacity's ``stop_after_delay``, measured on the running loop's clock: tenacity's own
    reads ``time.monotonic()`` while it sleeps with ``asyncio.sleep``, which under a
    virtual-time loop (the simulator) mixes two clocks. In production the two agree."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    return lambda state: loop.time() - start >= seconds


def _retry_bootstrap(state: tenacity.RetryCallState) -> bool:
    """Bootstrap retries what may pass (a node still starting), not keys that do not fit."""
    exc = state.outcome.exception() if state.outcome is not None else None
    return isinstance(exc, (Unavailable, Timeout)) and not isinstance(exc, HandshakeFailed)


class AsyncClient:
    """asyncio client for a dynq cluster. Use ``async with AsyncClient(seeds=[...]) as db``."""

    def __init__(
        self,
        seeds: Iterable[str],
        timeout: float = 5.0,
        *,
        limits: Limits = DEFAULT_LIMITS,
        curve: CurveKeys | None = None,
        keys: KeysOption = "auto",
        read_fanout: ReadFanout = "quorum",
        coordination: Coordination = "client",
        hedge_after: float | None = None,
        context: zmq.Context[Any] | None = None,
        rng: random.Random | None = None,
        wall_ms: Callable[[], int] | None = None,
    ) -> None:
        """Reads: ``read_fanout="quorum"`` (default) asks R replicas and hedges a slow one
        after ``hedge_after`` seconds (default: a few times this client's typical read
        latency); ``"all"`` asks all N. ``coordination="server"`` has a replica coordinate
        each read instead of this client.

        For the simulator (``dynq sim``): ``context`` is the ZeroMQ context of the client's
        sockets (default: the process-wide one), ``rng`` its randomness (default: seeded
        by the OS) and ``wall_ms`` its wall clock in ms (what reads compare expiries with).

        Security, for a cluster running with ``security = "curve"``: ``curve`` gives this
        client's keypair and the cluster's public key explicitly (:class:`CurveKeys`);
        otherwise ``keys`` names a keys directory as ``dynq up`` writes it (``app.key_secret``
        and ``cluster.key`` are used), and by default ("auto") the client looks in
        ``$DYNQ_KEYS``, then ``./dynq-data/keys``, and talks plaintext when neither exists;
        ``keys=None``: plaintext, look nowhere. A key file that is named but missing or
        unreadable raises :class:`~dynq_client.security.KeyFileError` here."""
        self.seeds = [s for s in seeds]
        if not self.seeds:
            raise ValueError("at least one seed address is needed")
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.timeout = timeout  # seconds for one whole operation
        self.limits = limits
        self.curve = curve if curve is not None else find_keys(keys, "app")  # None: plaintext
        self.context = context  # the zmq context of the sockets (None: the process-wide one)
        self.table: RoutingTable | None = None  # cached routing table; None until bootstrap
        self._mux: RequestMux | None = None
        self._refreshing: asyncio.Task[None] | None = None  # background table refresh, one at a time
        self._connect_lock: asyncio.Lock | None = None
        self.health = Health(timeouts_to_down=1, retry_after=2.0)  # this client's view of the nodes
        self.read_repairs = 0  # stale replicas this client repaired after reads
        if read_fanout not in ("quorum", "all"):
            raise ValueError(f"read_fanout must be 'quorum' or 'all', got {read_fanout!r}")
        if coordination not in ("client", "server"):
            raise ValueError(f"coordination must be 'client' or 'server', got {coordination!r}")
        if hedge_after is not None and hedge_after <= 0:
            raise ValueError("hedge_after must be positive")
        self.read_fanout: ReadFanout = read_fanout
        self.coordination: Coordination = coordination
        self.hedge_after = hedge_after  # None: adaptive
        self.hedged_reads = 0  # reads that asked more replicas because one was slow or failed
        self._read_latency = 0.005  # moving average of read latency (s): the adaptive hedge delay
        # which of the N replicas a quorum read starts at (random: a counter would alias with
        # an application's own access pattern); injected by the simulator, seeded
        self._rng = rng if rng is not None else random.Random()
        self._wall_ms = wall_ms or _wall_ms

    # --- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> AsyncClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Fetch the routing table from the first seed that answers (retried until timeout)."""
        if self.table is not None:
            return
        if self._connect_lock is None:
            self._connect_lock = asyncio.Lock()
        async with self._connect_lock:
            if self.table is not None:
                return
            mux = self._ensure_mux()
            async for attempt in tenacity.AsyncRetrying(
                stop=_stop_after_loop_delay(self.timeout),
                wait=tenacity.wait_exponential(multiplier=0.05, max=1.0),
                retry=_retry_bootstrap,
                reraise=True,
            ):
                with attempt:
                    table = await self._fetch_table_from_seeds(mux)
            self._install(table)

    async def close(self) -> None:
        if self._refreshing is not None:
            self._refreshing.cancel()
        if self._mux is not None:
            self._mux.close()
            self._mux = None

    def _ensure_mux(self) -> RequestMux:
        if self._mux is None:
            self._mux = RequestMux(
                asyncio.get_running_loop(), context=self.context, limits=self.limits, on_reply=self._observe_reply,
                health=self.health, socket_setup=self.curve.apply if self.curve else None,
            )
        return self._mux

    async def _fetch_table_from_seeds(self, mux: RequestMux) -> RoutingTable:
        errors: list[str] = []
        handshakes = 0  # seeds that refused our keys (or we theirs)
        for seed in self.seeds:
            name = f"seed:{seed}"
            mux.connect(name, seed)
            try:
                reply = await self._call(name, OP_ROUTING_TABLE, {}, min(self.timeout, 2.0))
                return RoutingTable.from_wire(reply.body.get("table"))
            except HandshakeFailed as exc:
                errors.append(str(exc))  # names the address already
                handshakes += 1
            except (Unavailable, Timeout, ProtocolError) as exc:
                errors.append(f"{seed}: {exc}")
            finally:
                mux.disconnect(name)
        if handshakes == len(self.seeds):  # every seed is there but our keys do not fit: say so now
            raise HandshakeFailed("no seed accepted this client: " + "; ".join(errors))
        raise Unavailable("no seed answered: " + "; ".join(errors))

    def _install(self, table: RoutingTable) -> None:
        mux = self._ensure_mux()
        names = {m.name for m in table.ring.members}
        for member in table.ring.members:
            mux.connect(member.name, member.address)
        for name in mux.connected_names():
            if name not in names and not name.startswith("seed:"):
                mux.disconnect(name)
        old = self.table
        self.table = table
        if old is not None and old.epoch != table.epoch:
            log.info("routing table refreshed: epoch %d -> %d", old.epoch, table.epoch)

    # --- routing-table refresh -----------------------------------------------------------

    def _observe_reply(self, node: str, reply: Reply) -> None:
        table = self.table
        if node.startswith("seed:"):  # a transient channel (bootstrap, call_address): members will say it too
            return
        if table is not None and reply.epoch > table.epoch and self._refreshing is None:
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_from(node))

    async def _refresh_from(self, node: str) -> None:
        try:
            reply = await self._call(node, OP_ROUTING_TABLE, {}, self.timeout)
            table = RoutingTable.from_wire(reply.body.get("table"))
            if self.table is None or table.epoch > self.table.epoch:
                self._install(table)
        except DynqError as exc:
            log.warning("routing table refresh from %s failed: %s", node, exc)
        finally:
            self._refreshing = None

    async def refresh(self) -> None:
        """Fetch the routing table now (from the members it names, then the seeds)."""
        await self.connect()
        assert self.table is not None and self._mux is not None
        for member in self.table.ring.members:
            try:
                reply = await self._call(member.name, OP_ROUTING_TABLE, {}, min(self.timeout, 2.0))
                self._install(RoutingTable.from_wire(reply.body.get("table")))
                return
            except (Unavailable, Timeout, ProtocolError):
                continue
        self._install(await self._fetch_table_from_seeds(self._mux))

    # --- one request to one node -----------------------------------------------------------

    def _call(self, node: str, op: str, body: dict[str, Any], timeout: float) -> asyncio.Future[Reply]:
        """Send one request; the future fails with the node's error if it answers with one."""
        assert self._mux is not None
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()

        def done(reply: Reply | None, error: DynqError | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            elif reply is not None and not reply.ok:
                future.set_exception(error_from_wire(reply.error))
            else:
                future.set_result(reply)  # type: ignore[arg-type]

        self._request(node, op, body, timeout, done)
        return future

    async def call(
        self, node: str, op: str, body: dict[str, Any] | None = None, *, retry: bool = True
    ) -> dict[str, Any]:
        """Send an arbitrary op to one named node and return its reply body (admin tools).

        A node that is not connected (yet, or again after a restart) is retried until the
        timeout, unless ``retry`` is False: the request was never delivered, so repeating
        it is safe."""
        await self.connect()
        return await self._call_retrying(node, op, body, retry)

    async def call_address(self, address: str, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """Like :meth:`call`, to the node at ``address``, which need not be in the routing
        table (a node that is not a member yet, or a seed); no routing table is needed."""
        mux = self._ensure_mux()
        name = f"seed:{address}"
        mux.connect(name, address)
        try:
            return await self._call_retrying(name, op, body, True)
        finally:
            mux.disconnect(name)

    async def _call_retrying(self, node: str, op: str, body: dict[str, Any] | None, retry: bool) -> dict[str, Any]:
        if not retry:
            return (await self._call(node, op, body or {}, self.timeout)).body
        async for attempt in tenacity.AsyncRetrying(
            stop=_stop_after_loop_delay(self.timeout),
            wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
            retry=tenacity.retry_if_exception(
                lambda exc: isinstance(exc, Unavailable) and "not connected" in exc.message),
            reraise=True,
        ):
            with attempt:
                reply = await self._call(node, op, body or {}, self.timeout)
        return reply.body

    # --- the public API ------------------------------------------------------------------

    def _check_key(self, key: KeyLike) -> bytes:
        raw = _key_bytes(key)
        limit = self.table.max_key_bytes if self.table else self.limits.max_key_bytes
        if not raw:
            raise InvalidRequest("key must not be empty")
        if len(raw) > limit:
            raise KeyTooLarge(f"key is {len(raw)} bytes; the limit is {limit}")
        return raw

    async def _props(self, bucket: str | None) -> BucketProps | None:
        """A named bucket's properties from the routing table (None: the default bucket);
        a name the table does not know makes one refresh (the bucket may be new), then
        :class:`UnknownBucket`."""
        if bucket is None or bucket == _b.DEFAULT:
            return None
        table = self.table
        assert table is not None
        props = table.buckets.get(bucket)
        if props is None:
            _b.check_name(bucket, error=InvalidRequest)
            await self.refresh()
            assert self.table is not None
            props = self.table.buckets.get(bucket)
            if props is None:
                raise UnknownBucket(f"no bucket called {bucket!r} (dynq bucket create {bucket})")
        return props

    def bucket(self, name: str) -> AsyncBucket:
        """A handle on bucket ``name``: the same get/put/delete, plus keys() and get_many().
        The bucket is looked up on first use (:class:`UnknownBucket` if there is none)."""
        _b.check_name(name, error=InvalidRequest)
        return AsyncBucket(self, name)

    # data types (dynq_client.typed): handles on keys of typed buckets
    def counter(self, bucket: str, key: KeyLike) -> typed.AsyncCounter:
        return typed.AsyncCounter(self, bucket, key)

    def set(self, bucket: str, key: KeyLike) -> typed.AsyncSet:
        return typed.AsyncSet(self, bucket, key)

    def map(self, bucket: str, key: KeyLike) -> typed.AsyncMap:
        return typed.AsyncMap(self, bucket, key)

    def register(self, bucket: str, key: KeyLike) -> typed.AsyncRegister:
        return typed.AsyncRegister(self, bucket, key)

    def flag(self, bucket: str, key: KeyLike) -> typed.AsyncFlag:
        return typed.AsyncFlag(self, bucket, key)

    def _quorum(self, value: int | None, default: int, n: int, name: str) -> int:
        if value is None:
            return min(default, n)
        if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= n:
            raise InvalidRequest(f"{name} must be an integer between 1 and {n}, got {value!r}")
        return value

    async def get(self, key: KeyLike, r: int | None = None, *, bucket: str | None = None) -> GetResult:
        """Read ``key`` from R of its replicas; all siblings are returned."""
        await self.connect()
        raw = self._check_key(key)
        props = await self._props(bucket) if bucket is not None else None
        try:
            obj = await self._coordinate_get(raw, r, props)
        except QuorumError as exc:
            if not _only_unreachable(exc):
                raise
            # Safe to repeat: the missing replicas were never reached (e.g. connections still
            # coming back after nodes restarted). Retried with backoff for as long as a
            # reconnect can take. Tenacity only on this slow path: on every read it cost ~30%
            # of the client's CPU.
            async for attempt in tenacity.AsyncRetrying(
                stop=_stop_after_loop_delay(min(self.timeout, RECONNECT_WINDOW_S)),
                wait=tenacity.wait_exponential(multiplier=0.02, max=0.3),
                retry=tenacity.retry_if_exception(_only_unreachable),
                reraise=True,
            ):
                with attempt:
                    obj = await self._coordinate_get(raw, r, props)
        return result_from_object(obj, self._wall_ms())

    async def get_many(self, keys: Iterable[KeyLike], r: int | None = None, *, bucket: str | None = None,
                       concurrency: int = 64) -> dict[bytes, GetResult | DynqError]:
        """Read many keys at once, pipelined: up to ``concurrency`` reads in flight (each
        to its replicas at once). Returns per key its result, or the error that key got
        (one key's failure never fails the others)."""
        if not isinstance(concurrency, int) or concurrency < 1:
            raise InvalidRequest("concurrency must be a positive integer")
        await self.connect()
        await self._props(bucket)  # an unknown bucket fails the call, not every key
        raws = [self._check_key(k) for k in keys]
        results: dict[bytes, GetResult | DynqError] = {}
        limit = asyncio.Semaphore(concurrency)

        async def one(raw: bytes) -> None:
            async with limit:
                try:
                    results[raw] = await self.get(raw, r, bucket=bucket)
                except DynqError as exc:
                    results[raw] = exc

        await asyncio.gather(*(one(raw) for raw in dict.fromkeys(raws)))
        return {raw: results[raw] for raw in raws}

    async def get_object(self, key: KeyLike, r: int | None = None, *,
                         bucket: str | None = None) -> VersionedObject | None:
        """The merged object itself (version vector, dots, tombstones, and expired siblings
        not reclaimed yet, each with its ``expires_ms``): for tools and tests."""
        await self.connect()
        raw = self._check_key(key)
        return await self._coordinate_get(raw, r, await self._props(bucket))

    def _hedge_delay(self) -> float:
        if self.hedge_after is not None:
            return self.hedge_after
        return min(max(HEDGE_FACTOR * self._read_latency, HEDGE_MIN_S), self.timeout / 4)

    async def _coordinate_get(self, key: bytes, r: int | None,
                              props: BucketProps | None = None) -> VersionedObject | None:
        table = self.table
        assert table is not None and self._mux is not None
        if props is None:
            if key[:2] == _b.MARK:
                _b.check_default_key(key)
            n, default_r, skey = table.ring.n, table.r, key
            body: dict[str, Any] = {"k": key, "local": True}
        else:
            if props.datatype not in (None, "none"):
                raise WrongDataType(f"bucket {props.name!r} holds {props.datatype}s: read with "
                                    f"db.{props.datatype}({props.name!r}, key), not get")
            n, default_r, skey = props.n, props.r, _b.storage_key(props.name, key)
            body = {"k": key, "local": True, "bk": props.name}
        if self.coordination == "server":
            return await self._server_get(key, r, props)
        plist = table.ring.preference_list_for(skey, n)
        loop = asyncio.get_running_loop()
        started = loop.time()
        replicas = [name for name, _ in sloppy_targets(
            plist.primaries, plist.fallbacks, n, lambda name: self.health.usable(name, started))]
        required = self._quorum(r, default_r, len(plist.primaries), "r")
        if len(replicas) < required:  # too few look healthy: ask the primaries anyway, and say why they failed
            replicas += [name for name in plist.primaries if name not in replicas]
        required = min(required, len(replicas))
        spare: list[str] = []  # replicas not asked yet: for a failure or a hedge
        if self.read_fanout == "quorum" and required < len(replicas):
            start = self._rng.randrange(len(replicas))
            replicas = replicas[start:] + replicas[:start]
            spare = replicas[required:]
            del replicas[required:]
        tally = ReadQuorum(replicas, required)
        future: asyncio.Future[VersionedObject | None] = loop.create_future()
        timed_out = False
        decoded: dict[bytes, VersionedObject | None] = {}  # replicas usually agree: decode once
        hedge: SharedTimer | None = None
        replaced: dict[str, str] = {}  # replicas that failed and were replaced: why (for the error)

        def settle() -> None:
            if future.done() or tally.state is QuorumState.PENDING:
                return
            if hedge is not None:
                hedge.cancel()
            if tally.state is QuorumState.SUCCEEDED:
                self._read_latency += 0.05 * (loop.time() - started - self._read_latency)
                merged = tally.merged
                if merged is not None and props is not None and props.lww:
                    merged = last_write_wins(merged)
                future.set_result(merged)
            else:
                error = tally.error("get", timed_out=timed_out)
                error.errors = {**replaced, **error.errors}
                future.set_exception(error)

        def ask(replica: str) -> None:
            self._request(replica, OP_GET, body, self.timeout, functools.partial(on_reply, replica))

        def ask_spares() -> None:  # the hedge: the replicas asked so far are slow
            if tally.decided or not spare:
                return
            self.hedged_reads += 1
            while spare:
                name = spare.pop(0)
                if tally.add(name):
                    ask(name)

        def failed(replica: str, why: str) -> None:
            if spare and not tally.decided and tally.substitute(replica, spare[0]):
                replaced[replica] = why
                self.hedged_reads += 1
                ask(spare.pop(0))  # in its place, at once
            else:
                tally.failure(replica, why)

        def on_reply(replica: str, reply: Reply | None, error: DynqError | None) -> None:
            nonlocal timed_out
            if error is not None:
                timed_out = timed_out or isinstance(error, Timeout)
                failed(replica, f"{error.code}: {error.message}")
            elif reply is not None and not reply.ok:
                remote = error_from_wire(reply.error)
                failed(replica, f"{remote.code}: {remote.message}")
            else:
                assert reply is not None
                blob = reply.body.get("ob")
                try:
                    if isinstance(blob, bytes) and blob in decoded:
                        obj = decoded[blob]
                    else:
                        obj = decode_reply_object(reply.body, self.limits)
                        if isinstance(blob, bytes):
                            decoded[blob] = obj
                except ProtocolError as exc:
                    failed(replica, f"protocol: {exc.message}")
                else:
                    tally.reply(replica, obj)
            settle()
            if tally.all_answered:
                self._read_repair(key, tally, plist.primaries, props)

        for replica in list(replicas):
            ask(replica)
        if spare and not tally.decided:
            hedge = self._mux.timers.call_later(self._hedge_delay(), ask_spares)
        try:
            return await future
        except QuorumError as exc:
            if exc.errors and all(e.startswith(Forbidden.code) for e in exc.errors.values()):
                raise Forbidden(f"every replica refused this client's key: {exc.message}") from exc
            raise

    async def key_pages(self, *, bucket: str | None = None, prefix: KeyLike | None = None,
                        start_after: KeyLike | None = None, page_size: int = 1000) -> AsyncIterator[KeyPage]:
        """The live keys of a bucket (tombstones skipped), in pages of at most
        ``page_size``, in (partition, key) order; a page's ``token`` (its last key) given
        as ``start_after`` resumes after it. Memory: one page here, one on a node. See
        :mod:`dynq_client.listing` for the coverage and what a listing guarantees."""
        if not isinstance(page_size, int) or isinstance(page_size, bool) or not 1 <= page_size <= 10_000:
            raise InvalidRequest("page_size must be an integer between 1 and 10000")
        await self.connect()
        props = await self._props(bucket)
        name = _b.DEFAULT if props is None else props.name
        wanted = b"" if prefix is None else _key_bytes(prefix)
        assert self.table is not None
        first, after = 0, None  # next partition to read; the key in it to resume after
        if start_after is not None:
            after = _key_bytes(start_after)
            first = self.table.ring.partition_for(_b.storage_key(name, after))
        buffer: list[bytes] = []
        avoid: set[str] = set()  # nodes that failed this page (tried last)
        failures = 0
        loop = asyncio.get_running_loop()
        while True:
            table = self.table
            assert table is not None
            ring = table.ring
            if props is not None:
                props = table.buckets.get(name) or props
            n = ring.n if props is None else props.n
            if first >= ring.q:
                break
            now = loop.time()
            runs = plan_coverage(ring, n, lambda x: self.health.usable(x, now) and x not in avoid, first,
                                 frozenset(avoid))
            node, parts = runs[0]
            body: dict[str, Any] = {"parts": parts, "limit": page_size - len(buffer)}
            if props is not None:
                body["bk"] = name
            if wanted:
                body["prefix"] = wanted
            if after is not None:
                body["after"] = [first, after]
            try:
                reply = await self._call(node, OP_LIST_KEYS, body, self.timeout)
            except (Unavailable, Timeout, ProtocolError, StorageError) as exc:
                # That node cannot serve these partitions now (down, or no longer a primary
                # of them): refresh the table, ask another primary.
                failures += 1
                if failures > 2 * len(ring.members) + 2:
                    raise Unavailable(f"listing: no primary of partition {first} could serve it: {exc}") from exc
                avoid.add(node)
                try:
                    await self.refresh()
                except DynqError:
                    pass
                continue
            failures = 0
            avoid.clear()
            raw_keys = reply.body.get("keys")
            if not isinstance(raw_keys, list):
                raise ProtocolError(f"{node}: list_keys reply without keys")
            for item in raw_keys:
                if not (isinstance(item, list) and len(item) == 2 and isinstance(item[1], bytes)):
                    raise ProtocolError(f"{node}: malformed key in a list_keys reply")
                buffer.append(item[1])
            nxt = reply.body.get("next")
            if nxt is None:
                first, after = parts[-1] + 1, None
            elif (isinstance(nxt, list) and len(nxt) == 2 and type(nxt[0]) is int and isinstance(nxt[1], bytes)
                    and nxt[0] >= first):
                first, after = nxt[0], (nxt[1] or None)
            else:
                raise ProtocolError(f"{node}: malformed cursor in a list_keys reply")
            if len(buffer) >= page_size:
                yield KeyPage(buffer, buffer[-1])
                buffer = []
            wait = reply.body.get("wait")
            if isinstance(wait, (int, float)) and wait > 0:
                await asyncio.sleep(min(float(wait), 1.0))  # the node's pacing: back off as asked
        yield KeyPage(buffer, None)

    async def keys(self, *, bucket: str | None = None, prefix: KeyLike | None = None,
                   start_after: KeyLike | None = None, page_size: int = 1000) -> AsyncIterator[bytes]:
        """Every live key of a bucket, one at a time (paged underneath: :meth:`key_pages`)."""
        async for page in self.key_pages(bucket=bucket, prefix=prefix, start_after=start_after,
                                         page_size=page_size):
            for key in page.keys:
                yield key

    async def store_object(self, key: KeyLike, obj: VersionedObject, *, bucket: str | None = None) -> list[str]:
        """Merge ``obj`` (as :meth:`get_object` returned it, from any cluster) into every
        primary replica of ``key``, as read repair does: what import uses. Returns the
        primaries that did not take it (empty: all did)."""
        await self.connect()
        raw = self._check_key(key)
        props = await self._props(bucket)
        table = self.table
        assert table is not None
        if props is None:
            plist = table.ring.preference_list_for(raw)
            body: dict[str, Any] = {"k": raw, "ob": encode_object(obj)}
        else:
            plist = table.ring.preference_list_for(_b.storage_key(props.name, raw), props.n)
            body = {"k": raw, "ob": encode_object(obj), "bk": props.name}
        outcomes = await asyncio.gather(*(self._call(name, OP_READ_REPAIR, body, self.timeout)
                                          for name in plist.primaries), return_exceptions=True)
        return [name for name, out in zip(plist.primaries, outcomes) if isinstance(out, BaseException)]

    async def _server_get(self, key: bytes, r: int | None, props: BucketProps | None = None) -> VersionedObject | None:
        """Server-driven coordination: one replica of the key reads R replicas for us."""
        table = self.table
        assert table is not None
        body: dict[str, Any] = {"k": key, "t": int(self.timeout * 1000)}
        if props is None:
            plist = table.ring.preference_list_for(key)
            default_r = table.r
        else:
            plist = table.ring.preference_list_for(_b.storage_key(props.name, key), props.n)
            default_r = props.r
            body["bk"] = props.name
        if r is not None:
            body["r"] = self._quorum(r, default_r, len(plist.primaries), "r")
        reply = await self._first_taker(OP_GET, body, plist.primaries + plist.fallbacks)
        obj = decode_reply_object(reply.body, self.limits)
        if obj is not None and props is not None and props.lww:
            obj = last_write_wins(obj)
        return obj

    def _read_repair(self, key: bytes, tally: ReadQuorum, primaries: tuple[str, ...],
                     props: BucketProps | None = None) -> None:
        """Every replica answered (late ones too): push the merge to the stale primaries."""
        if tally.state is not QuorumState.SUCCEEDED or tally.merged is None:
            return
        if self._mux is None:  # closed meanwhile: its close failed the late replicas' requests
            return
        stale = [name for name in tally.stale_replicas() if name in primaries]
        if not stale:
            return
        body: dict[str, Any] = {"k": key, "ob": encode_object(tally.merged)}
        if props is not None:
            body["bk"] = props.name
        for name in stale:
            self.read_repairs += 1
            self._request(name, OP_READ_REPAIR, body, self.timeout, _ignore)

    def _request(
        self, node: str, op: str, body: dict[str, Any], timeout: float, callback: ReplyCallback
    ) -> None:
        """Send through the mux (which feeds every outcome to this client's health view)."""
        assert self._mux is not None
        self._mux.request(node, op, body, timeout, callback)

    async def put(
        self,
        key: KeyLike,
        value: bytes,
        context: bytes | None = None,
        w: int | None = None,
        pw: int | None = None,
        *,
        bucket: str | None = None,
        ttl: int | None = None,
        if_none_match: bool = False,
        if_match: bytes | None = None,
        r: int | None = None,
    ) -> None:
        """Write ``value``; with the ``context`` of a get it supersedes the siblings that get saw.

        ``w`` replicas must acknowledge (fallbacks standing in for down primaries count);
        ``pw`` asks that at least that many of them be primaries (a strict quorum).
        Defaults: the bucket's (the cluster's for the default bucket).

        ``ttl``: seconds until this value expires (reads then no longer return it; the
        bucket's ``ttl`` when not given; 0: never). ``if_none_match=True``: only if the key
        has no live value; ``if_match=context``: only if the key is still the version that
        context was read from. A failed condition raises
        :class:`~dynq_client.errors.PreconditionFailed` (nothing written) with what was
        found; see docs/design.md for when two conditional puts can both succeed. ``r``:
        how many replicas the condition's check reads (default: the bucket's R)."""
        extra = _condition_fields(ttl, if_none_match, if_match)
        raw_value = _value_bytes(value)
        await self.connect()
        assert self.table is not None
        if len(raw_value) > self.table.max_value_bytes:
            raise ValueTooLarge(
                f"value is {len(raw_value)} bytes; the limit is {self.table.max_value_bytes}"
            )
        props = await self._props(bucket) if bucket is not None else None
        if r is not None:
            if not (if_none_match or if_match is not None):
                raise InvalidRequest("r applies to a conditional put (if_none_match or if_match) only")
            assert self.table is not None
            extra["r"] = self._quorum(r, 0, props.n if props is not None else self.table.ring.n, "r")
        extra["v"] = raw_value
        await self._write(OP_PUT, key, extra, context, w, pw, props)

    async def delete(
        self, key: KeyLike, context: bytes | None = None, w: int | None = None, pw: int | None = None,
        *, bucket: str | None = None,
    ) -> None:
        """Delete ``key`` (write a tombstone). Without a context the coordinator reads the
        key first and deletes what it found, as Riak does."""
        await self.connect()
        props = await self._props(bucket) if bucket is not None else None
        await self._write(OP_DELETE, key, {}, context, w, pw, props)

    async def _write(
        self,
        op: str,
        key: KeyLike,
        extra: dict[str, Any],
        context: bytes | None,
        w: int | None,
        pw: int | None = None,
        props: BucketProps | None = None,
    ) -> None:
        raw = self._check_key(key)
        table = self.table
        assert table is not None
        if props is not None and props.datatype not in (None, "none"):  # a typed bucket
            if op != OP_DELETE:
                raise WrongDataType(f"bucket {props.name!r} holds {props.datatype}s: write with "
                                    f"db.{props.datatype}({props.name!r}, key), not a plain value")
            await typed.handle(self, props.datatype, props.name, key).delete(w)  # the key's clear, as the node does
            return
        if context is not None and not isinstance(context, bytes):
            raise InvalidRequest(f"context must be bytes from a get, got {type(context).__name__}")
        if props is None:
            if raw[:2] == _b.MARK:
                _b.check_default_key(raw)
            plist = table.ring.preference_list_for(raw)
            required = self._quorum(w, table.w, len(plist.primaries), "w")
            body: dict[str, Any] = {"k": raw, "w": required, "t": int(self.timeout * 1000), **extra}
        else:
            plist = table.ring.preference_list_for(_b.storage_key(props.name, raw), props.n)
            required = self._quorum(w, props.w, len(plist.primaries), "w")
            body = {"k": raw, "bk": props.name, "w": required, "t": int(self.timeout * 1000), **extra}
        if pw is not None:
            body["pw"] = self._quorum(pw, 0, len(plist.primaries), "pw")
        if context:
            body["ctx"] = context
        candidates = plist.primaries + plist.fallbacks
        try:
            await self._send_write(op, body, candidates)
        except Unavailable:  # executed nowhere: retry with backoff (tenacity off the fast path)
            async for attempt in tenacity.AsyncRetrying(
                stop=_stop_after_loop_delay(self.timeout),
                wait=tenacity.wait_exponential(multiplier=0.02, max=0.5),
                retry=tenacity.retry_if_exception_type(Unavailable),
                reraise=True,
            ):
                with attempt:
                    await self._send_write(op, body, candidates)

    async def _send_write(self, op: str, body: dict[str, Any], candidates: tuple[str, ...]) -> None:
        await self._first_taker(op, body, candidates)

    async def _first_taker(self, op: str, body: dict[str, Any], candidates: tuple[str, ...]) -> Reply:
        """Hand the request to the first node that takes it; Unavailable only if none did
        (then nothing was executed anywhere, and the caller may safely try again)."""
        errors: dict[str, str] = {}
        refused: NotEnoughReplicas | StorageError | None = None
        now = asyncio.get_running_loop().time()
        usable = [node for node in candidates if self.health.usable(node, now)]
        for node in usable + [node for node in candidates if node not in usable]:
            try:
                return await self._call(node, op, body, self.timeout)
            except Overloaded as exc:  # answered, not executed: the next node; it is not down
                errors[node] = exc.message
            except Unavailable as exc:  # not executed there: safe to try the next node
                self.health.unreachable(node, asyncio.get_running_loop().time())
                errors[node] = exc.message
            except (NotEnoughReplicas, StorageError) as exc:
                # Refused before anything was written (too few replicas reachable from there,
                # or its own commit failed: a coordinator replicates only what it committed):
                # another node may do better.
                refused = exc
                errors[node] = exc.message
        if refused is not None:
            raise refused
        raise Unavailable(f"{op}: no node of the key's preference list is reachable: {errors}")


class AsyncBucket:
    """One bucket of an :class:`AsyncClient` (``db.bucket("carts")``): the client's
    get/put/delete with the bucket's quorum defaults, plus keys() and get_many()."""

    def __init__(self, client: AsyncClient, name: str) -> None:
        self.client = client
        self.name = name

    async def props(self) -> BucketProps | None:
        """This bucket's properties (None for the default bucket); UnknownBucket if none."""
        await self.client.connect()
        return await self.client._props(self.name)

    async def get(self, key: KeyLike, r: int | None = None) -> GetResult:
        return await self.client.get(key, r, bucket=self.name)

    async def get_object(self, key: KeyLike, r: int | None = None) -> VersionedObject | None:
        return await self.client.get_object(key, r, bucket=self.name)

    async def put(self, key: KeyLike, value: bytes, context: bytes | None = None, w: int | None = None,
                  pw: int | None = None, *, ttl: int | None = None, if_none_match: bool = False,
                  if_match: bytes | None = None, r: int | None = None) -> None:
        await self.client.put(key, value, context, w, pw, bucket=self.name, ttl=ttl,
                              if_none_match=if_none_match, if_match=if_match, r=r)

    async def delete(self, key: KeyLike, context: bytes | None = None, w: int | None = None,
                     pw: int | None = None) -> None:
        await self.client.delete(key, context, w, pw, bucket=self.name)

    async def get_many(self, keys: Iterable[KeyLike], r: int | None = None,
                       concurrency: int = 64) -> dict[bytes, GetResult | DynqError]:
        return await self.client.get_many(keys, r, bucket=self.name, concurrency=concurrency)

    def keys(self, prefix: KeyLike | None = None, start_after: KeyLike | None = None,
             page_size: int = 1000) -> AsyncIterator[bytes]:
        return self.client.keys(bucket=self.name, prefix=prefix, start_after=start_after, page_size=page_size)

    def key_pages(self, prefix: KeyLike | None = None, start_after: KeyLike | None = None,
                  page_size: int = 1000) -> AsyncIterator[KeyPage]:
        return self.client.key_pages(bucket=self.name, prefix=prefix, start_after=start_after, page_size=page_size)

    async def store_object(self, key: KeyLike, obj: VersionedObject) -> list[str]:
        return await self.client.store_object(key, obj, bucket=self.name)


class Bucket:
    """One bucket of a :class:`Client` (``db.bucket("carts")``); see :class:`AsyncBucket`."""

    def __init__(self, client: Client, name: str) -> None:
        self.client = client
        self.name = name
        self._async = AsyncBucket(client._async, name)

    def props(self) -> BucketProps | None:
        return self.client._run(self._async.props())

    def get(self, key: KeyLike, r: int | None = None) -> GetResult:
        return self.client._run(self._async.get(key, r))

    def get_object(self, key: KeyLike, r: int | None = None) -> VersionedObject | None:
        return self.client._run(self._async.get_object(key, r))

    def put(self, key: KeyLike, value: bytes, context: bytes | None = None, w: int | None = None,
            pw: int | None = None, *, ttl: int | None = None, if_none_match: bool = False,
            if_match: bytes | None = None, r: int | None = None) -> None:
        self.client._run(self._async.put(key, value, context, w, pw, ttl=ttl, if_none_match=if_none_match,
                                         if_match=if_match, r=r))

    def delete(self, key: KeyLike, context: bytes | None = None, w: int | None = None,
               pw: int | None = None) -> None:
        self.client._run(self._async.delete(key, context, w, pw))

    def get_many(self, keys: Iterable[KeyLike], r: int | None = None,
                 concurrency: int = 64) -> dict[bytes, GetResult | DynqError]:
        return self.client._run(self._async.get_many(keys, r, concurrency))

    def key_pages(self, prefix: KeyLike | None = None, start_after: KeyLike | None = None,
                  page_size: int = 1000) -> Iterator[KeyPage]:
        """Pages of keys; each page is fetched when the previous one was consumed."""
        pages = self._async.key_pages(prefix, start_after, page_size)

        async def step() -> KeyPage | None:
            try:
                return await pages.__anext__()
            except StopAsyncIteration:
                return None

        async def close() -> None:
            aclose = getattr(pages, "aclose", None)
            if aclose is not None:
                await aclose()

        try:
            while True:
                page = self.client._run(step())
                if page is None:
                    return
                yield page
        finally:
            if not self.client._loop.is_closed():
                self.client._run(close())

    def keys(self, prefix: KeyLike | None = None, start_after: KeyLike | None = None,
             page_size: int = 1000) -> Iterator[bytes]:
        """Every live key of the bucket, fetched page by page (bounded memory)."""
        for page in self.key_pages(prefix, start_after, page_size):
            yield from page.keys

    def store_object(self, key: KeyLike, obj: VersionedObject) -> list[str]:
        return self.client._run(self._async.store_object(key, obj))


class Client:
    """Synchronous client: the :class:`AsyncClient` API on a private event loop.

    Not thread-safe: give each thread its own ``Client``.
    """

    def __init__(
        self, seeds: Iterable[str], timeout: float = 5.0, *, limits: Limits = DEFAULT_LIMITS,
        curve: CurveKeys | None = None, keys: KeysOption = "auto", read_fanout: ReadFanout = "quorum",
        coordination: Coordination = "client", hedge_after: float | None = None,
    ) -> None:
        """Arguments as :class:`AsyncClient`'s (``keys``: where to find CURVE keys)."""
        self._async = AsyncClient(seeds, timeout, limits=limits, curve=curve, keys=keys,
                                  read_fanout=read_fanout, coordination=coordination,
                                  hedge_after=hedge_after)
        self._loop = asyncio.new_event_loop()

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def __enter__(self) -> Client:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def table(self) -> RoutingTable | None:
        return self._async.table

    @property
    def hedged_reads(self) -> int:
        """Reads that asked more replicas than R because one was slow or failed."""
        return self._async.hedged_reads

    def connect(self) -> None:
        self._run(self._async.connect())

    def refresh(self) -> None:
        self._run(self._async.refresh())

    def bucket(self, name: str) -> Bucket:
        """A handle on bucket ``name`` (see :class:`AsyncBucket`)."""
        _b.check_name(name, error=InvalidRequest)
        return Bucket(self, name)

    # data types: the async handles' verbs, run on this client's loop (see dynq_client.typed)
    def counter(self, bucket: str, key: KeyLike) -> typed.Counter:
        return typed.Counter(self._async.counter(bucket, key), self._run)

    def set(self, bucket: str, key: KeyLike) -> typed.Set:
        return typed.Set(self._async.set(bucket, key), self._run)

    def map(self, bucket: str, key: KeyLike) -> typed.Map:
        return typed.Map(self._async.map(bucket, key), self._run)

    def register(self, bucket: str, key: KeyLike) -> typed.Register:
        return typed.Register(self._async.register(bucket, key), self._run)

    def flag(self, bucket: str, key: KeyLike) -> typed.Flag:
        return typed.Flag(self._async.flag(bucket, key), self._run)

    def get(self, key: KeyLike, r: int | None = None, *, bucket: str | None = None) -> GetResult:
        return self._run(self._async.get(key, r, bucket=bucket))

    def get_object(self, key: KeyLike, r: int | None = None, *,
                   bucket: str | None = None) -> VersionedObject | None:
        return self._run(self._async.get_object(key, r, bucket=bucket))

    def get_many(self, keys: Iterable[KeyLike], r: int | None = None, *, bucket: str | None = None,
                 concurrency: int = 64) -> dict[bytes, GetResult | DynqError]:
        return self._run(self._async.get_many(keys, r, bucket=bucket, concurrency=concurrency))

    def put(
        self, key: KeyLike, value: bytes, context: bytes | None = None, w: int | None = None, pw: int | None = None,
        *, bucket: str | None = None, ttl: int | None = None, if_none_match: bool = False,
        if_match: bytes | None = None, r: int | None = None,
    ) -> None:
        self._run(self._async.put(key, value, context, w, pw, bucket=bucket, ttl=ttl,
                                  if_none_match=if_none_match, if_match=if_match, r=r))

    def delete(
        self, key: KeyLike, context: bytes | None = None, w: int | None = None, pw: int | None = None,
        *, bucket: str | None = None,
    ) -> None:
        self._run(self._async.delete(key, context, w, pw, bucket=bucket))

    def keys(self, *, bucket: str | None = None, prefix: KeyLike | None = None,
             start_after: KeyLike | None = None, page_size: int = 1000) -> Iterator[bytes]:
        return Bucket(self, bucket or _b.DEFAULT).keys(prefix, start_after, page_size)

    def call(self, node: str, op: str, body: dict[str, Any] | None = None, *, retry: bool = True) -> dict[str, Any]:
        return self._run(self._async.call(node, op, body, retry=retry))

    def call_address(self, address: str, op: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._run(self._async.call_address(address, op, body))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._run(self._async.close())
        self._loop.run_until_complete(asyncio.sleep(0))
        self._loop.close()

