"""Requests to other nodes: the DEALER mux, this node's view of its peers, replica batching.

Two ways to ask a peer, for two kinds of code:

* the request path uses callbacks (:meth:`PeerLink.request`, :meth:`~PeerLink.replicate`,
  :meth:`~PeerLink.fetch`): no task or future per request (they cost about half the
  throughput when tried);
* background code (handoff, transfers, anti-entropy, claimant calls) awaits
  :meth:`PeerLink.call` or :meth:`~PeerLink.call_replicate`: the one callback-to-future
  adapter. The request is sent at once and the future returned, so that several sent in
  one loop pass still leave as one batch.

Replica writes made in one loop pass (typically: everything one group commit released)
go to each peer as one ``replica_put_batch`` message, and come back as one reply: one
send, one wake-up of each side's I/O thread, one commit on the replica.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

from dynq_client import protocol as p
from dynq_client.errors import DynqError, ProtocolError, UnknownOp
from dynq_client.health import Health, PeerState
from dynq_client.protocol import Limits, Reply, reply_error
from dynq_client.transport import RequestMux

from .ports import ReplyCallback
from .stats import Stats

log = logging.getLogger(__name__)

MAX_BATCH_ITEMS = 1000
"""Replica writes per batch message (well under the decoder's container limit)."""


class _Batch:
    """Replica writes for one peer, collected during one loop pass."""

    __slots__ = ("items", "callbacks", "size", "timeout")

    def __init__(self, timeout: float) -> None:
        self.items: list[dict[str, Any]] = []  # replica_put bodies
        self.callbacks: list[ReplyCallback] = []  # one per item
        self.size = 0  # object bytes so far: a batch stays well under the message limit
        self.timeout = timeout


class PeerLink:
    """This node's requests to its peers (implements :class:`dynq.server.ports.Peers`)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, mux: RequestMux, health: Health, stats: Stats, *,
                 name: str, limits: Limits, timeout_s: float) -> None:
        self.loop = loop
        self.mux = mux
        self.health = health  # this node's view of its peers, fed by the mux and by gossip
        self.stats = stats
        self.name = name  # this node
        self.limits = limits
        self.timeout_s = timeout_s  # default deadline of background calls
        self.request = mux.request  # the hot path: one attribute, no wrapper
        self._outbox: dict[str, _Batch] = {}  # replica writes waiting for the end of this loop pass
        self._outbox_scheduled = False

    # --- the view ------------------------------------------------------------------------

    def is_up(self, peer: str) -> bool:
        """This node's view: usable for sloppy quorum unless marked down (probes revive it)."""
        return peer == self.name or self.health.state(peer) is not PeerState.DOWN

    def down(self) -> list[str]:
        return self.health.down()

    # --- the request path (callbacks) -----------------------------------------------------

    def fetch(self, peer: str, key: bytes, timeout_s: float, done: ReplyCallback) -> None:
        """A replica's copy of ``key`` (``replica_get``)."""
        self.mux.request(peer, p.OP_REPLICA_GET, {"k": key}, timeout_s, done)

    def replicate(self, peer: str, key: bytes, blob: bytes, hint: str | None, timeout_s: float,
                  done: ReplyCallback) -> None:
        """Merge ``blob`` into ``peer``'s copy of ``key`` (a ``replica_put``, batched per
        peer and loop pass); ``hint`` names the primary a fallback stands in for."""
        body: dict[str, Any] = {"k": key, "ob": blob}
        if hint is not None:
            body["h"] = hint
        batch = self._outbox.get(peer)
        # Everything that goes into the frame: object, key, hint, msgpack framing.
        size = len(blob) + len(key) + len(hint or "") + 64
        if batch is not None and (
            batch.size + size > self.limits.max_message_bytes // 2 or len(batch.items) >= MAX_BATCH_ITEMS
        ):
            self._send_batch(peer, self._outbox.pop(peer))
            batch = None
        if batch is None:
            batch = self._outbox[peer] = _Batch(timeout_s)
            if not self._outbox_scheduled:
                self._outbox_scheduled = True
                self.loop.call_soon(self._flush_outbox)
        batch.items.append(body)
        batch.callbacks.append(done)
        batch.size += size
        batch.timeout = max(batch.timeout, timeout_s)  # each coordinator keeps its own deadline

    def _flush_outbox(self) -> None:
        self._outbox_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for peer, batch in outbox.items():
            self._send_batch(peer, batch)

    def _send_batch(self, peer: str, batch: _Batch) -> None:
        self.stats.replica_batches += 1
        self.stats.replica_batch_items += len(batch.items)
        if len(batch.items) == 1:
            self.mux.request(peer, p.OP_REPLICA_PUT, batch.items[0], batch.timeout, batch.callbacks[0])
            return
        callbacks = batch.callbacks
        mux = self.mux

        def each(callback: ReplyCallback, reply: Reply | None, error: DynqError | None) -> None:
            try:
                callback(reply, error)
            except Exception:  # one broken callback must not leave the others unanswered
                log.exception("replica write callback failed")

        def done(reply: Reply | None, error: DynqError | None) -> None:
            results = reply.body.get("r") if reply is not None and reply.ok else None
            if reply is not None and not reply.ok and (reply.error or {}).get("code") == UnknownOp.code:
                # A peer that predates batching (rolling upgrade): send the items one by one.
                for item, callback in zip(batch.items, callbacks):
                    mux.request(peer, p.OP_REPLICA_PUT, item, batch.timeout, callback)
            elif error is not None or reply is None or not reply.ok:
                for callback in callbacks:  # the whole batch failed alike
                    each(callback, reply, error)
            elif not isinstance(results, list) or len(results) != len(callbacks):
                bad = ProtocolError(f"{peer}: batch reply does not match the batch")
                for callback in callbacks:
                    each(callback, None, bad)
            else:
                for callback, result in zip(callbacks, results):
                    if result is None:
                        each(callback, Reply(reply.id, reply.epoch, True, {}), None)
                    else:
                        err = result if isinstance(result, dict) else {"code": "protocol", "msg": "bad result"}
                        each(callback, Reply(reply.id, reply.epoch, False, {}, err), None)

        self.mux.request(peer, p.OP_REPLICA_PUT_BATCH, {"items": batch.items}, batch.timeout, done)

    # --- background code (awaitables) -----------------------------------------------------

    def call(self, peer: str, op: str, body: dict[str, Any],
             timeout_s: float | None = None) -> asyncio.Future[dict[str, Any]]:
        """Send ``op`` now; the future holds the reply body, or the :class:`DynqError`
        (the transport's or the error reply's)."""
        future, done = self._future()
        self.mux.request(peer, op, body, self.timeout_s if timeout_s is None else timeout_s, done)
        return future

    def call_replicate(self, peer: str, key: bytes, blob: bytes, hint: str | None = None,
                       timeout_s: float | None = None) -> asyncio.Future[dict[str, Any]]:
        """:meth:`replicate` as an awaitable (batched like the request path's)."""
        future, done = self._future()
        self.replicate(peer, key, blob, hint, self.timeout_s if timeout_s is None else timeout_s, done)
        return future

    def _future(self) -> tuple[asyncio.Future[dict[str, Any]], ReplyCallback]:
        """The one callback-to-awaitable adapter."""
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()

        def done(reply: Reply | None, error: DynqError | None) -> None:
            if future.done():  # cancelled by its awaiter
                return
            failure = reply_error(reply, error)
            if failure is not None:
                future.set_exception(failure)
            else:
                assert reply is not None
                future.set_result(reply.body)

        return future, done

    # --- connections -------------------------------------------------------------------

    def connect(self, peer: str, address: str) -> None:
        """A DEALER to ``peer`` (a member, or ``~ADDRESS`` for a node not yet one)."""
        self.mux.connect(peer, address)

    def disconnect(self, peer: str) -> None:
        self.mux.disconnect(peer)

    def connected(self) -> list[str]:
        return self.mux.connected_names()

    @property
    def late_replies(self) -> int:
        return self.mux.late_replies

    @property
    def send_retries(self) -> int:
        return self.mux.send_retries


Outcome = Callable[[dict[str, Any] | None, DynqError | None], None]
"""A request's outcome: the reply body, or the error (``Responder.outcome``)."""


def relay(outcome: Outcome, *, body: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
          unreachable: Callable[[DynqError], DynqError] | None = None) -> ReplyCallback:
    """Pass a peer's reply on as this request's outcome (a forwarded request).

    ``body`` may rewrite a successful reply's body (a :class:`DynqError` it raises
    becomes the outcome); ``unreachable`` may rewrite the transport's error (the peer
    never answered), not an error the peer replied with.
    """

    def done(reply: Reply | None, error: DynqError | None) -> None:
        if error is not None and unreachable is not None:
            outcome(None, unreachable(error))
            return
        failure = reply_error(reply, error)
        if failure is not None:
            outcome(None, failure)
            return
        assert reply is not None
        if body is None:
            outcome(reply.body, None)
            return
        try:
            rewritten = body(reply.body)
        except DynqError as exc:
            outcome(None, exc)
        else:
            outcome(rewritten, None)

    return done
