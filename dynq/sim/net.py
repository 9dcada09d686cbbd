"""Simulated ZeroMQ: the socket surface dynq uses, over a seeded network of hosts.

One :class:`SimNetwork` per simulation. Each host gets its own :class:`SimContext` (duck-typed
``zmq.Context``: ``socket(type)``, ``term()``), whose :class:`SimSocket` objects implement what
dynq calls on ROUTER, DEALER, PUB, SUB and monitor PAIR sockets, raising the real
``zmq.Again`` / ``zmq.ZMQError`` where pyzmq would. The model, per libzmq 4.3 as observed
by ``tests/unit/test_sim_conformance.py`` on real sockets::

    socket A --pipe--> flow (wire: latency, FIFO) --> pipe inbox --> socket B.recv
              <--pipe-- flow <-------------------------

- **Connections.** ``connect()`` tries at once: the handshake takes two round trips; a
  refused or partitioned attempt retries after ``RECONNECT_IVL``, doubling up to
  ``RECONNECT_IVL_MAX`` (monitor: CONNECT_DELAYED, CLOSED, CONNECT_RETRIED, then CONNECTED,
  HANDSHAKE_SUCCEEDED). A connection is a pair of *flows*, each FIFO.
- **Queues.** A flow holds at most the sender's SNDHWM plus the receiver's RCVHWM messages
  (on the wire plus unread); kernel buffers are not modelled. DEALER then raises ``Again``,
  ROUTER drops (``Again`` with ROUTER_MANDATORY), PUB drops. With IMMEDIATE a DEALER has no
  pipe until connected (``Again``); without, sends queue up to SNDHWM before connection.
- **ROUTER** names each connection by the peer's ROUTING_ID or a generated 5-byte id
  (0x00 + a counter, as libzmq); an unknown id raises EHOSTUNREACH under MANDATORY at the
  first frame; HANDOVER lets a new connection take over a used id.
- **PUB/SUB.** A SUB's subscriptions travel on its flow after the handshake; a PUB sends
  only to pipes whose subscriptions have arrived (the slow joiner loses the rest) and
  filters by prefix; the SUB filters again locally (in-flight messages after UNSUBSCRIBE).
- **MAXMSGSIZE** is the receiver's: a bigger frame drops the connection (messages behind
  it on that flow are lost) and the connecter reconnects.
- **Edge-triggered readiness.** A pipe that a read found empty is *armed*; a message
  arriving on an armed pipe (or a pipe attached or detached) signals the socket's fd, which
  stays readable until the socket "processes commands": always on ``EVENTS`` and on a
  ``recv`` that finds nothing, seeded on a send (``send_eats_edge``) and rarely on a
  successful recv, as libzmq's throttled command processing does. A reader that does not
  drain until ``Again``, or skips the ``EVENTS`` re-check after a send, loses wake-ups here.
- **Closing and crashes.** Closing a socket (or killing its host) sends a FIN behind what it
  already sent: messages on the wire still arrive, then the peer sees the disconnect;
  traffic towards it is dropped. Unread messages stay readable after a disconnect.
- **Faults.** Per-link latency (base + exponential jitter); ``partition``/``cut`` that either
  *hold* traffic (TCP retransmitting under a DROP rule: delivered after ``heal`` plus a
  seeded retransmit delay) or *reset* the connections crossing it (seeded choice by default);
  asymmetric cuts; ``clog`` (a link delivers nothing until a time). New connections need
  both directions open.

Not modelled: CURVE/ZAP (options are stored, MECHANISM reports CURVE when set, handshakes
always succeed), kernel socket buffers, TCP keepalive timeouts, message duplication.
"""

from __future__ import annotations

import errno
import struct
from collections import Counter, deque
from collections.abc import Iterable, Sequence
from typing import Any, Literal, Union

import zmq

from dynq.sim.loop import SimHost, SimLoop, SimViolation

Msg = list[bytes]
Mode = Literal["hold", "reset"]

_DEALER, _ROUTER, _PUB, _SUB, _PAIR = int(zmq.DEALER), int(zmq.ROUTER), int(zmq.PUB), int(zmq.SUB), int(zmq.PAIR)
_NOBLOCK, _SNDMORE = int(zmq.NOBLOCK), int(zmq.SNDMORE)
_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)
_COMPATIBLE = {(_DEALER, _ROUTER), (_ROUTER, _DEALER), (_DEALER, _DEALER), (_ROUTER, _ROUTER),
               (_PUB, _SUB), (_SUB, _PUB), (_PAIR, _PAIR)}
_TYPE_NAMES = {_DEALER: "DEALER", _ROUTER: "ROUTER", _PUB: "PUB", _SUB: "SUB", _PAIR: "PAIR"}

