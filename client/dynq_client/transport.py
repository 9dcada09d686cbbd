"""Request/reply over ZeroMQ DEALER sockets, driven by an asyncio loop without a task per request.

One :class:`RequestMux` owns a DEALER socket per remote node (connected to that node's
ROUTER). Each request gets an id, a callback and a deadline; a reply is matched to its request by id, so a late reply - one whose request already
timed out - finds nothing and is dropped: it can never be handed to the wrong request.

Why callbacks rather than ``zmq.asyncio`` futures: draining plain sockets from one
``loop.add_reader`` callback per socket measured about twice the throughput and half the
latency of a task awaiting ``asyncio.wait_for`` per request (see shared/PERF.md). The
deadlines share one loop timer (:class:`_Deadlines`): a timer handle per request, made and
cancelled for every request that is answered in time, was ~5 µs of each. ZeroMQ's notification fd is edge-triggered, so every
reader drains until ``EAGAIN``, and after every send we check ``EVENTS`` in case the
send consumed the edge of a message that is already waiting.

Sockets are created with ``IMMEDIATE`` so that a message to a node that is not
connected fails at once (``Unavailable``) instead of queueing for a peer that may never
come back; right after a socket is created the connection is still being made, so a
send within :attr:`RequestMux.connect_grace` is retried briefly instead of failing - but
only until the first send goes through: after that, "not connected" means the peer is gone.
The grace is short (a live peer on a LAN connects in milliseconds; libzmq's first retry
after a refused connect is 100 ms later) because a peer that died before we ever reached
it costs every request the full grace until the failure detector marks it down.

A connection whose security handshake fails (CURVE on one side only, a key the node
refuses, a wrong cluster key) never becomes usable either, and with ``IMMEDIATE`` it would
look exactly like a node that is down. So each DEALER has a socket monitor watching its
handshake events (read from the loop, only when a connection is made or fails: nothing on
the per-message path), and a send that cannot go through on a channel whose handshake
failed for a known cause (a mechanism mismatch, a refused key) fails at once with
:class:`~dynq_client.errors.HandshakeFailed`, naming the address and the cause, instead of
"not connected". A handshake that failed with no detail (the other end hung up first, or a
node restarting mid-handshake) only adds its likely causes to "not connected".
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
from typing import Any, Callable

import zmq
from zmq.utils.monitor import parse_monitor_message

from .errors import DynqError, HandshakeFailed, ProtocolError, Timeout, Unavailable
from .health import Health
from .protocol import DEFAULT_LIMITS, Limits, Reply, decode_reply, encode_request

log = logging.getLogger(__name__)

ReplyCallback = Callable[[Reply | None, DynqError | None], None]
"""Called exactly once per request: ``(reply, None)`` or ``(None, error)``."""

_RETRY_SEND_S = 0.005
_POLLIN = int(zmq.POLLIN)  # plain ints: enum.Flag arithmetic is slow on the hot path
_NOBLOCK = int(zmq.NOBLOCK)
_HANDSHAKE_EVENTS = int(
    zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)


_NO_KEYS_HINT = ("(pass keys=DIR or curve=CurveKeys(...); the CLI takes --keys DIR, env DYNQ_KEYS; "
                 "`dynq up` writes them into ./dynq-data/keys)")


def handshake_failure(event: int, value: int, curve: bool) -> tuple[str, bool] | None:
    """What a socket monitor's handshake event means for a party that does (``curve``) or
    does not run CURVE, and whether that is certain; None for a handshake that succeeded.

    Both ends detect a mechanism mismatch, and the one that detects it first closes the
    connection: the other then sees only "no detail". So a vague failure names both
    possible causes, and never replaces a certain one seen on an earlier attempt."""
    if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
        return None
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        if curve:
            return "security mismatch: this party uses CURVE keys but the node runs without security", True
        return f"security mismatch: the node requires CURVE keys and this party has none {_NO_KEYS_HINT}", True
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"the node refused this party's CURVE key (ZAP status {value}): its public key is not "
                "in the node's peer_keys or client_keys"), True
    if curve:
        return ("CURVE handshake failed: the node runs without security, or it could not authenticate "
                "this party (is the server key (cluster.key) the cluster's?)"), False
    return f"handshake failed: the node requires CURVE keys and this party has none? {_NO_KEYS_HINT}", False


def configure_socket(sock: zmq.Socket[Any], limits: Limits, hwm: int = 10_000) -> None:
    """The options every dynq socket gets: bounded messages and queues, no linger."""
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, limits.max_message_bytes)  # a bigger message drops its sender
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)


class _HeapTimer:
    """One loop timer, armed at the earliest entry of a heap that the subclass keeps."""

    __slots__ = ("loop", "heap", "timer", "timer_at")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.heap: list[Any] = []
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = float("inf")

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.loop.call_at(when, self._fire)
        self.timer_at = when

    def _fire(self) -> None:
        raise NotImplementedError

    def close(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer, self.timer_at = None, float("inf")
        self.heap.clear()


class _Deadlines(_HeapTimer):
    """The deadlines of in-flight requests, behind one loop timer.

    A heap of (deadline, request id), pruned lazily: an answered request's entry stays until
    it reaches the top, where the next :meth:`add` or the timer drops it. Answers come back
    roughly in the order requests went out, so the heap stays about as large as the number
    of requests in flight. The timer is armed at the earliest entry and re-armed only when
    it fires (or when a request with a nearer deadline arrives)."""

    __slots__ = ("expire", "live")

    def __init__(self, loop: asyncio.AbstractEventLoop, live: dict[int, Any],
                 expire: Callable[[int], None]) -> None:
        super().__init__(loop)
        self.live = live  # request id -> pending: ids missing here are answered
        self.expire = expire  # called with the id of a request whose deadline passed
        self.heap: list[tuple[float, int]] = []

    def add(self, deadline: float, req_id: int) -> None:
        heap, live = self.heap, self.live
        while heap and heap[0][1] not in live:
            heapq.heappop(heap)
        heapq.heappush(heap, (deadline, req_id))
        if deadline < self.timer_at:
            self._arm(deadline)

    def _fire(self) -> None:
        self.timer, self.timer_at = None, float("inf")
        heap, live = self.heap, self.live
        now = self.loop.time() + 0.001  # the loop may run a timer a hair early
        while heap:
            deadline, req_id = heap[0]
            if req_id in live and deadline > now:
                self._arm(deadline)
                return
            heapq.heappop(heap)
            if req_id in live:
                self.expire(req_id)



class SharedTimer:
    """A callback at a loop time that shares one loop timer with the others of its
    :class:`SharedTimers`; :meth:`cancel` only forgets the callback."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.callback = None


