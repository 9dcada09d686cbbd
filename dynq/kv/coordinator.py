"""Server-side coordination of one get, put or delete: a small state machine per request.

The states follow riak_kv's get/put FSMs; the counting is the pure tally from
``dynq_client.quorum``::

    put:    PREPARE -> LOCAL_COMMIT -> REMOTE_WAIT -> DONE
    get:    WAIT -> ANSWERED -> SETTLED (read repair of stale primaries)
    delete: READ (only without a context) -> put of a tombstone

Both go to the first N *healthy* nodes of the key's preference list (sloppy quorum): a
fallback standing in for a down primary gets the write with a hint naming that primary.

A put is coordinated by a primary replica of the key. It mints the new dot, commits the
new object *locally first*, and only then sends it to the other primaries: were the
dot shown to other replicas before it is durable here, a crash could make this node mint
the same dot again for a different write, and one of the two would be lost.

The coordinators do no I/O themselves: they call the narrow :class:`Replicas` interface,
which :class:`dynq.kv.service.KvService` implements with the local replica and the peer
link (and a test with plain objects).
"""

from __future__ import annotations

import enum
import functools
import logging
from typing import Any, Callable, Protocol, Sequence

from dynq_client.errors import DynqError, NotEnoughReplicas, Overloaded, Unavailable
from dynq_client.protocol import Limits, Reply, reply_error
from dynq_client.quorum import QuorumState, QuorumTally, ReadQuorum
from dynq_client.versions import VersionedObject, decode_object, decode_reply_object

from ..server.ports import CommitCallback, ReplyCallback, ignore_reply
from .write_plan import Target

log = logging.getLogger(__name__)

HEDGE_AFTER_S = 0.25
"""A put whose targets have not all answered after this long (or a quarter of its
deadline, if shorter) also goes to spare fallbacks."""

Outcome = Callable[[dict[str, Any] | None, DynqError | None], None]
"""Called once with the reply body, or with the error, when a request is decided."""


class Replicas(Protocol):
    """What a coordinator needs from its node: verbs, no op names or wire bodies."""

    name: str
    limits: Limits

    def stage_local(self, key: bytes, obj: VersionedObject, blob: bytes, done: CommitCallback,
                    hint_for: str | None = None) -> None: ...

    def read_repair(self, key: bytes, merged: VersionedObject, stale: list[str]) -> None: ...

    def read_local(self, key: bytes) -> bytes | None: ...

    def replicate(self, target: str, key: bytes, blob: bytes, hint: str | None, timeout_s: float,
                  done: ReplyCallback) -> None: ...

    def fetch(self, target: str, key: bytes, timeout_s: float, done: ReplyCallback) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...


def _describe(reply: Reply | None, error: DynqError | None) -> str | None:
    """None when the replica succeeded, otherwise why it failed."""
    failure = reply_error(reply, error)
    return None if failure is None else f"{failure.code}: {failure.message}"


_UNEXECUTED_CODES = frozenset({Unavailable.code, Overloaded.code})


def not_executed(reply: Reply | None, error: DynqError | None) -> bool:
    """True when the replica certainly did not take the request: the send never left, or
    the replica refused it unexecuted (shutting down, or overloaded)."""
    if isinstance(error, Unavailable):
        return True
    return reply is not None and not reply.ok and (reply.error or {}).get("code") in _UNEXECUTED_CODES


class PutState(enum.Enum):
    PREPARE = "prepare"
    LOCAL_COMMIT = "local_commit"
    REMOTE_WAIT = "remote_wait"
    DONE = "done"