_DEFAULTS: dict[int, Any] = {
    int(zmq.LINGER): -1, int(zmq.SNDHWM): 1000, int(zmq.RCVHWM): 1000, int(zmq.MAXMSGSIZE): -1,
    int(zmq.IMMEDIATE): 0, int(zmq.RECONNECT_IVL): 100, int(zmq.RECONNECT_IVL_MAX): 0,
    int(zmq.ROUTING_ID): b"", int(zmq.SNDTIMEO): -1, int(zmq.RCVTIMEO): -1,
}
_WRITE_ONLY = {int(zmq.SUBSCRIBE), int(zmq.UNSUBSCRIBE), int(zmq.ROUTER_MANDATORY), int(zmq.ROUTER_HANDOVER)}
_CURVE_OPTS = {int(zmq.CURVE_SERVER), int(zmq.CURVE_SERVERKEY), int(zmq.CURVE_PUBLICKEY), int(zmq.CURVE_SECRETKEY)}

_EV_CONNECTED, _EV_DELAYED, _EV_RETRIED = int(zmq.EVENT_CONNECTED), int(zmq.EVENT_CONNECT_DELAYED), int(zmq.EVENT_CONNECT_RETRIED)
_EV_LISTENING, _EV_ACCEPTED, _EV_CLOSED = int(zmq.EVENT_LISTENING), int(zmq.EVENT_ACCEPTED), int(zmq.EVENT_CLOSED)
_EV_DISCONNECTED, _EV_STOPPED = int(zmq.EVENT_DISCONNECTED), int(zmq.EVENT_MONITOR_STOPPED)
_EV_HANDSHAKE_OK = int(zmq.EVENT_HANDSHAKE_SUCCEEDED)


def _error(code: int) -> zmq.ZMQError:
    return zmq.Again(code) if code == errno.EAGAIN else zmq.ZMQError(code)


class SimFrame:
    """What ``recv_multipart(copy=False)`` returns (no ZAP here: no User-Id property)."""

    __slots__ = ("bytes",)

    def __init__(self, data: bytes) -> None:
        self.bytes = data

    @property
    def buffer(self) -> memoryview:
        return memoryview(self.bytes)

    def get(self, name: str) -> Any:
        raise zmq.ZMQError(errno.EINVAL)


# --- the wire -------------------------------------------------------------------------


class _Link:
    """Traffic from one host to another: latency and the faults acting on it."""

    def __init__(self, src: str, dst: str, base: float, jitter: float) -> None:
        self.src, self.dst = src, dst
        self.base = base  # fixed one-way latency, seconds
        self.jitter = jitter  # mean of the exponential extra latency
        self.blocks: dict[int, Mode] = {}  # fault id -> how it acts while active
        self.clogged_until = 0.0  # nothing is delivered before this time
        self.flows: set[_Flow] = set()  # flows currently using this link

    @property
    def blocked(self) -> bool:
        return bool(self.blocks)

    @property
    def held(self) -> bool:
        return "hold" in self.blocks.values()


_Entry = tuple[float, str, Any]  # (due, kind: "m" message / "s" subscribe / "u" unsubscribe / "f" FIN, payload)


class _Flow:
    """One direction of one connection: FIFO, latency, capacity."""

    def __init__(self, net: SimNetwork, conn: _Conn, src: _Pipe, dst: _Pipe, link: _Link) -> None:
        self.net, self.conn, self.src, self.dst, self.link = net, conn, src, dst, link
        self.wire: deque[_Entry] = deque()  # sent, not yet arrived
        self.on_wire = 0  # messages (not control entries) in ``wire``
        self.last_due = 0.0  # keeps the flow FIFO whatever the latency draws
        self.timer: Any = None  # the pending delivery timer, if any
        self.capacity = _hwm(src.sock.opt(zmq.SNDHWM)) + _hwm(dst.sock.opt(zmq.RCVHWM))  # set at connect, as libzmq
        self.dead = False
        link.flows.add(self)

    def full(self) -> bool:
        return self.on_wire + len(self.dst.inbox) >= self.capacity

    def push(self, kind: str, payload: Any) -> None:
        if self.dead:
            return
        net, link = self.net, self.link
        now = net.loop.time()
        latency = link.base + (net.rng.expovariate(1.0 / link.jitter) if link.jitter > 0 else 0.0)
        due = max(now + latency, self.last_due, link.clogged_until)
        self.last_due = due
        self.wire.append((due, kind, payload))
        if kind == "m":
            self.on_wire += 1
        if self.timer is None and not link.held:
            self.timer = net.loop.sim_call_at(self.wire[0][0], self._deliver)

    def reschedule(self, not_before: float) -> None:
        """After a heal or a clog: nothing arrives before ``not_before``; order is kept."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.wire = deque((max(due, not_before), kind, payload) for due, kind, payload in self.wire)
        self.last_due = max(self.last_due, not_before)
        if self.wire and not self.link.held:
            self.timer = self.net.loop.sim_call_at(self.wire[0][0], self._deliver)

    def _deliver(self) -> None:
        self.timer = None
        if self.dead or self.link.held:
            return
        loop = self.net.loop
        now = loop.time()
        while self.wire and self.wire[0][0] <= now and not self.dead:
            _due, kind, payload = self.wire.popleft()
            if kind == "m":
                self.on_wire -= 1
            self.net._arrive(self, kind, payload)
        if self.wire and not self.dead:
            self.timer = loop.sim_call_at(self.wire[0][0], self._deliver)

    def kill(self) -> None:
        self.dead = True
        self.wire.clear()
        self.on_wire = 0
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.link.flows.discard(self)


def _hwm(value: int) -> float:
    return float("inf") if value <= 0 else float(value)


class _Pipe:
    """A socket's end of one connection (or, for IMMEDIATE=0 connecters, of an endpoint)."""

    def __init__(self, sock: SimSocket, endpoint: str) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.conn: _Conn | None = None  # the live connection, None while (re)connecting
        self.inbox: deque[Msg] = deque()  # arrived, not yet read
        self.pending: deque[Msg] = deque()  # sent before the connection existed (IMMEDIATE=0)
        self.armed = False  # a read found it empty: the next arrival signals the fd
        self.attached = True  # still one of the socket's pipes for sending
        self.routing_id = b""  # the peer's name, on a ROUTER
        self.subs: Counter[bytes] = Counter()  # the peer's subscriptions, on a PUB

    @property
    def out(self) -> _Flow | None:
        conn = self.conn
        if conn is None:
            return None
        return conn.ab if conn.a is self else conn.ba

    def writable(self) -> bool:
        if not self.attached:
            return False
        flow = self.out
        if flow is not None:
            return not flow.full()
        return self.sock._connecter_of(self) is not None and len(self.pending) < _hwm(self.sock.opt(zmq.SNDHWM))

    def send(self, kind: str, payload: Any) -> None:
        flow = self.out
        if flow is not None:
            flow.push(kind, payload)
        elif kind == "m":
            self.pending.append(payload)


