"""The request server: one ROUTER, drained by one ``add_reader`` callback (no task per request).

Each message is decoded, admitted (not shutting down; the connection under its
in-flight cap, for client ops; the sender's key allowed the op, under CURVE) and
dispatched by op name to the handler a part registered. Every request gets exactly one
reply through its :class:`~dynq.server.responder.Responder`; malformed requests get a
structured error when their id is readable and are dropped (and counted) otherwise, so
no input can take the node down.

Edge-triggered readiness: a send on the ROUTER may consume the fd's edge for a request
already waiting, so after replies the socket is looked at once more per loop pass.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Collection, Mapping

import zmq

from dynq_client import protocol as p
from dynq_client.errors import Forbidden, Overloaded, Unavailable, UnknownOp
from dynq_client.protocol import Limits, short_repr

from ..ops.metrics import Latencies
from ..security import NodeSecurity
from .ports import Handler
from .responder import Responder, guarded
from .stats import Stats

log = logging.getLogger(__name__)

_POLLIN = int(zmq.POLLIN)  # plain ints: enum.Flag arithmetic is slow on the hot path
_NOBLOCK = int(zmq.NOBLOCK)
_NOBLOCK_MORE = int(zmq.NOBLOCK | zmq.SNDMORE)  # ~1.3 µs per reply when computed there


class RequestServer:
    """Requests in, replies out: admission, dispatch by op, the reply path."""

    def __init__(self, loop: asyncio.AbstractEventLoop, router: zmq.Socket[Any], stats: Stats, latencies: Latencies,
                 *, name: str, limits: Limits, max_in_flight_per_connection: int,
                 security: NodeSecurity | None, epoch: int) -> None:
        self.loop = loop
        self.router = router
        self.stats = stats
        self.latencies = latencies  # per-op request latency histograms
        self.name = name
        self.limits = limits
        self.max_in_flight_per_connection = max_in_flight_per_connection
        self.security = security
        self.epoch = epoch  # the ring epoch replies carry (kept current by the cluster's change events)
        self.in_flight = 0  # requests received and not yet answered
        self.in_flight_by_connection: dict[bytes, int] = {}  # ROUTER identity -> its share of in_flight
        self.handlers: dict[str, Handler] = {}
        self.client_ops: frozenset[str] = frozenset()  # what a client key may ask for under CURVE
        self._closing = False  # shutting down: new requests are refused as unavailable
        self._check_scheduled = False  # a _check_router is queued on the loop
        self._reading = False

    def register(self, handlers: Mapping[str, Handler], client_ops: Collection[str] = ()) -> None:
        """Serve ``handlers`` (by op); ``client_ops`` of them are open to client keys.
        A duplicate op is a wiring bug: it fails at start, not at request time."""
        twice = set(handlers) & set(self.handlers)
        if twice:
            raise ValueError(f"ops registered twice: {sorted(twice)}")
        unknown = set(client_ops) - set(handlers)
        if unknown:
            raise ValueError(f"client ops without a handler: {sorted(unknown)}")
        self.handlers.update(handlers)
        self.client_ops = self.client_ops | frozenset(client_ops)

    def start(self) -> None:
        self.loop.add_reader(self.router.fileno(), self._drain_router)
        self._reading = True

    def refuse_new(self) -> None:
        """Shutting down: new requests are answered "unavailable" (never executed), so
        clients and peers go to another replica at once instead of waiting for this node."""
        self._closing = True

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for the requests in flight to be answered."""
        deadline = self.loop.time() + timeout_s
        while self.in_flight > 0 and self.loop.time() < deadline:
            await asyncio.sleep(0.01)

    def stop_reading(self) -> None:
        if self._reading:
            self.loop.remove_reader(self.router.fileno())
            self._reading = False

    # --- in ------------------------------------------------------------------------------

    def _drain_router(self) -> None:
        router, security = self.router, self.security
        while True:
            try:
                if security is None:
                    frames = router.recv_multipart(_NOBLOCK)
                    ident, frame, role = frames[0], frames[-1], "peer"
                else:  # under CURVE, frames (not bytes) carry the sender's User-Id: role and key
                    parts = router.recv_multipart(_NOBLOCK, copy=False)
                    frames = [part.bytes for part in parts]
                    ident, frame = frames[0], frames[-1]
                    role = security.role_of(_user_id(parts[-1])) or "none"
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.warning("router recv failed: %s", exc)
                return
            if len(frames) != 2:
                self.stats.dropped_frames += 1
                if len(frames) > 2:  # the sender is reachable: tell it what went wrong
                    self.send_reply(ident, p.encode_error(0, self.epoch, p.BadRequest(
                        f"a request is one frame; got {len(frames) - 1}")))
                continue
            self.dispatch(ident, frame, role)

    def dispatch(self, ident: bytes, frame: bytes, role: str = "peer") -> None:
        try:
            request = p.decode_request(frame, self.limits)
        except p.BadRequest as exc:
            if exc.request_id is None:
                self.stats.dropped_frames += 1
                log.debug("dropping undecodable frame: %s", exc)
            else:
                self.stats.errors[exc.code] += 1
                self.send_reply(ident, p.encode_error(exc.request_id, self.epoch, exc))
            return
        if self._closing:
            self.send_reply(ident, p.encode_error(
                request.id, self.epoch, Unavailable(f"{self.name} is shutting down")))
            return
        in_flight_here = self.in_flight_by_connection.get(ident, 0)
        client_ops = self.client_ops
        # Capped: what clients send. Not: what nodes send each other on behalf of all their
        # clients over one connection (replica ops, forwarded writes, repair, transfers).
        if (in_flight_here >= self.max_in_flight_per_connection and request.op in client_ops
                and request.body.get("fwd") is not True):
            self.stats.overloaded += 1
            self.stats.errors[Overloaded.code] += 1
            self.send_reply(ident, p.encode_error(request.id, self.epoch, Overloaded(
                f"{self.name}: this connection already has {in_flight_here} requests in flight "
                f"(max_in_flight_per_connection)")))
            return
        self.in_flight_by_connection[ident] = in_flight_here + 1
        self.in_flight += 1
        handler = self.handlers.get(request.op)
        op = request.op if handler is not None else "unknown"  # a client must not mint metric series
        responder = Responder(self, ident, request.id, op)
        self.stats.requests[op] += 1
        if handler is None:
            responder.fail(UnknownOp(f"unknown op {short_repr(request.op)}"))
            return
        if role != "peer" and (role != "client" or request.op not in client_ops):
            self.stats.forbidden += 1
            responder.fail(Forbidden(
                f"op {request.op!r} needs a peer key" if role == "client" else "this key is not allowed (revoked?)"))
            return
        guarded(responder, handler, responder, request)

    # --- out -----------------------------------------------------------------------------

    def send_reply(self, ident: bytes, frame: bytes) -> None:
        router = self.router
        if router.closed:
            return
        try:
            router.send(ident, _NOBLOCK_MORE)
            router.send(frame, _NOBLOCK)
        except zmq.ZMQError:
            self.stats.dropped_replies += 1
        # A send may swallow the fd's edge for a request that is already waiting; look once
        # per loop pass (not per reply) whether one is.
        if not self._check_scheduled:
            self._check_scheduled = True
            self.loop.call_soon(self._check_router)

    def _check_router(self) -> None:
        self._check_scheduled = False
        router = self.router
        if not router.closed and int(router.getsockopt(zmq.EVENTS)) & _POLLIN:
            self._drain_router()


def _user_id(frame: zmq.Frame) -> str | None:
    try:
        user = frame.get("User-Id")
    except zmq.ZMQError:
        return None
    return user if isinstance(user, str) else None