class PutCoordinator:
    """Replicates one new object to N healthy replicas and answers at W acknowledgements
    (of which at least ``pw`` from primaries: a strict quorum when the caller asks)."""

    def __init__(
        self,
        replicas: Replicas,
        key: bytes,
        obj: VersionedObject,
        blob: bytes,
        targets: Sequence[Target],
        w: int,
        timeout: float,
        outcome: Outcome,
        pw: int = 0,
        spares: Sequence[str] = (),
        incoming: Sequence[str] = (),
    ) -> None:
        self.replicas = replicas
        self.key = key
        self.obj = obj  # the new object, already carrying its new dot
        self.blob = blob  # its encoding, sent as is to every replica
        self.hints: dict[str, str | None] = dict(targets)  # target -> primary it stands in for
        self.tally = QuorumTally([name for name, _ in targets], w)
        self.pw = pw  # primaries that must acknowledge (0: any replica counts)
        self.spares = list(spares)  # healthy fallbacks not yet used, in preference-list order
        # Nodes becoming replicas in a running membership transition: they get the write
        # too, best effort and not counted toward W (they may not hold the key's history yet).
        self.incoming = tuple(incoming)
        self.primary_acks = 0
        self.timeout = timeout
        self.outcome = outcome
        self.state = PutState.PREPARE
        self._timer: Any = None  # deadline handle
        self._hedge_timer: Any = None  # fires when silent targets should be hedged

    @property
    def hinted(self) -> int:
        """How many targets are fallbacks carrying a hint."""
        return sum(1 for hint in self.hints.values() if hint is not None)

    def start(self) -> None:
        primaries = sum(1 for hint in self.hints.values() if hint is None)
        if primaries < self.pw:
            self.state = PutState.DONE
            self.outcome(None, NotEnoughReplicas(
                f"put failed: pw={self.pw} primaries must acknowledge but only {primaries} are reachable",
                required=self.pw, succeeded=0,
                errors={name: "fallback, not a primary" for name, hint in self.hints.items() if hint},
            ))
            return
        self.state = PutState.LOCAL_COMMIT
        self._timer = self.replicas.call_later(self.timeout, self._on_deadline)
        self.replicas.stage_local(
            self.key, self.obj, self.blob, self._on_local_commit, self.hints.get(self.replicas.name)
        )

    def _on_local_commit(self, error: DynqError | None) -> None:
        if error is not None:
            # The dot is not durable here, so it must not reach any other replica.
            self.tally.failure(self.replicas.name, f"{error.code}: {error.message}")
            self._finish(error)
            return
        self._ack(self.replicas.name)
        if self.state is PutState.DONE:
            return
        self.state = PutState.REMOTE_WAIT
        if self.spares:
            self._hedge_timer = self.replicas.call_later(min(self.timeout / 4, HEDGE_AFTER_S), self._hedge)
        for target, hint in list(self.hints.items()):
            if target == self.replicas.name:
                continue
            self.replicas.replicate(
                target, self.key, self.blob, hint, self.timeout, functools.partial(self._on_remote, target)
            )
        for target in self.incoming:
            self.replicas.replicate(target, self.key, self.blob, None, self.timeout, ignore_reply)
        self._check()

    def _ack(self, target: str) -> None:
        if target in self.tally.pending and self.hints.get(target) is None:
            self.primary_acks += 1
        self.tally.success(target)

    def _on_remote(self, target: str, reply: Reply | None, error: DynqError | None) -> None:
        failure = _describe(reply, error)
        if failure is None:
            self._ack(target)
        elif not_executed(reply, error) and self._stand_in(target):
            self._check()  # never delivered: a fallback takes the write instead
            return
        else:
            self.tally.failure(target, failure)
        self._check()

    def _hedge(self) -> None:
        """Targets silent for a while may have died with the write in flight (its outcome
        unknown): also send it, hinted, to spare fallbacks. A duplicate is harmless - the
        hint is replayed and merged - while waiting could cost the whole put."""
        self._hedge_timer = None
        if self.state is not PutState.REMOTE_WAIT:
            return
        for target in self.tally.pending:
            if not self.spares:
                break
            spare = self.spares.pop(0)
            if not self.tally.add(spare):
                break
            hint = self.hints.get(target) or target
            self.hints[spare] = hint
            self.replicas.replicate(
                spare, self.key, self.blob, hint, self.timeout, functools.partial(self._on_remote, spare)
            )

    def _stand_in(self, target: str) -> bool:
        """Send the write to the next spare fallback, hinted for the primary ``target`` was
        (or stood in for), so that a node that just died does not fail the put."""
        while self.spares and self.state is not PutState.DONE:
            spare = self.spares.pop(0)
            if not self.tally.substitute(target, spare):
                return False
            hint = self.hints.pop(target) or target
            self.hints[spare] = hint
            self.replicas.replicate(
                spare, self.key, self.blob, hint, self.timeout, functools.partial(self._on_remote, spare)
            )
            return True
        return False

    def _check(self) -> None:
        if self.state is PutState.DONE:
            return
        if self.tally.state is QuorumState.SUCCEEDED and self.primary_acks >= self.pw:
            self._finish(None)
        elif self.tally.state is QuorumState.FAILED:
            self._finish(self.tally.error("put"))
        elif self.pw:
            possible = self.primary_acks + sum(1 for t in self.tally.pending if self.hints.get(t) is None)
            if possible < self.pw:
                error = self.tally.error("put")
                error.message = f"put failed: {self.primary_acks} of pw={self.pw} required primaries acknowledged"
                error.required = self.pw
                error.succeeded = self.primary_acks
                self._finish(error)

    def _on_deadline(self) -> None:
        if self.state is not PutState.DONE:
            self._finish(self.tally.error("put", timed_out=True))

    def _finish(self, error: DynqError | None) -> None:
        if self.state is PutState.DONE:
            return
        self.state = PutState.DONE
        for timer in (self._timer, self._hedge_timer):
            if timer is not None:
                timer.cancel()
        self.outcome(None if error else {}, error)