class SharedTimers(_HeapTimer):
    """Short timers that are nearly always cancelled (a read's hedge), behind one loop
    timer: a loop ``TimerHandle`` made and cancelled per read was ~4 µs of each. A heap of
    (when, sequence, timer), pruned lazily like :class:`_Deadlines`."""

    __slots__ = ("_seq",)

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.heap: list[tuple[float, int, SharedTimer]] = []
        self._seq = itertools.count()

    def call_later(self, delay: float, callback: Callable[[], None]) -> SharedTimer:
        when = self.loop.time() + delay
        handle = SharedTimer(callback)
        heap = self.heap
        while heap and heap[0][2].callback is None:
            heapq.heappop(heap)
        heapq.heappush(heap, (when, next(self._seq), handle))
        if when < self.timer_at:
            self._arm(when)
        return handle

    def _fire(self) -> None:
        self.timer, self.timer_at = None, float("inf")
        heap = self.heap
        now = self.loop.time() + 0.001  # the loop may run a timer a hair early
        while heap:
            when, _, handle = heap[0]
            if handle.callback is not None and when > now:
                self._arm(when)
                return
            heapq.heappop(heap)
            callback, handle.callback = handle.callback, None
            if callback is not None:
                try:
                    callback()
                except Exception:  # one failing callback must not strand the timers after it
                    log.exception("timer callback failed")



class _Pending:
    __slots__ = ("callback", "peer", "frame", "deadline")

    def __init__(self, callback: ReplyCallback, peer: str, frame: bytes, deadline: float) -> None:
        self.callback = callback  # who gets the reply or the error
        self.peer = peer  # node the request went to
        self.frame = frame  # encoded request, kept only while a send is being retried
        self.deadline = deadline  # loop time after which the request has failed


