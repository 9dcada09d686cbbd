"""The one reply a request gets, and the one policy that turns a handler's error into it."""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Protocol

from dynq_client import protocol as p
from dynq_client.errors import DynqError, InternalError, InvalidRequest

from ..cluster.membership import MembershipError
from ..ops.metrics import Latencies
from .stats import Stats

log = logging.getLogger(__name__)


class ReplySink(Protocol):
    """What a responder needs of its server (:class:`dynq.server.router.RequestServer`)."""

    epoch: int  # the ring epoch every reply carries
    in_flight: int  # requests received and not yet answered
    in_flight_by_connection: dict[bytes, int]  # ROUTER identity -> its share of in_flight
    stats: Stats
    latencies: Latencies

    def send_reply(self, ident: bytes, frame: bytes) -> None: ...


class Responder:
    """The one reply a request gets. Replying twice is a bug and is ignored (and logged)."""

    __slots__ = ("server", "ident", "req_id", "op", "started", "done")

    def __init__(self, server: ReplySink, ident: bytes, req_id: int, op: str) -> None:
        self.server = server
        self.ident = ident  # ROUTER identity of the sender
        self.req_id = req_id
        self.op = op
        self.started = time.perf_counter()
        self.done = False

    def ok(self, body: dict[str, Any]) -> None:
        if self._finish():
            server = self.server
            server.send_reply(self.ident, p.encode_reply(self.req_id, server.epoch, body))

    def fail(self, error: DynqError) -> None:
        if self._finish():
            server = self.server
            server.stats.errors[error.code] += 1
            server.send_reply(self.ident, p.encode_error(self.req_id, server.epoch, error))

    def outcome(self, body: dict[str, Any] | None, error: DynqError | None) -> None:
        if error is not None:
            self.fail(error)
        else:
            self.ok(body or {})

    def _finish(self) -> bool:
        if self.done:
            log.error("second reply to request %d (%s) suppressed", self.req_id, self.op)
            return False
        self.done = True
        server = self.server
        server.in_flight -= 1
        by_connection = server.in_flight_by_connection
        left = by_connection[self.ident] - 1
        if left:
            by_connection[self.ident] = left
        else:  # the map holds only connections with requests in flight
            del by_connection[self.ident]
        server.latencies.observe(self.op, time.perf_counter() - self.started)
        return True


def guarded(responder: Responder, fn: Callable[..., None], *args: Any) -> None:
    """Run handler code - directly or later, from a reply callback - so that any error
    becomes this request's error reply: never a lost reply, never a crashed loop."""
    try:
        fn(*args)
    except DynqError as exc:
        if not responder.done:
            responder.fail(exc)
    except MembershipError as exc:  # a membership change that cannot be made, and why
        if not responder.done:
            responder.fail(InvalidRequest(str(exc)))
    except Exception as exc:  # a bug must cost one request, not the node
        log.exception("request %s failed", responder.op)
        if not responder.done:
            responder.fail(InternalError(f"{type(exc).__name__}: {exc}"))
