"""The interfaces the parts of a node meet at (riak's behaviours, memberlist's Transport).

A part takes the narrow ports it needs, never the node: :class:`Peers` for requests to
other nodes, :class:`ClusterView` for the cluster state, :class:`LocalWriter` for this
node's writes, a store slice for what it reads and writes on disk. The real
implementations satisfy them structurally (no inheritance):

==================  ==============================================
port                implemented by
==================  ==============================================
Peers               dynq.server.peers.PeerLink
ClusterView         dynq.cluster.manager.ClusterManager
Claimant            dynq.cluster.admin.ClusterAdmin
LocalWriter         dynq.kv.local.LocalReplica
Spawner             dynq.server.services.ServiceGroup
HintStore, ...      dynq.store.storage.Storage
==================  ==============================================

so a unit test substitutes a plain object, and ``mypy --strict`` checks that both
conform. (The coordinators' own port, ``Replicas``, is in :mod:`dynq.kv.coordinator`.)
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine, Literal, Protocol

from dynq_client.errors import DynqError, StorageError
from dynq_client.protocol import Reply, Request
from dynq_client.ring import Ring
from dynq_client.versions import VersionedObject

from ..cluster.membership import ClusterState, Transfer
from .responder import Responder

ReplyCallback = Callable[[Reply | None, DynqError | None], None]
"""Called once with a peer's reply, or with the transport's error (timeout, unreachable)."""

CommitCallback = Callable[[StorageError | None], None]
"""Called once, from the loop, after a staged write committed (None) or failed."""

Handler = Callable[[Responder, Request], None]
"""Serves one op: replies through the responder, now or later (exactly once)."""


def ignore_reply(reply: Reply | None, error: DynqError | None) -> None:
    """Callback of a fire-and-forget request (repairs, probes): health already saw the outcome."""


class Peers(Protocol):
    """Requests to other nodes."""

    @property
    def name(self) -> str: ...  # this node

    def is_up(self, peer: str) -> bool: ...  # this node's view (probes revive a peer)

    def request(self, peer: str, op: str, body: dict[str, Any], timeout: float,
                callback: ReplyCallback) -> int: ...

    def call(self, peer: str, op: str, body: dict[str, Any],
             timeout_s: float | None = None) -> asyncio.Future[dict[str, Any]]: ...

    def call_replicate(self, peer: str, key: bytes, blob: bytes, hint: str | None = None,
                       timeout_s: float | None = None) -> asyncio.Future[dict[str, Any]]: ...


class ClusterView(Protocol):
    """The cluster state this node serves by (read side)."""

    @property
    def name(self) -> str: ...  # this node

    @property
    def state(self) -> ClusterState: ...

    @property
    def ring(self) -> Ring: ...  # state.ring

    @property
    def is_member(self) -> bool: ...

    @property
    def member_names(self) -> frozenset[str]: ...  # of the serving and the next ring


class Claimant(Protocol):
    """The one node that makes membership changes, as background code reports to it."""

    async def transfer_done(self, transfer: Transfer) -> dict[str, Any]: ...


CommitListener = Callable[[int, bytes], None]
HandOn = Literal["staged", "none", "full"]  # LocalWriter.hand_on: a hint staged, nothing to hand on, no room
"""Called with (partition, key) after a write of the key committed here."""


class LocalWriter(Protocol):
    """This node's own writes, through group commit."""

    def stage_local(self, key: bytes, obj: VersionedObject, blob: bytes, done: CommitCallback,
                    hint_for: str | None = None) -> None: ...

    def current(self, key: bytes) -> VersionedObject | None: ...  # the merge base, staged writes included

    def watch(self, partition: int, listener: CommitListener) -> Callable[[], None]: ...
    # listener after each commit of a key of ``partition``; returns the unwatch

    def hand_on(self, key: bytes, target: str, done: CommitCallback) -> HandOn: ...
    # re-stage our copy of ``key`` (typed or plain) as a hint for ``target``

    def typed_exchange(self, key: bytes, theirs: bytes | None) -> tuple[
            asyncio.Future[StorageError | None] | None, bytes | None] | None: ...
    # anti-entropy of a data type's key by its join: (our commit, what to push back); None: a plain key


class Spawner(Protocol):
    """Runs request-bound background work, cancelled and awaited at shutdown."""

    def spawn(self, work: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]: ...


class HintStore(Protocol):
    """What hinted handoff needs of storage."""

    hints_pending: dict[str, int]  # target -> hints stored for it

    def hint_batch(self, target: str, limit: int) -> list[tuple[bytes, int]]: ...

    def hint_delivered(self, target: str, key: bytes, seq: int, blob: bytes, drop_copy: bool) -> bool: ...

    def get_blob(self, key: bytes) -> bytes | None: ...


class PartitionStore(Protocol):
    """What ownership transfers need of storage."""

    def partition_count(self, partition: int) -> int: ...

    def partition_chunk(self, partition: int, after: bytes, limit: int, max_bytes: int
                        ) -> list[tuple[bytes, bytes]]: ...

    def drop_partition_rows(self, partition: int, limit: int) -> int: ...

    def drop_rows_where(self, partition: int, after: bytes, limit: int,
                        drop: Callable[[bytes], bool]) -> tuple[int, bytes | None]: ...

    def get_blob(self, key: bytes) -> bytes | None: ...

    def hints_for_key(self, key: bytes) -> list[str]: ...  # targets of the key's hints


class MetaStore(Protocol):
    """Named blobs in storage (the cluster state, staged changes): ClusterManager's need."""

    def get_meta(self, name: str) -> bytes | None: ...

    def set_meta(self, name: str, value: bytes) -> None: ...