class _Channel:
    __slots__ = ("name", "address", "sock", "created", "established", "monitor", "curve", "handshake_error",
                 "handshake_certain")

    def __init__(self, name: str, address: str, sock: zmq.Socket[Any], created: float,
                 monitor: zmq.Socket[Any]) -> None:
        self.name = name  # node name (or a seed address before the name is known)
        self.address = address  # the node's ROUTER address
        self.sock = sock  # DEALER connected to it
        self.created = created  # loop time of creation, for the connect grace period
        self.established = False  # a send went through once: no more grace, failures are real
        self.monitor = monitor  # PAIR receiving the DEALER's handshake events
        self.curve = sock.getsockopt(zmq.MECHANISM) == zmq.CURVE  # this side runs CURVE
        self.handshake_error: str | None = None  # why the last handshake failed; None once one succeeds
        self.handshake_certain = False  # handshake_error names the cause for sure (not "no detail")


class RequestMux:
    """Many concurrent requests to many nodes over one DEALER per node."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        context: zmq.Context[Any] | None = None,
        limits: Limits = DEFAULT_LIMITS,
        connect_grace: float = 0.25,
        on_reply: Callable[[str, Reply], None] | None = None,
        socket_setup: Callable[[zmq.Socket[Any]], None] | None = None,
        health: Health | None = None,
    ) -> None:
        self.loop = loop
        self.context = context or zmq.Context.instance()
        self.limits = limits
        self.connect_grace = connect_grace  # seconds a new connection may take before sends fail
        self.on_reply = on_reply  # observer of every matched reply (epoch tracking, liveness)
        self.socket_setup = socket_setup  # extra per-socket options (CURVE keys)
        self.health = health  # fed the outcome of every request: the owner's failure detector
        self._channels: dict[str, _Channel] = {}  # node name -> its DEALER
        self._pending: dict[int, _Pending] = {}  # request id -> in-flight request
        self._ids = itertools.count(1)
        self._deadlines = _Deadlines(loop, self._pending, self._on_deadline)
        self.timers = SharedTimers(loop)  # the owner's short timers (read hedges), one loop timer for all
        self.late_replies = 0  # replies that arrived after their request was done
        self.send_retries = 0  # sends retried because the connection was still being made

    # --- connections -------------------------------------------------------------------

    def connect(self, name: str, address: str) -> None:
        """Make sure there is a DEALER to ``name`` at ``address`` (replacing a stale one)."""
        channel = self._channels.get(name)
        if channel is not None:
            if channel.address == address:
                return
            self.disconnect(name)
        sock = self.context.socket(zmq.DEALER)
        configure_socket(sock, self.limits)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 100)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self.socket_setup is not None:
            self.socket_setup(sock)
        monitor = sock.get_monitor_socket(_HANDSHAKE_EVENTS)
        sock.connect(address)
        channel = _Channel(name, address, sock, self.loop.time(), monitor)
        self._channels[name] = channel
        self.loop.add_reader(sock.fileno(), self._drain, channel)
        self.loop.add_reader(monitor.fileno(), self._read_monitor, channel)

    def disconnect(self, name: str) -> None:
        channel = self._channels.pop(name, None)
        if channel is None:
            return
        self.loop.remove_reader(channel.sock.fileno())
        self.loop.remove_reader(channel.monitor.fileno())
        channel.sock.disable_monitor()
        channel.monitor.close(0)
        channel.sock.close(0)
        for req_id, pending in list(self._pending.items()):
            if pending.peer == name:  # it may have been delivered: the outcome is unknown
                self._fail(req_id, Timeout(f"{name}: connection closed with the request in flight"))

    def _read_monitor(self, channel: _Channel) -> None:
        """Record the outcome of each handshake (drained until EAGAIN: the fd is edge-triggered)."""
        monitor = channel.monitor
        while not monitor.closed:
            try:
                event = parse_monitor_message(monitor.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                return
            except (zmq.ZMQError, ValueError) as exc:
                log.debug("monitor of %s: %s", channel.name, exc)
                return
            outcome = handshake_failure(int(event["event"]), int(event["value"]), channel.curve)
            if outcome is None:
                channel.handshake_error, channel.handshake_certain = None, False
                continue
            error, certain = outcome
            if channel.handshake_certain and not certain:
                continue  # keep what an earlier attempt said for sure
            if error != channel.handshake_error:
                log.warning("%s (%s): %s", channel.address, channel.name, error)
            channel.handshake_error, channel.handshake_certain = error, certain

    def handshake_error(self, name: str) -> str | None:
        """Why the connection to ``name`` failed its handshake (None: it did not, or not yet)."""
        channel = self._channels.get(name)
        if channel is None:
            return None
        self._read_monitor(channel)
        return channel.handshake_error

    def connected_names(self) -> list[str]:
        return list(self._channels)

    def close(self) -> None:
        for name in list(self._channels):
            self.disconnect(name)
        for req_id in list(self._pending):
            self._fail(req_id, Unavailable("client closed"))
        self._deadlines.close()
        self.timers.close()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    # --- requests ----------------------------------------------------------------------

    def request(
        self, peer: str, op: str, body: dict[str, Any], timeout: float, callback: ReplyCallback
    ) -> int:
        """Send ``op`` to ``peer``; ``callback`` runs once, from the loop, with the outcome."""
        req_id = next(self._ids)
        frame = encode_request(req_id, op, body)
        deadline = self.loop.time() + timeout
        self._pending[req_id] = _Pending(callback, peer, frame, deadline)
        self._deadlines.add(deadline, req_id)
        self._send(req_id)
        return req_id

    def _send(self, req_id: int) -> None:
        pending = self._pending.get(req_id)
        if pending is None:
            return
        channel = self._channels.get(pending.peer)
        if channel is None:
            self._fail(req_id, Unavailable(f"{pending.peer}: unknown node"))
            return
        try:
            channel.sock.send(pending.frame, _NOBLOCK)
        except zmq.Again:
            now = self.loop.time()
            young = not channel.established and now - channel.created < self.connect_grace
            self._read_monitor(channel)
            if channel.handshake_certain:  # not a slow connect: the keys do not fit
                self._fail(req_id, HandshakeFailed(f"{channel.address}: {channel.handshake_error}"))
            elif young and now + _RETRY_SEND_S < pending.deadline:
                self.send_retries += 1
                self.loop.call_later(_RETRY_SEND_S, self._send, req_id)
            else:
                channel.created = float("-inf")  # the grace is over for every request to it
                # a vague handshake failure may be a node restarting mid-handshake: say it, but as
                # "not connected", which callers retry, and not as a HandshakeFailed they do not
                hint = f" (last handshake with {channel.address}: {channel.handshake_error})" \
                    if channel.handshake_error else ""
                self._fail(req_id, Unavailable(f"{pending.peer}: not connected{hint}"))
            if int(channel.sock.getsockopt(zmq.EVENTS)) & _POLLIN:
                self.loop.call_soon(self._drain, channel)
            return
        except zmq.ZMQError as exc:
            self._fail(req_id, Unavailable(f"{pending.peer}: send failed: {exc}"))
            return
        pending.frame = b""
        channel.established = True
        if int(channel.sock.getsockopt(zmq.EVENTS)) & _POLLIN:
            self.loop.call_soon(self._drain, channel)

    def _fail(self, req_id: int, error: DynqError) -> None:
        pending = self._pending.pop(req_id, None)
        if pending is None:
            return
        if self.health is not None and isinstance(error, Unavailable):
            self.health.unreachable(pending.peer, self.loop.time())
        self.loop.call_soon(pending.callback, None, error)

    def _on_deadline(self, req_id: int) -> None:
        pending = self._pending.pop(req_id, None)
        if pending is not None:
            if self.health is not None:
                self.health.timeout(pending.peer, self.loop.time())
            pending.callback(None, Timeout(f"{pending.peer}: no reply within the deadline"))

    def _drain(self, channel: _Channel) -> None:
        sock = channel.sock
        if sock.closed:
            return
        while True:
            try:
                frames = sock.recv_multipart(_NOBLOCK, copy=True)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:  # socket closed under us
                log.debug("recv from %s failed: %s", channel.name, exc)
                return
            if len(frames) != 1:
                log.warning("dropping a %d-frame reply from %s", len(frames), channel.name)
                continue
            try:
                reply = decode_reply(frames[0], self.limits)
            except ProtocolError as exc:
                log.warning("dropping a malformed reply from %s: %s", channel.name, exc)
                continue
            pending = self._pending.pop(reply.id, None)
            if pending is None or pending.peer != channel.name:
                if pending is not None:  # not ours: put it back, this reply is forged or misrouted
                    self._pending[reply.id] = pending
                self.late_replies += 1
                continue
            if self.health is not None:
                self.health.success(channel.name, self.loop.time())
            try:
                if self.on_reply is not None:
                    self.on_reply(channel.name, reply)
                pending.callback(reply, None)
            except Exception:  # keep draining: the fd is edge-triggered, stopping strands replies
                log.exception("reply callback for a request to %s failed", channel.name)