class _Conn:
    """An established connection: two pipes, two flows."""

    def __init__(self, net: SimNetwork, a: _Pipe, b: _Pipe, connecter: _Connecter | None) -> None:
        self.a, self.b = a, b  # a: the connecting side, b: the accepting side
        self.connecter = connecter
        self.ab = _Flow(net, self, a, b, net.link(a.sock.host.name, b.sock.host.name))
        self.ba = _Flow(net, self, b, a, net.link(b.sock.host.name, a.sock.host.name))
        self.open = True


class _Connecter:
    """One ``connect()`` endpoint of a socket: attempts, backoff, the current connection."""

    def __init__(self, sock: SimSocket, endpoint: str) -> None:
        self.sock = sock
        self.endpoint = endpoint
        self.ivl = sock.opt(zmq.RECONNECT_IVL) / 1000  # current backoff interval
        self.timer: Any = None
        self.stopped = False
        self.pipe: _Pipe | None = None  # the persistent pipe of an IMMEDIATE=0 socket
        if not sock.opt(zmq.IMMEDIATE):
            self.pipe = sock._add_pipe(endpoint)

    def schedule(self, delay: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = self.sock.net.loop.sim_call_later(delay, self.attempt)

    def attempt(self) -> None:
        self.timer = None
        sock, net = self.sock, self.sock.net
        if self.stopped or sock.closed:
            return
        sock._event(_EV_DELAYED, errno.EINPROGRESS, self.endpoint)
        peer = net._bound.get(self.endpoint)
        there, back = (net.link(sock.host.name, peer.host.name), net.link(peer.host.name, sock.host.name)) \
            if peer is not None else (None, None)
        rtt = (there.base + back.base) if there is not None and back is not None else 0.0
        if peer is None or there is None or back is None or there.blocked or back.blocked:
            self._failed(rtt)
            return
        self.timer = net.loop.sim_call_later(2 * rtt, self._establish, peer)

    def _failed(self, after: float) -> None:
        sock = self.sock
        sock._event(_EV_CLOSED, 0, self.endpoint)
        sock._event(_EV_RETRIED, int(round(self.ivl * 1000)), self.endpoint)
        self.schedule(after + self.ivl)
        ivl_max = sock.opt(zmq.RECONNECT_IVL_MAX) / 1000
        if ivl_max > self.ivl:
            self.ivl = min(2 * self.ivl, ivl_max)

    def _establish(self, peer: SimSocket) -> None:
        self.timer = None
        sock, net = self.sock, self.sock.net
        if self.stopped or sock.closed:
            return
        there, back = net.link(sock.host.name, peer.host.name), net.link(peer.host.name, sock.host.name)
        if net._bound.get(self.endpoint) is not peer or there.blocked or back.blocked \
                or (sock.socket_type, peer.socket_type) not in _COMPATIBLE:
            self._failed(0.0)
            return
        self.ivl = sock.opt(zmq.RECONNECT_IVL) / 1000
        net._connect(self, peer)

    def stop(self) -> None:
        self.stopped = True
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


# --- the network ----------------------------------------------------------------------


class SimNetwork:
    """All simulated sockets of one simulation, the links between hosts and their faults."""

    def __init__(
        self,
        loop: SimLoop,
        *,
        latency: float = 0.0002,
        jitter: float = 0.0001,
        send_eats_edge: float = 0.5,
        recv_eats_edge: float = 0.01,
    ) -> None:
        self.loop = loop
        self.rng = loop.rng("net")  # latency, fault modes, routing ids
        self._edge_rng = loop.rng("net.edges")  # which sends and recvs consume the fd's edge
        self.latency, self.jitter = latency, jitter  # defaults for new links
        self.send_eats_edge = send_eats_edge  # chance a send processes commands (clears the fd)
        self.recv_eats_edge = recv_eats_edge  # same for a recv that returned a message
        self._links: dict[tuple[str, str], _Link] = {}
        self._bound: dict[str, SimSocket] = {}  # endpoint -> the socket listening there
        self._contexts: dict[str, list[SimContext]] = {}  # host name -> its contexts
        self._faults: dict[int, list[_Link]] = {}  # fault id -> links it acts on
        self._fault_ids = 0
        self._next_port = 20000
        self.delivered = 0  # messages that arrived at a pipe
        self.dropped = 0  # messages lost: HWM, closed peer, reset, MAXMSGSIZE
        self._hooked: set[str] = set()

    def context(self, host: SimHost) -> SimContext:
        """A new ZeroMQ context for code running on ``host`` (one per node or client)."""
        if host.name not in self._hooked:
            host.kill_listeners.append(self._on_kill)
            self._hooked.add(host.name)
        ctx = SimContext(self, host)
        self._contexts.setdefault(host.name, []).append(ctx)
        return ctx

    def link(self, src: str, dst: str) -> _Link:
        link = self._links.get((src, dst))
        if link is None:
            base = self.latency / 10 if src == dst else self.latency
            link = self._links[(src, dst)] = _Link(src, dst, base, self.jitter if src != dst else 0.0)
        return link

    # --- faults -------------------------------------------------------------------------

    def set_latency(self, src: str, dst: str, base: float, jitter: float = 0.0, *, both: bool = True) -> None:
        for a, b in ((src, dst), (dst, src)) if both else ((src, dst),):
            link = self.link(a, b)
            link.base, link.jitter = base, jitter

    def partition(self, groups: Sequence[Iterable[str]], mode: Mode | None = None) -> int:
        """Cut every link between hosts of different groups, both ways; returns a fault id."""
        sides = [list(g) for g in groups]
        pairs = [(a, b) for i, g in enumerate(sides) for j, h in enumerate(sides) if i != j for a in g for b in h]
        return self._block(pairs, mode, "partition", sides)

    def cut(self, src: str, dst: str, mode: Mode | None = "hold") -> int:
        """Asymmetric: ``src`` -> ``dst`` traffic stops (held or reset); the other way flows."""
        return self._block([(src, dst)], mode, "cut", [src, dst])

    def _block(self, pairs: list[tuple[str, str]], mode: Mode | None, what: str, desc: object) -> int:
        if mode is None:
            mode = "hold" if self.rng.random() < 0.5 else "reset"
        self._fault_ids += 1
        fault = self._fault_ids
        links = [self.link(a, b) for a, b in pairs]
        self._faults[fault] = links
        self.loop.trace(what, fault, mode, desc)
        for link in links:
            link.blocks[fault] = mode
        if mode == "reset":
            conns = {flow.conn for link in links for flow in link.flows}
            for conn in sorted(conns, key=lambda c: (c.a.sock.fd, c.b.sock.fd)):
                self._reset(conn, "partition")
        return fault

    def heal(self, fault: int | None = None) -> None:
        """End one fault (or all): held traffic follows after a seeded retransmit delay."""
        faults = [fault] if fault is not None else sorted(self._faults)
        for fid in faults:
            links = self._faults.pop(fid, [])
            self.loop.trace("heal", fid)
            for link in links:
                was_held = link.held
                link.blocks.pop(fid, None)
                if was_held and not link.held:
                    retransmit = self.loop.time() + self.rng.uniform(0.2, 1.0)
                    for flow in sorted(link.flows, key=lambda f: (f.src.sock.fd, f.dst.sock.fd)):
                        flow.reschedule(retransmit)

    def clog(self, src: str, dst: str, seconds: float, *, both: bool = False) -> None:
        """Nothing on the link is delivered for ``seconds`` (then all of it, in order)."""
        until = self.loop.time() + seconds
        self.loop.trace("clog", src, dst, seconds)
        for a, b in ((src, dst), (dst, src)) if both else ((src, dst),):
            link = self.link(a, b)
            link.clogged_until = max(link.clogged_until, until)
            for flow in sorted(link.flows, key=lambda f: (f.src.sock.fd, f.dst.sock.fd)):
                flow.reschedule(until)

    def _on_kill(self, host: SimHost) -> None:
        for ctx in self._contexts.pop(host.name, []):
            ctx._crash()

    # --- connections ----------------------------------------------------------------------

    def _connect(self, connecter: _Connecter, peer: SimSocket) -> None:
        sock = connecter.sock
        a = connecter.pipe if connecter.pipe is not None else sock._add_pipe(connecter.endpoint)
        b = peer._add_pipe(connecter.endpoint)
        conn = _Conn(self, a, b, connecter)
        a.conn, b.conn = conn, conn
        for here, there in ((a, peer), (b, sock)):
            if here.sock.socket_type == _ROUTER:
                if not here.sock._route(here, there.opt(zmq.ROUTING_ID)):
                    self._reset(conn, "routing id in use")
                    return
        self.loop.trace("connect", sock.host.name, peer.host.name, connecter.endpoint)
        sock._event(_EV_CONNECTED, sock.fd, connecter.endpoint)
        sock._event(_EV_HANDSHAKE_OK, 0, connecter.endpoint)
        peer._event(_EV_ACCEPTED, peer.fd, connecter.endpoint)
        peer._event(_EV_HANDSHAKE_OK, 0, connecter.endpoint)
        for pipe in (a, b):
            if pipe.sock.socket_type == _SUB:
                for topic, count in sorted(pipe.sock._subs.items()):
                    for _ in range(count):
                        pipe.send("s", topic)
        while a.pending:
            a.send("m", a.pending.popleft())
        sock._signal()  # a new pipe is a command to the socket: its fd wakes
        peer._signal()

    def _reset(self, conn: _Conn, why: str) -> None:
        """Both ends lose the connection at once; what was on the wire is lost."""
        if not conn.open:
            return
        conn.open = False
        self.loop.trace("reset", conn.a.sock.host.name, conn.b.sock.host.name, why)
        self.dropped += conn.ab.on_wire + conn.ba.on_wire
        conn.ab.kill()
        conn.ba.kill()
        for pipe in (conn.a, conn.b):
            pipe.sock._lost(pipe)
        self._reconnect(conn)

    def _fin(self, conn: _Conn, closing: _Pipe) -> None:
        """``closing``'s socket went away: a FIN follows what it sent; traffic to it is lost."""
        if not conn.open:
            return
        flow_out = conn.ab if conn.a is closing else conn.ba
        flow_in = conn.ba if conn.a is closing else conn.ab
        self.dropped += flow_in.on_wire
        flow_in.kill()
        flow_out.push("f", None)

    def _reconnect(self, conn: _Conn) -> None:
        connecter = conn.connecter
        if connecter is not None and not connecter.stopped and not connecter.sock.closed:
            connecter.sock._event(_EV_RETRIED, int(round(connecter.ivl * 1000)), connecter.endpoint)
            connecter.schedule(connecter.ivl)

    def _arrive(self, flow: _Flow, kind: str, payload: Any) -> None:
        dst = flow.dst
        sock = dst.sock
        conn = flow.conn
        if kind == "f":
            if conn.open:
                conn.open = False
                self.loop.trace("fin", flow.src.sock.host.name, sock.host.name)
                flow.kill()
                other = conn.ba if flow is conn.ab else conn.ab
                other.kill()
                sock._lost(dst)
                if dst is conn.a:
                    self._reconnect(conn)
            return
        if sock.closed or dst.conn is not conn:
            if kind == "m":
                self.dropped += 1
            return
        if kind == "s":
            dst.subs[payload] += 1
            return
        if kind == "u":
            if dst.subs[payload] > 0:
                dst.subs[payload] -= 1
            if dst.subs[payload] <= 0:
                del dst.subs[payload]
            return
        msg: Msg = payload
        limit = sock.opt(zmq.MAXMSGSIZE)
        if limit >= 0 and any(len(frame) > limit for frame in msg):
            self.dropped += 1
            self.loop.trace("maxmsgsize", flow.src.sock.host.name, sock.host.name)
            self._reset(conn, "maxmsgsize")
            return
        if sock.socket_type == _SUB and not sock._matches(msg[0] if msg else b""):
            return
        self.delivered += 1
        self.loop.trace("d", flow.src.sock.host.name, sock.host.name, len(msg), sum(len(f) for f in msg))
        sock._push(dst, msg)

    def _port(self) -> int:
        self._next_port += 1
        return self._next_port


# --- contexts and sockets ---------------------------------------------------------------


class SimContext:
    """A host's ZeroMQ context: makes sockets, and is terminated like ``zmq.Context``."""

    def __init__(self, net: SimNetwork, host: SimHost) -> None:
        self.net = net
        self.host = host
        self.sockets: list[SimSocket] = []  # open sockets
        self.closed = False

    def socket(self, socket_type: int, **kwargs: Any) -> SimSocket:
        if self.closed:
            raise zmq.ZMQError(zmq.ETERM)
        if int(socket_type) not in _TYPE_NAMES:
            raise SimViolation(f"socket type {socket_type} is not simulated")
        sock = SimSocket(self, int(socket_type))
        self.sockets.append(sock)
        return sock

    def term(self) -> None:
        """Like ``zmq_ctx_term``: it would block forever on a socket left open."""
        if self.closed:
            return
        if self.sockets:
            raise SimViolation(f"{self.host.name}: term() with {len(self.sockets)} open sockets would block forever")
        self.closed = True

    def destroy(self, linger: int | None = None) -> None:
        for sock in list(self.sockets):
            sock.close(linger)
        self.term()

    def _crash(self) -> None:
        for sock in list(self.sockets):
            sock._close(crash=True)
        self.closed = True

    def __enter__(self) -> SimContext:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy(0)


_Target = Union[_Pipe, list[_Pipe], None]


class SimSocket:
    """One simulated ZeroMQ socket (the surface of ``zmq.Socket`` that dynq uses)."""

    def __init__(self, context: SimContext, socket_type: int) -> None:
        self.context = context
        self.net = context.net
        self.host = context.host
        self.socket_type = socket_type
        self.fd = self.net.loop.new_fd(self.host)
        self.closed = False
        self._opts: dict[int, Any] = dict(_DEFAULTS)
        self._pipes: list[_Pipe] = []  # attached pipes, then detached ones still holding messages
        self._rr_in = 0  # fair-queue position for recv
        self._rr_out = 0  # load-balance position for DEALER sends
        self._routes: dict[bytes, _Pipe] = {}  # ROUTER: peer id -> pipe
        self._next_id = self.net.rng.getrandbits(32)  # ROUTER: next generated peer id
        self._subs: Counter[bytes] = Counter()  # SUB: own subscriptions
        self._connecters: dict[str, _Connecter] = {}  # endpoint -> connect() state
        self._bound: list[str] = []
        self._last_endpoint = b""
        self._rx: deque[bytes] = deque()  # frames left of a message being read frame by frame
        self._tx: list[bytes] = []  # frames of a message being sent with SNDMORE
        self._tx_target: _Target = None
        self._tx_open = False
        self._monitor: SimSocket | None = None  # the PAIR receiving our events
        self._monitor_events = 0
        self._monitor_pipe: _Pipe | None = None  # on a monitor PAIR: where events arrive

    def __repr__(self) -> str:
        return f"<SimSocket {_TYPE_NAMES[self.socket_type]} {self.host.name} fd={self.fd}{' closed' if self.closed else ''}>"

    # --- options ------------------------------------------------------------------------

    def opt(self, option: int) -> Any:
        return self._opts.get(int(option), 0)

    def setsockopt(self, option: int, value: Any) -> None:
        self._check_open()
        option = int(option)
        if option in (int(zmq.SUBSCRIBE), int(zmq.UNSUBSCRIBE)):
            if self.socket_type != _SUB:
                raise zmq.ZMQError(errno.EINVAL)
            topic = value.encode() if isinstance(value, str) else bytes(value)
            self._subscription(topic, option == int(zmq.SUBSCRIBE))
            return
        if option == int(zmq.ROUTING_ID):
            value = value.encode() if isinstance(value, str) else bytes(value)
        self._opts[option] = value

    set = setsockopt

    def getsockopt(self, option: int) -> Any:
        self._check_open()
        option = int(option)
        if option == int(zmq.EVENTS):
            return self._events()
        if option == int(zmq.TYPE):
            return self.socket_type
        if option == int(zmq.RCVMORE):
            return int(bool(self._rx))
        if option == int(zmq.FD):
            return self.fd
        if option == int(zmq.LAST_ENDPOINT):
            return self._last_endpoint
        if option == int(zmq.MECHANISM):
            curve = any(self._opts.get(o) for o in _CURVE_OPTS)
            return int(zmq.CURVE) if curve else int(zmq.NULL)
        if option in _WRITE_ONLY:
            raise zmq.ZMQError(errno.EINVAL)
        return self._opts.get(option, 0)

    get = getsockopt

    def fileno(self) -> int:
        self._check_open()
        return self.fd

    @property
    def FD(self) -> int:  # noqa: N802 (pyzmq's name)
        return self.fileno()

    def _check_open(self) -> None:
        if self.closed:
            raise zmq.ZMQError(errno.ENOTSOCK)

    # --- endpoints ----------------------------------------------------------------------

    def bind(self, address: str) -> None:
        self._check_open()
        if address.endswith(":*") or address.endswith(":0"):
            address = f"{address.rsplit(':', 1)[0]}:{self.net._port()}"
        if address in self.net._bound:
            raise zmq.ZMQError(errno.EADDRINUSE)
        self.net._bound[address] = self
        self._bound.append(address)
        self._last_endpoint = address.encode()
        self.net.loop.trace("bind", self.host.name, address)
        self._event(_EV_LISTENING, self.fd, address)

    def bind_to_random_port(self, address: str, *args: Any, **kwargs: Any) -> int:
        self.bind(address + ":*")
        return int(self._last_endpoint.decode().rsplit(":", 1)[1])

    def unbind(self, address: str) -> None:
        self._check_open()
        if address not in self._bound:
            raise zmq.ZMQError(errno.ENOENT)
        self._bound.remove(address)
        del self.net._bound[address]
        for pipe in list(self._pipes):
            if pipe.conn is not None and pipe.endpoint == address and pipe.conn.b is pipe:
                self._drop_conn(pipe)

    def connect(self, address: str) -> None:
        self._check_open()
        if address in self._connecters:
            return
        connecter = _Connecter(self, address)
        self._connecters[address] = connecter
        self._last_endpoint = address.encode()
        connecter.schedule(0.0)

    def disconnect(self, address: str) -> None:
        self._check_open()
        connecter = self._connecters.pop(address, None)
        if connecter is None:
            raise zmq.ZMQError(errno.ENOENT)
        connecter.stop()
        for pipe in list(self._pipes):
            if pipe.endpoint == address and pipe.attached and (pipe.conn is None or pipe.conn.a is pipe):
                self._drop_conn(pipe)
                self._detach(pipe)

    def _drop_conn(self, pipe: _Pipe) -> None:
        conn = pipe.conn
        if conn is not None:
            self.net._fin(conn, pipe)
            pipe.conn = None
            self._detach(pipe)

    def _connecter_of(self, pipe: _Pipe) -> _Connecter | None:
        connecter = self._connecters.get(pipe.endpoint)
        return connecter if connecter is not None and connecter.pipe is pipe else None

    # --- pipes --------------------------------------------------------------------------

    def _add_pipe(self, endpoint: str) -> _Pipe:
        pipe = _Pipe(self, endpoint)
        self._pipes.append(pipe)
        return pipe

    def _route(self, pipe: _Pipe, peer_id: bytes) -> bool:
        """Name the connection on this ROUTER; False if the name is taken and no handover."""
        if peer_id:
            old = self._routes.get(peer_id)
            if old is not None:
                if not self._opts.get(int(zmq.ROUTER_HANDOVER)):
                    return False
                old.routing_id = b"\x00" + self._new_id()  # libzmq renames the old pipe
                self._routes[old.routing_id] = old
        else:
            peer_id = b"\x00" + self._new_id()
        pipe.routing_id = peer_id
        self._routes[peer_id] = pipe
        return True

    def _new_id(self) -> bytes:
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF
        return struct.pack(">I", self._next_id)

    def _detach(self, pipe: _Pipe) -> None:
        """No longer a destination; unread messages stay readable."""
        pipe.attached = False
        pipe.conn = None
        if self._routes.get(pipe.routing_id) is pipe:
            del self._routes[pipe.routing_id]
        if not pipe.inbox and pipe in self._pipes:
            self._pipes.remove(pipe)

    def _lost(self, pipe: _Pipe) -> None:
        """The connection under ``pipe`` is gone (reset or FIN from the peer)."""
        if self.closed:
            return
        self._event(_EV_DISCONNECTED, self.fd, pipe.endpoint)
        connecter = self._connecter_of(pipe)
        if connecter is not None:  # IMMEDIATE=0: the pipe outlives its connections
            pipe.conn = None
        else:
            self._detach(pipe)
        self._signal()

    def _push(self, pipe: _Pipe, msg: Msg) -> None:
        pipe.inbox.append(msg)
        if pipe.armed:
            pipe.armed = False
            self._signal()

    def _signal(self) -> None:
        if not self.closed:
            self.net.loop.signal_fd(self.fd)

    # --- subscriptions ------------------------------------------------------------------

    def _subscription(self, topic: bytes, add: bool) -> None:
        if add:
            self._subs[topic] += 1
        elif self._subs[topic] > 0:
            self._subs[topic] -= 1
            if self._subs[topic] == 0:
                del self._subs[topic]
        else:
            self._subs.pop(topic, None)
            return
        for pipe in self._pipes:
            if pipe.attached and pipe.conn is not None:
                pipe.send("s" if add else "u", topic)

    def _matches(self, first: bytes) -> bool:
        return any(first.startswith(topic) for topic in self._subs)

    # --- send ---------------------------------------------------------------------------

    def send(self, data: Any, flags: int = 0, copy: bool = True, track: bool = False) -> None:
        self._check_open()
        if isinstance(data, str):
            raise TypeError("unicode not allowed, use send_string")
        frame = data.bytes if isinstance(data, SimFrame) else bytes(data)
        flags = int(flags)
        more = bool(flags & _SNDMORE)
        if not self._tx_open:
            self._tx_target = self._pick_target(frame, flags)
            self._tx_open = True
            self._tx = []
            if self.socket_type == _ROUTER:  # the first frame names the peer; it is not sent
                if not more:
                    self._tx_open = False
                return
        self._tx.append(frame)
        if more:
            return
        self._tx_open = False
        msg, self._tx = self._tx, []
        target = self._tx_target
        self._tx_target = None
        for pipe in (target if isinstance(target, list) else [target] if target is not None else []):
            pipe.send("m", msg)
        if target is None or target == []:
            self.net.dropped += 1
        if self.net._edge_rng.random() < self.net.send_eats_edge:
            self.net.loop.clear_fd(self.fd)

    def _pick_target(self, frame: bytes, flags: int) -> _Target:
        kind = self.socket_type
        if kind == _SUB:
            raise zmq.ZMQError(errno.ENOTSUP)
        if kind == _ROUTER:
            pipe = self._routes.get(frame)
            mandatory = bool(self._opts.get(int(zmq.ROUTER_MANDATORY)))
            if pipe is None:
                if mandatory:
                    raise zmq.ZMQError(errno.EHOSTUNREACH)
                return None
            if not pipe.writable():
                if mandatory:
                    raise zmq.Again(errno.EAGAIN)
                return None
            return pipe
        if kind == _PUB:
            return [p for p in self._pipes if p.attached and p.conn is not None and p.writable()
                    and any(frame.startswith(t) for t in p.subs)]
        pipes = [p for p in self._pipes if p.attached]  # DEALER, PAIR: round robin over writable pipes
        for i in range(len(pipes)):
            pipe = pipes[(self._rr_out + i) % len(pipes)]
            if pipe.writable():
                self._rr_out = (self._rr_out + i + 1) % len(pipes)
                return pipe
        if flags & _NOBLOCK:
            raise zmq.Again(errno.EAGAIN)
        raise SimViolation(f"{self!r}: a blocking send would hang the event loop")

    def send_multipart(self, msg_parts: Sequence[Any], flags: int = 0, copy: bool = True, track: bool = False) -> None:
        for part in msg_parts[:-1]:
            self.send(part, int(flags) | _SNDMORE)
        self.send(msg_parts[-1], flags)

    # --- recv ---------------------------------------------------------------------------

    def recv(self, flags: int = 0, copy: bool = True, track: bool = False) -> Any:
        self._check_open()
        if not self._rx:
            msg = self._next_message()
            if msg is None:
                self.net.loop.clear_fd(self.fd)
                if int(flags) & _NOBLOCK:
                    raise zmq.Again(errno.EAGAIN)
                raise SimViolation(f"{self!r}: a blocking recv would hang the event loop")
            self._rx.extend(msg)
            if self.net._edge_rng.random() < self.net.recv_eats_edge:
                self.net.loop.clear_fd(self.fd)
        frame = self._rx.popleft()
        return frame if copy else SimFrame(frame)

    def recv_multipart(self, flags: int = 0, copy: bool = True, track: bool = False) -> list[Any]:
        parts = [self.recv(flags, copy)]
        while self._rx:
            parts.append(self.recv(flags, copy))
        return parts

    def _next_message(self) -> Msg | None:
        pipes = self._pipes
        n = len(pipes)
        for i in range(n):
            index = (self._rr_in + i) % n
            pipe = pipes[index]
            if pipe.inbox:
                msg = pipe.inbox.popleft()
                self._rr_in = (index + 1) % n
                if self.socket_type == _ROUTER:
                    msg = [pipe.routing_id, *msg]
                if not pipe.inbox and not pipe.attached:
                    pipes.remove(pipe)
                return msg
            pipe.armed = True
        self._pipes = [p for p in pipes if p.attached or p.inbox]
        return None

    def _events(self) -> int:
        """``EVENTS``: what can be done now; processes commands, so the fd's edge is spent."""
        self.net.loop.clear_fd(self.fd)
        events = 0
        if self._rx or any(p.inbox for p in self._pipes):
            events |= _POLLIN
        else:
            for pipe in self._pipes:
                pipe.armed = True
        kind = self.socket_type
        if kind == _PUB or (kind == _ROUTER and not self._opts.get(int(zmq.ROUTER_MANDATORY))):
            events |= _POLLOUT
        elif kind != _SUB and any(p.writable() for p in self._pipes):
            events |= _POLLOUT
        return events

    def poll(self, timeout: int | None = None, flags: int = _POLLIN) -> int:
        """Only a non-blocking poll is possible in the simulation."""
        if timeout not in (0, None) and not (self._events() & flags):
            raise SimViolation(f"{self!r}: poll({timeout}) would block the loop")
        return self._events() & int(flags)

    # --- monitor ------------------------------------------------------------------------

    def get_monitor_socket(self, events: int | None = None, addr: str | None = None) -> SimSocket:
        self._check_open()
        if self._monitor is not None and not self._monitor.closed:
            return self._monitor
        pair = self.context.socket(zmq.PAIR)
        pair._monitor_pipe = pair._add_pipe(f"inproc://monitor.s-{self.fd}")
        self._monitor = pair
        self._monitor_events = int(zmq.EVENT_ALL) if events is None else int(events)
        return pair

    def disable_monitor(self) -> None:
        self._event(_EV_STOPPED, 0, "")
        self._monitor = None
        self._monitor_events = 0

    def _event(self, event: int, value: int, endpoint: str) -> None:
        pair = self._monitor
        if pair is None or pair.closed or not self._monitor_events & event or pair._monitor_pipe is None:
            return
        pair._push(pair._monitor_pipe, [struct.pack("=hi", event, value), endpoint.encode()])

    # --- close --------------------------------------------------------------------------

    def close(self, linger: int | None = None) -> None:
        if not self.closed:
            self._close(crash=False)

    def _close(self, crash: bool) -> None:
        if self.closed:
            return
        if not crash:
            self._event(_EV_CLOSED, self.fd, "")
            self._event(_EV_STOPPED, 0, "")
        for connecter in self._connecters.values():
            connecter.stop()
        self._connecters.clear()
        for address in self._bound:
            if self.net._bound.get(address) is self:
                del self.net._bound[address]
        self._bound.clear()
        for pipe in self._pipes:
            if pipe.conn is not None:
                self.net._fin(pipe.conn, pipe)
        self.closed = True
        self._pipes.clear()
        self._routes.clear()
        self.net.loop.release_fd(self.fd)
        if self in self.context.sockets:
            self.context.sockets.remove(self)

    def __enter__(self) -> SimSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(0)


__all__ = ["SimContext", "SimFrame", "SimNetwork", "SimSocket"]