class GetCoordinator:
    """Reads a key from N healthy replicas, answers with the merge of the first R replies,
    then keeps listening until every replica answered (or the deadline) and sends the
    merged object to the primaries that turned out stale: read repair."""

    def __init__(
        self,
        replicas: Replicas,
        key: bytes,
        targets: Sequence[str],
        r: int,
        timeout: float,
        outcome: Callable[[VersionedObject | None, DynqError | None], None],
        primaries: Sequence[str] = (),
    ) -> None:
        self.replicas = replicas
        self.key = key
        self.tally = ReadQuorum(targets, r)
        self.primaries = set(primaries)  # only these are repaired (a fallback holds hints instead)
        self.timeout = timeout
        self.outcome = outcome
        self.done = False  # the caller has its answer
        self._timer: Any = None

    def start(self) -> None:
        self._timer = self.replicas.call_later(self.timeout, self._on_deadline)
        for target in self.tally.replicas:
            if target == self.replicas.name:
                continue
            self.replicas.fetch(target, self.key, self.timeout, functools.partial(self._on_remote, target))
        if self.replicas.name in self.tally.replicas:
            try:
                blob = self.replicas.read_local(self.key)
                self.tally.reply(
                    self.replicas.name, None if blob is None else decode_object(blob, self.replicas.limits)
                )
            except DynqError as exc:
                self.tally.failure(self.replicas.name, f"{exc.code}: {exc.message}")
        self._check()

    def _on_remote(self, target: str, reply: Reply | None, error: DynqError | None) -> None:
        failure = _describe(reply, error)
        if failure is not None:
            self.tally.failure(target, failure)
        else:
            assert reply is not None
            try:
                obj = decode_reply_object(reply.body, self.replicas.limits)
            except DynqError as exc:
                self.tally.failure(target, f"protocol: {exc.message}")
            else:
                self.tally.reply(target, obj)
        self._check()

    def _check(self) -> None:
        if not self.done:
            if self.tally.state is QuorumState.SUCCEEDED:
                self.done = True
                self.outcome(self.tally.merged, None)
            elif self.tally.state is QuorumState.FAILED:
                self.done = True
                self.outcome(None, self.tally.error("get"))
        if not self.tally.pending:
            self._settle()

    def _on_deadline(self) -> None:
        if not self.done:
            self.done = True
            self.outcome(None, self.tally.error("get", timed_out=True))
        self._settle()

    def _settle(self) -> None:
        """Everything that will answer has answered: repair the stale primaries."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        else:
            return  # settled already
        if self.tally.state is not QuorumState.SUCCEEDED or self.tally.merged is None:
            return
        stale = [r for r in self.tally.stale_replicas() if r in self.primaries]
        if stale:
            self.replicas.read_repair(self.key, self.tally.merged, stale)
