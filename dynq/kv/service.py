"""The data path: client reads and writes, replica reads and writes, read repair.

A put or delete is coordinated by a primary of the key (another node forwards it there,
so that only the N replicas appear as actors in the key's version vector); the write is
planned by :func:`dynq.kv.write_plan.plan_write` and carried out by a
:class:`~dynq.kv.coordinator.PutCoordinator`; a get by a
:class:`~dynq.kv.coordinator.GetCoordinator`. Both are plain callbacks all the way:
this is the hot path, with no task or future per request.

:class:`KvService` is also the coordinators' :class:`~dynq.kv.coordinator.Replicas`:
its verbs are the bound methods of the local replica, the peer link and the loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from typing import Any, Callable

from dynq_client import protocol as p
from dynq_client.errors import DynqError, InternalError, InvalidRequest, StorageError, Unavailable, ValueTooLarge
from dynq_client.health import sloppy_targets
from dynq_client.protocol import Limits, Reply, Request, reply_error
from dynq_client.ring import PreferenceList
from dynq_client.buckets import MARK, MAX_TTL_S, BucketProps
from dynq_client.crdt import STATE_PREFIX
from dynq_client.versions import (
    VersionedObject,
    decode_context,
    decode_object,
    encode_object,
    last_write_wins,
    merge,
    merge_all,
    merge_clocks,
)

from ..config import NodeConfig
from ..env import SYSTEM, Env
from ..server import fields
from ..server.peers import PeerLink, relay
from ..server.ports import ClusterView, CommitCallback, Handler, ignore_reply
from ..server.responder import Responder, guarded
from ..server.stats import Stats
from ..store.storage import Storage
from .conditions import Condition, KeyQueue, Release, check
from .coordinator import GetCoordinator, PutCoordinator, not_executed
from . import datatypes
from .datatypes import DataTypeService, refuse_plain
from .local import LocalReplica
from .write_plan import actor_for, choose_targets, plan_write

log = logging.getLogger(__name__)

CLIENT_OPS = frozenset({p.OP_GET, p.OP_PUT, p.OP_DELETE, p.OP_READ_REPAIR}) | datatypes.CLIENT_OPS
"""Of this service's ops, what a client key may ask for under CURVE."""


