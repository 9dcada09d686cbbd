"""Ops called in-process: the node's own handlers, without a socket.

The HTTP admin API (:mod:`dynq.ops.admin_api`) serves what the CLI gets over ZeroMQ. It
must not be a second implementation of those ops, so it calls the very handlers the
request server dispatches to (``RequestServer.handlers``), each with a
:class:`~dynq.server.responder.Responder` whose reply sink is this object instead of the
ROUTER. The reply is encoded and decoded as on the wire, so the API sees exactly what a
remote caller would (and a handler that answers later, e.g. after asking the claimant,
works unchanged).

Calls made here are counted in a :class:`Stats` and :class:`Latencies` of their own:
an operator's console refreshing every few seconds must not show up as client traffic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from dynq_client import protocol as p
from dynq_client.errors import DynqError, Timeout, UnknownOp, error_from_wire
from dynq_client.protocol import Request

from ..ops.metrics import Latencies
from .ports import Handler
from .responder import Responder, guarded
from .stats import Stats

_IDENT = b"local"  # the one "connection" of in-process calls


class LocalCaller:
    """Calls the node's own op handlers and awaits their reply (implements ``ReplySink``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, handlers: Mapping[str, Handler], *, epoch: int = 0) -> None:
        self.loop = loop
        self.handlers = handlers  # the request server's table (live: parts register into it)
        self.epoch = epoch  # replies carry it; nothing here reads it back
        self.in_flight = 0  # calls made and not yet answered
        self.in_flight_by_connection: dict[bytes, int] = {}
        self.stats = Stats()  # errors of in-process calls (kept out of the node's counters)
        self.latencies = Latencies()
        self._next_id = 0
        self._waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}  # request id -> its reply

    async def call(self, op: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        """The reply body of ``op``, or its :class:`DynqError` raised (a timeout too)."""
        handler = self.handlers.get(op)
        if handler is None:
            raise UnknownOp(f"unknown op {op!r}")
        self._next_id += 1
        req_id = self._next_id
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self._waiting[req_id] = future
        self.in_flight += 1
        self.in_flight_by_connection[_IDENT] = self.in_flight_by_connection.get(_IDENT, 0) + 1
        responder = Responder(self, _IDENT, req_id, op)
        self.stats.requests[op] += 1
        try:
            guarded(responder, handler, responder, Request(req_id, op, dict(body)))
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError as exc:
            raise Timeout(f"{op}: no answer within {timeout_s:.1f}s") from exc
        finally:
            self._waiting.pop(req_id, None)

    def send_reply(self, ident: bytes, frame: bytes) -> None:
        reply = p.decode_reply(frame)
        future = self._waiting.get(reply.id)
        if future is None or future.done():  # answered after its caller gave up
            return
        if reply.ok:
            future.set_result(reply.body)
        else:
            error: DynqError = error_from_wire(reply.error)
            future.set_exception(error)
