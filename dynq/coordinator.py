"""Server-side coordination of one get, put or delete: a small state machine per request.

The states follow riak_kv's get/put FSMs; the counting is the pure tally from
``dynq_client.quorum``::

    put:    PREPARE -> LOCAL_COMMIT -> REMOTE_WAIT -> DONE
    get:    WAIT -> DONE
    delete: READ (only without a context) -> put of a tombstone

A put is coordinated by a primary replica of the key. It mints the new dot, commits the
new object *locally first*, and only then sends it to the other primaries: were the
dot shown to other replicas before it is durable here, a crash could make this node mint
the same dot again for a different write, and one of the two would be lost.

The coordinators do no I/O themselves: they call the narrow :class:`Replicas` interface,
which the node implements with its sockets and storage (and a test with plain objects).
"""

from __future__ import annotations

import enum
import functools
import logging
from typing import Any, Callable, Protocol, Sequence

from dynq_client.errors import DynqError, StorageError, error_from_wire
from dynq_client.protocol import Reply
from dynq_client.quorum import QuorumState, QuorumTally, ReadQuorum
from dynq_client.versions import VersionedObject, decode_object, decode_reply_object

log = logging.getLogger(__name__)

Outcome = Callable[[dict[str, Any] | None, DynqError | None], None]
"""Called once with the reply body, or with the error, when a request is decided."""


class Replicas(Protocol):
    """What a coordinator needs from its node."""

    name: str

    def stage_local(
        self, key: bytes, obj: VersionedObject, blob: bytes, done: Callable[[StorageError | None], None]
    ) -> None: ...

    def read_local(self, key: bytes) -> bytes | None: ...

    def send(
        self,
        replica: str,
        op: str,
        body: dict[str, Any],
        timeout: float,
        done: Callable[[Reply | None, DynqError | None], None],
    ) -> None: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any: ...


def _describe(reply: Reply | None, error: DynqError | None) -> str | None:
    """None when the replica succeeded, otherwise why it failed."""
    if error is not None:
        return f"{error.code}: {error.message}"
    assert reply is not None
    if not reply.ok:
        remote = error_from_wire(reply.error)
        return f"{remote.code}: {remote.message}"
    return None


class PutState(enum.Enum):
    PREPARE = "prepare"
    LOCAL_COMMIT = "local_commit"
    REMOTE_WAIT = "remote_wait"
    DONE = "done"


class PutCoordinator:
    """Replicates one new object to the key's primaries and answers at W acknowledgements."""

    def __init__(
        self,
        replicas: Replicas,
        key: bytes,
        obj: VersionedObject,
        blob: bytes,
        targets: Sequence[str],
        w: int,
        timeout: float,
        outcome: Outcome,
    ) -> None:
        self.replicas = replicas
        self.key = key
        self.obj = obj  # the new object, already carrying its new dot
        self.blob = blob  # its encoding, sent as is to every replica
        self.tally = QuorumTally(targets, w)
        self.timeout = timeout
        self.outcome = outcome
        self.state = PutState.PREPARE
        self._timer: Any = None  # deadline handle

    def start(self) -> None:
        self.state = PutState.LOCAL_COMMIT
        self._timer = self.replicas.call_later(self.timeout, self._on_deadline)
        self.replicas.stage_local(self.key, self.obj, self.blob, self._on_local_commit)

    def _on_local_commit(self, error: StorageError | None) -> None:
        if error is not None:
            # The dot is not durable here, so it must not reach any other replica.
            self.tally.failure(self.replicas.name, f"{error.code}: {error.message}")
            self._finish(error)
            return
        self.tally.success(self.replicas.name)
        if self.state is PutState.DONE:
            return
        self.state = PutState.REMOTE_WAIT
        body = {"k": self.key, "ob": self.blob}
        for target in self.tally.replicas:
            if target != self.replicas.name:
                self.replicas.send(
                    target,
                    "replica_put",
                    body,
                    self.timeout,
                    functools.partial(self._on_remote, target),
                )
        self._check()

    def _on_remote(self, target: str, reply: Reply | None, error: DynqError | None) -> None:
        failure = _describe(reply, error)
        if failure is None:
            self.tally.success(target)
        else:
            self.tally.failure(target, failure)
        self._check()

    def _check(self) -> None:
        if self.state is PutState.DONE:
            return
        if self.tally.state is QuorumState.SUCCEEDED:
            self._finish(None)
        elif self.tally.state is QuorumState.FAILED:
            self._finish(self.tally.error("put"))

    def _on_deadline(self) -> None:
        if self.state is not PutState.DONE:
            self._finish(self.tally.error("put", timed_out=True))

    def _finish(self, error: DynqError | None) -> None:
        if self.state is PutState.DONE:
            return
        self.state = PutState.DONE
        if self._timer is not None:
            self._timer.cancel()
        self.outcome(None if error else {}, error)


class GetCoordinator:
    """Reads a key from its primaries and answers with the merge of R replies."""

    def __init__(
        self,
        replicas: Replicas,
        key: bytes,
        targets: Sequence[str],
        r: int,
        timeout: float,
        outcome: Callable[[VersionedObject | None, DynqError | None], None],
    ) -> None:
        self.replicas = replicas
        self.key = key
        self.tally = ReadQuorum(targets, r)
        self.timeout = timeout
        self.outcome = outcome
        self.done = False
        self._timer: Any = None

    def start(self) -> None:
        self._timer = self.replicas.call_later(self.timeout, self._on_deadline)
        body = {"k": self.key}
        for target in self.tally.replicas:
            if target == self.replicas.name:
                continue
            self.replicas.send(
                target,
                "replica_get",
                body,
                self.timeout,
                functools.partial(self._on_remote, target),
            )
        if self.replicas.name in self.tally.replicas:
            try:
                blob = self.replicas.read_local(self.key)
                self.tally.reply(self.replicas.name, None if blob is None else decode_object(blob))
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
                obj = decode_reply_object(reply.body)
            except DynqError as exc:
                self.tally.failure(target, f"protocol: {exc.message}")
            else:
                self.tally.reply(target, obj)
        self._check()

    def _check(self) -> None:
        if self.done:
            return
        if self.tally.state is QuorumState.SUCCEEDED:
            self._finish(self.tally.merged, None)
        elif self.tally.state is QuorumState.FAILED:
            self._finish(None, self.tally.error("get"))

    def _on_deadline(self) -> None:
        if not self.done:
            self._finish(None, self.tally.error("get", timed_out=True))

    def _finish(self, obj: VersionedObject | None, error: DynqError | None) -> None:
        self.done = True
        if self._timer is not None:
            self._timer.cancel()
        self.outcome(obj, error)