class KvService:
    """Gets, puts, deletes and replica writes (and the coordinators' ``Replicas``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, cluster: ClusterView, local: LocalReplica,
                 peers: PeerLink, storage: Storage, stats: Stats, config: NodeConfig, *, actor: str,
                 env: Env = SYSTEM) -> None:
        self.wall_ms = env.wall_ms  # sibling timestamps
        self.cluster = cluster
        self.local = local
        self.peers = peers
        self.storage = storage
        self.stats = stats
        self.config = config
        self.name = config.name
        self.actor = actor  # the identity this node mints dots with
        self.limits = config.limits
        self.replica_timeout_s = config.request_timeout_ms / 1000
        # The coordinators' Replicas verbs, bound once: a coordinator's call is one lookup.
        self.stage_local = local.stage_local
        self.read_local = local.read_local
        self.replicate = peers.replicate
        self.fetch = peers.fetch
        self.call_later = loop.call_later
        self.is_up = peers.is_up
        self._limits_of: dict[int, Limits] = {}  # a bucket's max_siblings -> its Limits, made once
        self.datatypes = DataTypeService(self)  # typed buckets: ops, reads, replica joins
        self._conditions = KeyQueue()  # conditional puts coordinated here, one at a time per key

    def handlers(self) -> dict[str, Handler]:
        return {
            p.OP_GET: self.handle_get,
            p.OP_PUT: self.handle_put,
            p.OP_DELETE: self.handle_delete,
            p.OP_REPLICA_GET: self.handle_replica_get,
            p.OP_REPLICA_PUT: self.handle_replica_put,
            p.OP_READ_REPAIR: self.handle_replica_put,
            p.OP_REPLICA_PUT_BATCH: self.handle_replica_put_batch,
            **self.datatypes.handlers(),
        }

    # --- Replicas: what the coordinators call besides the bound verbs ---------------------------

    def _bucket_limits(self, props: BucketProps | None) -> Limits:
        """The limits a write of this bucket is checked against (its own max_siblings)."""
        if props is None or props.max_siblings is None:
            return self.limits
        limits = self._limits_of.get(props.max_siblings)
        if limits is None:
            limits = self._limits_of[props.max_siblings] = dataclasses.replace(
                self.limits, max_siblings=min(props.max_siblings, self.limits.max_siblings),
                sibling_warn=min(self.limits.sibling_warn, props.max_siblings))
        return limits

    def read_repair(self, key: bytes, merged: VersionedObject, stale: list[str]) -> None:
        blob = encode_object(merged)
        for target in stale:
            self.stats.read_repairs += 1
            if target == self.name:
                self.local.repair(key, merged)
            else:
                self.peers.replicate(target, key, blob, None, self.replica_timeout_s, ignore_reply)

    # --- reads ---------------------------------------------------------------------------------

    def handle_get(self, responder: Responder, req: Request) -> None:
        key, props = fields.bucket_key(req.body, self.limits, self.cluster.state.buckets)
        refuse_plain(props, "read")
        if req.body.get("local") is True:  # a client coordinating the read itself
            responder.ok({"ob": self.storage.get_blob(key)})
            return
        if props is None:
            r = fields.quorum(req.body, "r", self.config.r, self.cluster.ring.n)
        else:
            r = fields.quorum(req.body, "r", props.r, props.n)

        def outcome(obj: VersionedObject | None, error: DynqError | None) -> None:
            if error is not None:
                responder.fail(error)
            else:
                if obj is not None and props is not None and props.lww:
                    obj = last_write_wins(obj)
                responder.ok({"ob": None if obj is None else encode_object(obj)})

        self._coordinate_get(key, r, fields.deadline_s(req.body, self.config.request_timeout_ms), outcome, props)

    def _coordinate_get(self, key: bytes, r: int, timeout: float,
                        outcome: Callable[[VersionedObject | None, DynqError | None], None],
                        props: BucketProps | None = None) -> None:
        ring = self.cluster.ring
        n = ring.n if props is None else props.n
        plist = ring.preference_list_for(key, n)
        primaries = plist.primaries
        names = [name for name, _ in sloppy_targets(primaries, plist.fallbacks, n, self.is_up)]
        if len(names) < r:  # too few look healthy: ask the primaries anyway, and say why they failed
            names += [name for name in primaries if name not in names]
        GetCoordinator(self, key, names, min(r, len(names)), timeout, outcome, primaries).start()

    # --- writes --------------------------------------------------------------------------------

    def handle_put(self, responder: Responder, req: Request) -> None:
        key, props = fields.bucket_key(req.body, self.limits, self.cluster.state.buckets)
        refuse_plain(props, "write")
        value = p.get_bytes(req.body, "v")
        assert value is not None
        if len(value) > self.limits.max_value_bytes:
            raise ValueTooLarge(f"value is {len(value)} bytes; the limit is {self.limits.max_value_bytes}")
        body = req.body
        context = decode_context(p.get_bytes(body, "ctx", required=False), self.limits)
        ttl = p.get_int(body, "ttl", lo=0, hi=MAX_TTL_S, default=None)
        if ttl is None and props is not None:
            ttl = props.ttl
        condition = None
        if "inm" in body or "im" in body:
            none_match = body.get("inm", False)
            if type(none_match) is not bool:
                raise InvalidRequest("field 'inm' (if_none_match) must be true or false")
            raw_match = body.get("im")
            if raw_match is not None and not isinstance(raw_match, bytes):
                raise InvalidRequest("field 'im' (if_match) must be a context (bytes)")
            if none_match and raw_match is not None:
                raise InvalidRequest("if_none_match and if_match cannot be combined")
            match = decode_context(raw_match, self.limits) if raw_match is not None else None
            if none_match or match is not None:
                condition = Condition(none_match, match)
        self._write(responder, req, key, value, context, props, ttl_s=ttl or 0, condition=condition)

    def handle_delete(self, responder: Responder, req: Request) -> None:
        key, props = fields.bucket_key(req.body, self.limits, self.cluster.state.buckets)
        if props is not None and props.datatype not in (None, "none"):
            self.datatypes.handle_delete(responder, req, key, props)
            return
        raw_context = p.get_bytes(req.body, "ctx", required=False)
        if raw_context:
            self._write(responder, req, key, None, decode_context(raw_context, self.limits), props)
            return
        n = None if props is None else props.n
        if self._forward_if_not_primary(responder, req, self.cluster.ring.preference_list_for(key, n)):
            return
        # No context: read the key first and delete what the read saw, as Riak does.
        def after_read(obj: VersionedObject | None, error: DynqError | None) -> None:
            if error is not None:
                responder.fail(error)
            elif obj is None or not obj.live(self.wall_ms()).found:
                responder.ok({"found": False})
            else:
                guarded(responder, self._write, responder, req, key, None, dict(obj.clock), props)

        self._coordinate_get(key, self.config.r if props is None else props.r,
                             fields.deadline_s(req.body, self.config.request_timeout_ms), after_read, props)

    def _forward_if_not_primary(self, responder: Responder, req: Request, plist: PreferenceList, *,
                                first: bool = False) -> bool:
        """Writes are coordinated by a primary of the key, so that only the N replicas (not
        every node) appear as actors in its version vector: metadata stays bounded.
        ``first`` (a conditional put): by the key's first reachable primary, where the
        conditional puts of the key are serialised."""
        primaries = plist.primaries
        if req.body.get("fwd") is True:
            return False
        if self.name in primaries:
            if not first:
                return False
            reachable = [name for name in primaries[:primaries.index(self.name)] if self.is_up(name)]
        else:
            reachable = [name for name in primaries if self.is_up(name)]
        if not reachable:  # always writable: with every primary down, coordinate here
            return False
        timeout = fields.deadline_s(req.body, self.config.request_timeout_ms)
        errors: dict[str, str] = {}
        body = dict(req.body, fwd=True)  # the receiver coordinates, never forwards again
        passed_on = relay(responder.outcome)
        peers = self.peers

        def attempt(i: int) -> None:
            if i >= len(reachable):
                if req.op == p.OP_PUT or req.op == p.OP_DELETE:
                    # every reachable primary vanished meanwhile: coordinate here after all
                    req.body["fwd"] = True
                    guarded(responder, self.handle_put if req.op == p.OP_PUT else self.handle_delete,
                            responder, req)
                    return
                responder.fail(Unavailable(f"no primary of the key is reachable: {errors}"))
                return

            def done(reply: Reply | None, error: DynqError | None) -> None:
                if not_executed(reply, error):  # next primary
                    failure = reply_error(reply, error)
                    errors[reachable[i]] = failure.message if failure else ""
                    attempt(i + 1)
                else:
                    passed_on(reply, error)

            peers.request(reachable[i], req.op, body, timeout, done)

        attempt(0)
        return True

    def _write(self, responder: Responder, req: Request, key: bytes, value: bytes | None,
               context: dict[str, int], props: BucketProps | None = None, *, ttl_s: int = 0,
               condition: Condition | None = None) -> None:
        cluster = self.cluster
        ring = cluster.ring
        if props is None:
            n, plist = ring.n, ring.preference_list_for(key)
            w = fields.quorum(req.body, "w", self.config.w, n)
            pw = p.get_int(req.body, "pw", lo=0, hi=n, default=0) or 0
        else:
            n, plist = props.n, ring.preference_list_for(key, props.n)
            w = fields.quorum(req.body, "w", props.w, n)
            pw = p.get_int(req.body, "pw", lo=0, hi=n, default=props.pw) or 0
        if self._forward_if_not_primary(responder, req, plist, first=condition is not None):
            return
        if condition is not None:
            self._conditions.run(key, functools.partial(
                self._conditional_write, responder, req, key, value, props, plist, n, w, pw, ttl_s, condition))
            return
        self._write_now(responder, req, key, value, context, props, plist, n, w, pw, ttl_s, responder.outcome)

    def _conditional_write(self, responder: Responder, req: Request, key: bytes, value: bytes | None,
                           props: BucketProps | None, plist: PreferenceList, n: int, w: int, pw: int,
                           ttl_s: int, condition: Condition, release: Release) -> None:
        """Check ``condition`` against this node's copy merged with a quorum read, then
        write (this key's next conditional put waits until this one is answered)."""
        r = fields.quorum(req.body, "r", self.config.r if props is None else props.r, n)

        def outcome(body: dict[str, Any] | None, error: DynqError | None) -> None:
            release()
            responder.outcome(body, error)

        def after_read(obj: VersionedObject | None, error: DynqError | None) -> None:
            if error is not None:
                outcome(None, error)
                return
            try:
                current = merge_all((obj, self.storage.current(key)))
                if current is not None and props is not None and props.lww:
                    current = last_write_wins(current)
                context = check(condition, current, self.wall_ms())
                self._write_now(responder, req, key, value, context, props, plist, n, w, pw, ttl_s, outcome)
            except DynqError as exc:
                outcome(None, exc)
            except Exception as exc:  # a bug: answer, and let the key's next put run
                log.exception("conditional put failed")
                outcome(None, InternalError(f"{type(exc).__name__}: {exc}"))

        self._coordinate_get(key, r, fields.deadline_s(req.body, self.config.request_timeout_ms), after_read, props)

    def _write_now(self, responder: Responder, req: Request, key: bytes, value: bytes | None,
                   context: dict[str, int], props: BucketProps | None, plist: PreferenceList, n: int, w: int,
                   pw: int, ttl_s: int, outcome: Callable[[dict[str, Any] | None, DynqError | None], None]) -> None:
        cluster = self.cluster
        targets = choose_targets(self.name, plist.primaries, plist.fallbacks, n, self.is_up)
        storage = self.storage
        local = storage.current(key)
        if props is not None and props.lww and local is not None:
            context = merge_clocks(context, local.clock)  # last write wins: supersede all we know
        forgotten = storage.is_forgotten(key)
        now_ms = self.wall_ms()
        plan = plan_write(
            targets=targets, fallbacks=plist.fallbacks,
            pending=cluster.state.pending_replicas(plist.partition, None if props is None else n),
            is_up=self.is_up, down=self.peers.down, local=local, context=context,
            actor=actor_for(self.actor, local, forgotten, storage.next_dot), value=value,
            now_ms=now_ms, expires_ms=now_ms + ttl_s * 1000 if ttl_s and value is not None else 0,
            w=w, limits=self._bucket_limits(props),
            many_siblings=functools.partial(self._many_siblings, key),
        )
        if forgotten:  # minted by a fresh actor now: later writes may use it again
            answer = outcome

            def outcome(body: dict[str, Any] | None, error: DynqError | None) -> None:
                if error is None:
                    storage.remember(key)
                answer(body, error)

        coordinator = PutCoordinator(
            self, key, plan.obj, plan.blob, plan.targets, w, fields.deadline_s(req.body, self.config.request_timeout_ms),
            outcome, pw, plan.spares, plan.incoming,
        )
        if coordinator.hinted:
            self.stats.hinted_writes += 1
        coordinator.start()

    def _many_siblings(self, key: bytes, siblings: int) -> None:
        self.stats.sibling_warnings += 1
        log.warning("key %r has %d siblings; the application should resolve them", key[:64], siblings)

    # --- replica-facing ------------------------------------------------------------------------

    def handle_replica_get(self, responder: Responder, req: Request) -> None:
        responder.ok({"ob": self.storage.get_blob(fields.storage_key(req.body, self.limits))})

    def handle_replica_put(self, responder: Responder, req: Request) -> None:
        body = req.body
        if req.op == p.OP_READ_REPAIR:  # from a client: a key of a bucket, not a storage key
            self.stats.read_repairs_received += 1
            raw = body.get("k")
            if "bk" in body or (isinstance(raw, bytes) and raw[:2] == MARK):
                key, _ = fields.bucket_key(body, self.limits, self.cluster.state.buckets)
                body = dict(body, k=key)

        def committed(error: StorageError | None) -> None:
            if error is not None:
                responder.fail(error)
            else:
                responder.ok({})

        self._apply_replica_put(body, committed)

    def handle_replica_put_batch(self, responder: Responder, req: Request) -> None:
        items = req.body.get("items")
        if not isinstance(items, list) or not items:
            raise InvalidRequest("field 'items' must be a non-empty list")
        results: list[dict[str, Any] | None] = [None] * len(items)
        remaining = len(items)

        def item_done(i: int, error: DynqError | None) -> None:
            nonlocal remaining
            results[i] = None if error is None else error.to_wire()
            remaining -= 1
            if remaining == 0:
                responder.ok({"r": results})

        for i, item in enumerate(items):
            try:
                if not isinstance(item, dict):
                    raise InvalidRequest("each item must be a map")
                self._apply_replica_put(item, functools.partial(item_done, i))
            except DynqError as exc:
                item_done(i, exc)
            except Exception as exc:  # a bug costs this item, not the items already staged
                log.exception("replica write in a batch failed")
                item_done(i, InternalError(f"{type(exc).__name__}: {exc}"))

    def _apply_replica_put(self, body: dict[str, Any], done: CommitCallback) -> None:
        """Merge a replica's object into ours; ``done`` runs after the commit."""
        key = fields.storage_key(body, self.limits)
        blob = p.get_bytes(body, "ob")
        assert blob is not None
        hint_for = p.get_str(body, "h", required=False)
        cluster = self.cluster
        if hint_for is not None and hint_for not in cluster.member_names:
            raise InvalidRequest(f"hint names {hint_for!r:.64}, which is not a member")
        state = cluster.state
        props = state.buckets.props_of(key) if key[:1] == b"\x00" else None
        if hint_for is None:
            partition = cluster.ring.partition_for(key)
            # n of the key's bucket; a bucket this node has not heard of yet (gossip lags)
            # is kept as if this node were a replica: the bucket's existence is news to it,
            # the write is not.
            n = state.buckets.n_of(key, cluster.ring.n)
            if n is not None and not state.is_replica(self.name, partition, n):
                # Sent by a node routing by an older ring: keep it, and hand it on like a
                # fallback's write, to the key's replicas as this node knows them.
                self.stats.stray_writes += 1
                hint_for = cluster.ring.preference_list(partition, n).primaries[0]
        if blob[:4] == STATE_PREFIX:  # a data type's state or delta: the type's join
            self.datatypes.apply_replica(key, blob, done, hint_for)
            return
        refuse_plain(props, "replicate")  # a plain object never overwrites a typed state
        incoming = decode_object(blob, self.limits)
        merged = merge(self.storage.current(key), incoming)
        if props is not None and props.lww:
            merged = last_write_wins(merged)
        # Staged even when nothing changed, so the ack waits for any staged write of the key.
        merged_blob = blob if merged == incoming else encode_object(merged)
        self.local.stage_local(key, merged, merged_blob, done, hint_for)
