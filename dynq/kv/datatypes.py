"""Data type operations and reads on typed buckets (the node's side of dynq_client.crdt).

An **update** (``dt_update``: ``increment(5)``, ``add(b"x")``...) is coordinated by a
primary of the key, like a put (another node forwards it there): the primary reads the
part of its state the op needs, applies the op under its own dot (the actor chosen by
:func:`~dynq.kv.write_plan.actor_for`, so a node that lost the key mints under a fresh
actor: KV679), and hands the resulting **delta** to a
:class:`~dynq.kv.coordinator.PutCoordinator` - the same sloppy quorum, local commit
first, hints, hedging - whose local write and replica writes are joins of that delta::

    client --op--> primary: delta = op(state, dot) --join locally, commit--+
                                    +--replica_put(delta)--> replicas: join, ack (W)

A **read** (``dt_get``) asks R replicas for their state (whole, one element's
membership, or a set's header for its size), joins what they return, answers, and
read-repairs the replicas that turned out behind with the joined state (whole reads).

A **delete** of a typed key is the op ``clear``: an observed-remove of everything the
coordinator holds (the key reads empty, a concurrent update survives). The key keeps its
causal context, which is what makes the removal stick; it is never reaped.

In a bucket with a ``ttl`` every op sets the key's expiry to now + ttl (a sliding expiry,
joined by max). A read of an expired key answers the type's empty value; an op on it
first removes every dot its coordinator holds, then applies itself to the empty store
(:func:`dynq_client.crdt.apply_op`). Expired keys are reclaimed by anti-entropy, like
expired plain objects (their expiry is their leaf's reap time).
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Callable, Protocol

from dynq_client import crdt
from dynq_client import protocol as p
from dynq_client.crdt import SET, State
from dynq_client.buckets import BucketProps
from dynq_client.errors import DynqError, InvalidRequest, NotEnoughReplicas, ValueTooLarge, WrongDataType
from dynq_client.health import sloppy_targets
from dynq_client.protocol import Limits, Reply, Request
from dynq_client.quorum import QuorumState, QuorumTally
from dynq_client.versions import EMPTY, VersionedObject

from dynq_client.ring import PreferenceList

from ..config import NodeConfig
from ..server import fields
from ..server.peers import PeerLink
from ..server.ports import ClusterView, CommitCallback, Handler, ReplyCallback, ignore_reply
from ..server.stats import Stats
from ..store.storage import Storage
from .local import LocalReplica
from ..server.responder import Responder
from ..store import set_rows
from ..store.storage import SET_HEADER_PREFIX
from .coordinator import PutCoordinator
from .typed_store import TypedStore
from .write_plan import actor_for, choose_targets



class KvPorts(Protocol):
    """What the data type service needs of the KV service (which owns it)."""

    name: str
    actor: str
    limits: Limits
    cluster: ClusterView
    config: NodeConfig
    storage: Storage
    local: LocalReplica
    peers: PeerLink
    stats: Stats

    def wall_ms(self) -> int: ...

    def replicate(self, target: str, key: bytes, blob: bytes, hint: str | None, timeout_s: float,
                  done: ReplyCallback) -> None: ...

    def fetch(self, target: str, key: bytes, timeout_s: float, done: ReplyCallback) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...

    def read_local(self, key: bytes) -> bytes | None: ...

    def is_up(self, peer: str) -> bool: ...

    def read_repair(self, key: bytes, merged: VersionedObject, stale: list[str]) -> None: ...

    def _forward_if_not_primary(self, responder: Responder, req: Request, plist: PreferenceList) -> bool: ...

log = logging.getLogger(__name__)

CLIENT_OPS = frozenset({p.OP_DT_UPDATE, p.OP_DT_GET})

SEL_ALL, SEL_HAS, SEL_SIZE = "all", "has", "size"


def kind_of(props: BucketProps | None) -> str:
    """The data type of a bucket; WrongDataType for a bucket of plain values."""
    kind = None if props is None else props.datatype
    if kind is None or kind == "none":
        name = "the default bucket" if props is None else f"bucket {props.name!r}"
        raise WrongDataType(f"{name} holds plain values (create one with --datatype for data type operations)")
    return kind


def refuse_plain(props: BucketProps | None, what: str) -> None:
    """A plain get or put on a typed bucket is an error that says what to use instead."""
    if props is not None and props.datatype is not None and props.datatype != "none":
        raise WrongDataType(f"bucket {props.name!r} holds {props.datatype}s: {what} a key with "
                            f"db.{props.datatype}(bucket, key), not a plain value")


GROWING_OPS = frozenset({"add", "update", "assign"})  # ops that can grow a state without bound (sets, maps)


def _op_elements(kind: str, op: list[Any]) -> list[bytes] | None:
    """The set elements an op reads (None: all of them, for a clear)."""
    if kind == SET and op[0] in ("add", "rem"):
        return list(op[1])
    return None


class _TypedReplicas:
    """What a PutCoordinator needs, with the local write being a join of the delta."""

    def __init__(self, kv: KvPorts, store: TypedStore, delta: State) -> None:
        self.name = kv.name
        self.limits = kv.limits
        self.replicate = kv.replicate
        self.fetch = kv.fetch
        self.call_later = kv.call_later
        self.read_local = kv.read_local
        self.read_repair = kv.read_repair
        self._store = store
        self._delta = delta

    def stage_local(self, key: bytes, obj: VersionedObject, blob: bytes, done: CommitCallback,
                    hint_for: str | None = None) -> None:
        self._store.join(key, self._delta, done, hint_for)


class DataTypeService:
    """Handlers of ``dt_update``, ``dt_get`` and ``dt_replica_get``."""

    def __init__(self, kv: KvPorts) -> None:
        self.kv = kv
        self.store: TypedStore = kv.local.typed  # one per node: the local replica's
        self.limits: Limits = kv.limits
        self.updates = 0  # ops coordinated here
        self.delta_bytes = 0  # bytes of deltas sent to replicas (the benchmark's per-add cost)

    def handlers(self) -> dict[str, Handler]:
        return {
            p.OP_DT_UPDATE: self.handle_update,
            p.OP_DT_GET: self.handle_get,
            p.OP_DT_REPLICA_GET: self.handle_replica_get,
            p.OP_DT_STATS: self.handle_stats,
        }

    def handle_stats(self, responder: Responder, req: Request) -> None:
        """This node's data type counters (benchmarks, tests): ops coordinated, delta bytes
        sent to replicas, set element rows written by joins."""
        responder.ok({"updates": self.updates, "delta_bytes": self.delta_bytes,
                      "rows_written": self.store.rows_written})

    # --- updates -------------------------------------------------------------------------------

    def handle_update(self, responder: Responder, req: Request) -> None:
        kv = self.kv
        key, props = fields.bucket_key(req.body, self.limits, kv.cluster.state.buckets)
        kind = kind_of(props)
        assert props is not None
        op = crdt.check_op(kind, req.body.get("op"), self.limits)
        observed = crdt.decode_context(p.get_bytes(req.body, "ctx", required=False), self.limits)
        self.update(responder, req, key, props, kind, op, observed)

    def update(self, responder: Responder, req: Request, key: bytes, props: BucketProps, kind: str,
               op: list[Any], observed: crdt.Context | None) -> None:
        kv = self.kv
        ring = kv.cluster.ring
        n = props.n
        plist = ring.preference_list_for(key, n)
        w = fields.quorum(req.body, "w", props.w, n)
        pw = p.get_int(req.body, "pw", lo=0, hi=n, default=props.pw) or 0
        if kv._forward_if_not_primary(responder, req, plist):
            return
        targets = choose_targets(kv.name, plist.primaries, plist.fallbacks, n, kv.is_up)
        if len(targets) < w:
            raise NotEnoughReplicas(f"{kind} update failed: w={w} but only {len(targets)} replicas are reachable",
                                    required=w, succeeded=0, errors={name: "down" for name in kv.peers.down()})
        storage = kv.storage
        now_ms = kv.wall_ms()
        local, whole_size = self.store.read_sized(key, kind, _op_elements(kind, op))
        if local is not None and local.touched is not None and crdt.is_expired(local, now_ms):
            local = self.store.read(key, kind)  # a reset removes every element: read them all
        forgotten = storage.is_forgotten(key)
        actor = actor_for(kv.actor, None if local is None else VersionedObject(local.ctx.clock, ()),
                          forgotten, storage.next_dot)
        delta = crdt.apply_op(local or crdt.bottom(kind), op, actor, now_ms, observed, (props.ttl or 0) * 1000)
        blob = crdt.encode_state(delta)
        if len(blob) > self.limits.max_message_bytes // 2:
            raise InvalidRequest(f"the operation's delta would be {len(blob)} bytes; split it")
        if op[0] in GROWING_OPS:
            self._refuse_oversized(kind, whole_size + len(blob))
        used = {name for name, _ in targets}
        spares = [f for f in plist.fallbacks if f not in used and kv.is_up(f)]
        incoming = [x for x in kv.cluster.state.pending_replicas(plist.partition, n) if x not in used]
        outcome: Callable[[dict[str, Any] | None, DynqError | None], None] = responder.outcome
        if forgotten:  # minted by a fresh actor now: later ops may use it again
            def outcome(body: dict[str, Any] | None, error: DynqError | None) -> None:
                if error is None:
                    storage.remember(key)
                responder.outcome(body, error)

        self.updates += 1
        self.delta_bytes += len(blob) * (len(targets) - 1)
        PutCoordinator(
            _TypedReplicas(kv, self.store, delta), key, EMPTY, blob, targets, w,
            fields.deadline_s(req.body, kv.config.request_timeout_ms), outcome, pw, spares, incoming,
        ).start()

    def _refuse_oversized(self, kind: str, size: int) -> None:
        """Refuse an op that would grow the key's whole state to ``size`` bytes, past what
        replicas can still exchange in one message (anti-entropy, hints, transfers and
        whole reads ship it whole). The bound leaves a quarter of a message for
        concurrent ops elsewhere."""
        bound = self.limits.max_message_bytes * 3 // 4
        if size > bound:
            raise ValueTooLarge(f"this {kind} would take about {size} bytes whole; a data type's state must stay "
                                f"within {bound} bytes (3/4 of max_message_bytes) so that replicas can exchange "
                                f"it: remove elements first, or spread them over more keys")

    def handle_delete(self, responder: Responder, req: Request, key: bytes, props: BucketProps) -> None:
        """A plain delete of a typed key: clear it (observed-remove of what the primary holds)."""
        self.update(responder, req, key, props, kind_of(props), ["clear"], None)

    # --- replicas ------------------------------------------------------------------------------

    def apply_replica(self, key: bytes, blob: bytes, done: CommitCallback, hint_for: str | None) -> None:
        """A replica write carrying a typed state or delta (from a coordinator, a hint, read
        repair, a transfer): join it."""
        self.store.join_blob(key, blob, done, hint_for)

    def handle_replica_get(self, responder: Responder, req: Request) -> None:
        key = fields.storage_key(req.body, self.limits)
        responder.ok({"st": self.view(key, req.body.get("sel"))})

    def view(self, key: bytes, sel: object) -> bytes | None:
        """This replica's committed state of ``key`` as a read asked for it: whole,
        ``["has", element]`` (the context and that element's dots), or ``["size"]`` (a
        set's header)."""
        storage = self.kv.storage
        raw = storage.dt_raw(key, staged=False)
        if raw is None:
            return None
        if raw[:4] != SET_HEADER_PREFIX or sel is None or sel == [SEL_ALL]:
            return storage.get_blob(key)
        if isinstance(sel, list) and len(sel) == 2 and sel[0] == SEL_HAS and isinstance(sel[1], bytes):
            state = self.store.read(key, SET, [sel[1]], staged=False)
            assert state is not None
            return crdt.encode_state(state)
        if sel == [SEL_SIZE]:
            return raw
        raise InvalidRequest(f"field 'sel' must be [\"all\"], [\"has\", element] or [\"size\"], got {p.short_repr(sel)}")

    # --- reads ---------------------------------------------------------------------------------

    def handle_get(self, responder: Responder, req: Request) -> None:
        kv = self.kv
        key, props = fields.bucket_key(req.body, self.limits, kv.cluster.state.buckets)
        kind = kind_of(props)
        assert props is not None
        sel = req.body.get("sel")
        if sel is None:
            sel = [SEL_ALL]
        if kind != SET and sel != [SEL_ALL]:
            raise InvalidRequest(f"a {kind} is read whole (membership and size are for sets)")
        if not (sel == [SEL_ALL] or sel == [SEL_SIZE] or (isinstance(sel, list) and len(sel) == 2
                                                         and sel[0] == SEL_HAS and isinstance(sel[1], bytes))):
            raise InvalidRequest(f"field 'sel' must be [\"all\"], [\"has\", element] or [\"size\"], got {p.short_repr(sel)}")
        r = fields.quorum(req.body, "r", props.r, props.n)
        timeout = fields.deadline_s(req.body, kv.config.request_timeout_ms)
        TypedRead(self, key, kind, sel, props.n, r, timeout, responder).start()


class TypedRead:
    """One read of a typed key from R replicas: join their answers, reply, then repair
    the replicas that were behind (whole reads only; anti-entropy does the rest)."""

    def __init__(self, service: DataTypeService, key: bytes, kind: str, sel: list[Any], n: int, r: int,
                 timeout: float, responder: Responder) -> None:
        kv = service.kv
        self.service = service
        self.key = key
        self.kind = kind
        self.sel = sel
        self.timeout = timeout
        self.responder = responder
        plist = kv.cluster.ring.preference_list_for(key, n)
        self.primaries = set(plist.primaries)
        names = [name for name, _ in sloppy_targets(plist.primaries, plist.fallbacks, n, kv.is_up)]
        if len(names) < r:
            names += [name for name in plist.primaries if name not in names]
        self.tally = QuorumTally(names, min(r, len(names)))
        self.replies: dict[str, bytes | None] = {}  # replica -> what it answered
        self.done = False  # the caller has its answer
        self._timer: Any = None

    def start(self) -> None:
        kv = self.service.kv
        self._timer = kv.call_later(self.timeout, self._on_deadline)
        for target in list(self.tally.pending):
            if target == kv.name:
                continue
            kv.peers.request(target, p.OP_DT_REPLICA_GET, {"k": self.key, "sel": self.sel}, self.timeout,
                             functools.partial(self._on_remote, target))
        if kv.name in self.tally.pending:
            try:
                self._answer(kv.name, self.service.view(self.key, self.sel))
            except DynqError as exc:
                self.tally.failure(kv.name, f"{exc.code}: {exc.message}")
        self._check()

    def _on_remote(self, target: str, reply: Reply | None, error: DynqError | None) -> None:
        failure = p.reply_error(reply, error)
        if failure is not None:
            self.tally.failure(target, f"{failure.code}: {failure.message}")
        else:
            assert reply is not None
            blob = reply.body.get("st")
            if blob is not None and not isinstance(blob, bytes):
                self.tally.failure(target, "protocol: 'st' must be bytes")
            else:
                self._answer(target, blob)
        self._check()

    def _answer(self, target: str, blob: bytes | None) -> None:
        self.replies[target] = blob
        self.tally.success(target)

    def _joined(self) -> State | None:
        states = [crdt.decode_state(b, self.service.limits) for b in self.replies.values() if b is not None]
        if not states:
            return None
        out = states[0]
        for s in states[1:]:
            out = crdt.join(out, s)
        return out

    def _check(self) -> None:
        if not self.done:
            if self.tally.state is QuorumState.SUCCEEDED:
                self.done = True
                try:
                    self._reply()
                except DynqError as exc:
                    self.responder.fail(exc)
            elif self.tally.state is QuorumState.FAILED:
                self.done = True
                self.responder.fail(self.tally.error("get"))
        if self.tally.all_answered:
            self._settle()

    def _reply(self) -> None:
        if self.sel == [SEL_SIZE]:
            headers = [b for b in self.replies.values() if b is not None]
            if not headers:
                self.responder.ok({"n": 0, "ctx": None})
                return
            if len(set(headers)) == 1:  # the replicas agree: no need to move the set
                ctx, count, _, expires, _ = set_rows.decode_header_full(headers[0], self.service.limits)
                if 0 < expires <= self.service.kv.wall_ms():
                    count = 0
                self.responder.ok({"n": count, "ctx": crdt.encode_context(ctx)})
                return
            # they differ: read the whole states (and repair them) to count the join
            TypedRead(self.service, self.key, self.kind, [SEL_ALL], len(self.primaries),
                      self.tally.required, self.timeout, _SizeOf(self.responder)).start()  # type: ignore[arg-type]
            return
        joined = self._joined()
        if joined is not None:
            joined = crdt.visible(joined, self.service.kv.wall_ms())
        self.responder.ok({"st": None if joined is None else crdt.encode_state(
            State(joined.kind, joined.ctx, joined.store, None, joined.expires_ms))})

    def _on_deadline(self) -> None:
        if not self.done:
            self.done = True
            self.responder.fail(self.tally.error("get", timed_out=True))
        self._settle()

    def _settle(self) -> None:
        if self._timer is None:
            return
        self._timer.cancel()
        self._timer = None
        if self.sel != [SEL_ALL] or self.tally.state is not QuorumState.SUCCEEDED:
            return
        joined = self._joined()
        if joined is None:
            return
        blob = crdt.encode_state(State(joined.kind, joined.ctx, joined.store, None, joined.expires_ms))
        kv = self.service.kv
        for target, theirs in self.replies.items():
            if target in self.primaries and theirs != blob:
                kv.stats.read_repairs += 1
                if target == kv.name:
                    self.service.store.join(self.key, joined, _ignore_commit)
                else:
                    kv.replicate(target, self.key, blob, None, self.timeout, ignore_reply)


def _ignore_commit(error: Any) -> None:
    """A repair nobody waits for (a failed commit is counted and logged by storage)."""


class _SizeOf:
    """A responder for a whole read whose answer is turned into a size reply."""

    def __init__(self, responder: Responder) -> None:
        self.inner = responder

    def ok(self, body: dict[str, Any]) -> None:
        blob = body.get("st")
        if blob is None:
            self.inner.ok({"n": 0, "ctx": None})
            return
        state = crdt.decode_state(blob)
        self.inner.ok({"n": len(state.store), "ctx": crdt.encode_context(state.ctx)})

    def fail(self, error: DynqError) -> None:
        self.inner.fail(error)

