"""Planted bugs, switchable by name: the simulator must catch every one (``dynq sim
--mutation NAME``; ``tests/unit/test_sim_mutations.py`` runs them all). They prove that
the checkers can fail; each patches the real code for one run and restores it after.

=======================  ==============================================================
name                     the bug
=======================  ==============================================================
merge-keeps-incoming     a replica's merge keeps the incoming object and drops its own
                         siblings (a concurrent write the sender never saw is lost)
dot-reused               the coordinator mints the dot its actor already used when the
                         key holds one (two writes under one dot)
read-repair-overwrites   a read repair replaces the replica's siblings with the reader's,
                         under the union of both clocks (a write that landed after the
                         read is lost, and anti-entropy spreads the loss); runs with
                         client-coordinated reads of all N, the path that repairs
sync-normal              acknowledge commits that are not fsynced (``synchronous=normal``
                         as if it were safe), with whole-cluster power losses
lww-unresolved           replicas of a last-write-wins bucket merge without resolving
                         (concurrent writes stay siblings on disk and in the reads
                         they coordinate); runs with one lww bucket of n=3, reads
                         coordinated by the nodes
expiry-ignored           reads return expired values (``VersionedObject.live`` leaves
                         nothing out); runs with the ttl workload
dt-join-drops-theirs     a data-type join keeps one side's store under both contexts
                         (the other side's dots are marked seen and dropped: increments
                         and adds are lost); runs with the data-type workload
=======================  ==============================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

Options = TypeVar("Options")  # dynq.sim.harness.Options (not imported: the harness imports this module)


@dataclass
class Mutation:
    name: str
    doc: str
    patches: Callable[[], list[tuple[Any, str, Any]]]  # (object, attribute, replacement)
    options: Callable[[Any], Any] = lambda o: o  # the run's Options -> adjusted Options
    _saved: list[tuple[Any, str, Any]] = dataclasses.field(default_factory=list)

    def apply(self) -> None:
        for obj, attr, new in self.patches():
            self._saved.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, new)

    def revert(self) -> None:
        while self._saved:
            obj, attr, old = self._saved.pop()
            setattr(obj, attr, old)

    def adjust(self, options: Options) -> Options:
        adjusted: Options = self.options(options)
        return adjusted


def _merge_keeps_incoming() -> list[tuple[Any, str, Any]]:
    from dynq_client.versions import EMPTY

    from dynq.kv import service

    def merge(a: Any, b: Any) -> Any:
        return b if b is not None else (a or EMPTY)

    return [(service, "merge", merge)]


def _dot_reused() -> list[tuple[Any, str, Any]]:
    from dynq_client import versions as v

    from dynq.kv import write_plan

    def update(local: Any, context: Any, actor: str, value: bytes | None, now_ms: int) -> Any:
        base = local or v.EMPTY
        used = max(base.clock.get(actor, 0), context.get(actor, 0))
        counter = used if used else 1  # BUG: reuses the last dot of this actor
        kept = [s for s in base.siblings if not v.covers(context, s.actor, s.counter) or s.counter == counter]
        kept.append(v.Sibling(actor, counter, now_ms, value))
        clock = v.merge_clocks(base.clock, context)
        clock[actor] = counter
        return v.VersionedObject(clock, v._canonical(kept))

    return [(write_plan, "update", update)]


def _read_repair_overwrites() -> list[tuple[Any, str, Any]]:
    from dynq_client import protocol as p
    from dynq_client.versions import VersionedObject, decode_object, encode_object, merge_clocks

    from dynq.kv.service import KvService
    from dynq.server import fields

    original = KvService.handle_replica_put

    def handle_replica_put(self: KvService, responder: Any, req: Any) -> None:
        if req.op != p.OP_READ_REPAIR:
            original(self, responder, req)
            return
        key = fields.key(req.body, self.limits)
        blob = p.get_bytes(req.body, "ob")
        assert blob is not None
        incoming = decode_object(blob, self.limits)
        local = self.storage.current(key)
        if local is not None:  # BUG: the reader's siblings replace ours, under both clocks
            incoming = VersionedObject(merge_clocks(local.clock, incoming.clock), incoming.siblings)
            blob = encode_object(incoming)

        def committed(error: Any) -> None:
            if error is not None:
                responder.fail(error)
            else:
                responder.ok({})

        self.local.stage_local(key, incoming, blob, committed)

    return [(KvService, "handle_replica_put", handle_replica_put)]


def _lww_unresolved() -> list[tuple[Any, str, Any]]:
    from dynq.kv import service

    def last_write_wins(obj: Any) -> Any:
        return obj  # BUG: the node never resolves an lww bucket's siblings

    return [(service, "last_write_wins", last_write_wins)]


def _expiry_ignored() -> list[tuple[Any, str, Any]]:
    from dynq_client.versions import VersionedObject

    def live(self: Any, now_ms: int) -> Any:
        return self  # BUG: expired siblings are never left out

    return [(VersionedObject, "live", live)]


def _dt_join_drops_theirs() -> list[tuple[Any, str, Any]]:
    from dynq_client import crdt

    def join(a: crdt.State, b: crdt.State) -> crdt.State:
        return crdt.State(a.kind, a.ctx.join(b.ctx), a.store, a.touched)

    return [(crdt, "join", join)]


def _with_dt(o: Any) -> Any:
    return dataclasses.replace(o, dt_workload=True)


def _with_ttl(o: Any) -> Any:
    """The ttl workload, with expired objects reclaimed a second after their expiry."""
    knobs = {**dict(o.knobs), "ae_expiry_grace_s": 1, "ae_expiry_interval_ms": 100}
    return dataclasses.replace(o, ttl_workload=True, knobs=tuple(sorted(knobs.items())))


def _one_lww_bucket(o: Any) -> Any:
    """One lww bucket of n=3 read from all 3, through the nodes (a client resolves lww reads itself)."""
    return dataclasses.replace(o, buckets=(("lww3-0", 3, 3, min(o.w, 3), "lww"),), bucket_workload=True,
                               coordination="server")


def _client_reads_all(o: Any) -> Any:
    """Client-coordinated reads of all N: the path that sends read repairs."""
    return dataclasses.replace(o, read_fanout="all", coordination="client")


def _sync_normal_options(o: Any) -> Any:
    knobs = dict(o.knobs)
    knobs["synchronous"] = "normal"
    knobs["checkpoint_interval_ms"] = 0  # SQLite's own checkpoints, inside commits: rare syncs
    return dataclasses.replace(o, knobs=tuple(sorted(knobs.items())), faults=("blackout",),
                               fault_gap_s=3.0, w=min(o.w, 2))


MUTATIONS: dict[str, Mutation] = {m.name: m for m in (
    Mutation("merge-keeps-incoming", "a replica's merge keeps the incoming object", _merge_keeps_incoming),
    Mutation("dot-reused", "the coordinator reuses its actor's last dot", _dot_reused),
    Mutation("read-repair-overwrites", "read repair replaces instead of merging", _read_repair_overwrites,
             _client_reads_all),
    Mutation("sync-normal", "acknowledge unsynced commits, then whole-cluster power loss", list,
             _sync_normal_options),
    Mutation("lww-unresolved", "a last-write-wins bucket's replicas keep concurrent siblings", _lww_unresolved,
             _one_lww_bucket),
    Mutation("expiry-ignored", "reads return values whose ttl has passed", _expiry_ignored, _with_ttl),
    Mutation("dt-join-drops-theirs", "a data-type join drops the other side's dots", _dt_join_drops_theirs,
             _with_dt),
)}

__all__ = ["MUTATIONS", "Mutation"]
