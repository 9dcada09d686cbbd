"""The interfaces the parts of a node meet at (riak's behaviours, memberlist's Transport).

A part takes the narrow ports it needs, never the node: :class:`Peers` for requests to
other nodes, :class:`ClusterView` for the cluster state and its changes, and so on.
The real implementations satisfy them structurally (no inheritance), so a unit test
substitutes a plain object and ``mypy --strict`` checks that both conform.
"""

from __future__ import annotations

from typing import Callable, Protocol

from dynq_client.errors import DynqError, StorageError
from dynq_client.protocol import Reply, Request

from .responder import Responder

ReplyCallback = Callable[[Reply | None, DynqError | None], None]
"""Called once with a peer's reply, or with the transport's error (timeout, unreachable)."""

CommitCallback = Callable[[StorageError | None], None]
"""Called once, from the loop, after a staged write committed (None) or failed."""


def ignore_reply(reply: Reply | None, error: DynqError | None) -> None:
    """Callback of a fire-and-forget request (repairs, probes): health already saw the outcome."""


Handler = Callable[[Responder, Request], None]
"""Serves one op: replies through the responder, now or later (exactly once)."""


class MetaStore(Protocol):
    """Named blobs in storage (the cluster state, staged changes): ClusterManager's need."""

    def get_meta(self, name: str) -> bytes | None: ...

    def set_meta(self, name: str, value: bytes) -> None: ...
