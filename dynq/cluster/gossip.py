"""Gossip over ZeroMQ PUB/SUB: heartbeats that carry a digest of the sender's cluster state.

Every node binds one PUB socket (its gossip address: the request port + 1) and subscribes
with one SUB socket to every member's PUB. Each interval it publishes a small heartbeat::

    {"n": name, "a": request address, "v": state version, "d": state digest, "s": seq}

Receivers feed the arrival to the failure detector and compare ``(v, d)`` with their own
state: a node that sees a newer state pulls the whole state over ROUTER/DEALER (the
``cluster_state`` op) and merges it. Heartbeats are tiny, so full states never travel on
the broadcast path, and PUB/SUB's fire-and-forget delivery is fine: a lost heartbeat only
delays the pull by one interval.

The sockets are drained from ``loop.add_reader`` callbacks like the request sockets;
this module does no interpretation beyond decoding and validating the heartbeat.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urlsplit

import msgpack
import zmq

log = logging.getLogger(__name__)

MAX_HEARTBEAT_BYTES = 1024


@dataclass(frozen=True)
class Heartbeat:
    name: str
    address: str
    version: int
    digest: bytes
    seq: int

    def to_wire(self) -> bytes:
        frame: bytes = msgpack.packb(
            {"n": self.name, "a": self.address, "v": self.version, "d": self.digest, "s": self.seq},
            use_bin_type=True,
        )
        return frame

    @classmethod
    def from_wire(cls, frame: bytes) -> Heartbeat | None:
        """The heartbeat in ``frame``, or None when it is not a well-formed one."""
        if len(frame) > MAX_HEARTBEAT_BYTES:
            return None
        try:
            data = msgpack.unpackb(frame, raw=False, max_bin_len=64, max_str_len=512,
                                   max_array_len=0, max_map_len=8)
        except Exception:
            return None
        if not isinstance(data, dict):
            return None
        name, address, version, digest, seq = (data.get(k) for k in ("n", "a", "v", "d", "s"))
        if not (isinstance(name, str) and name and isinstance(address, str) and isinstance(digest, bytes)):
            return None
        if not all(isinstance(x, int) and not isinstance(x, bool) for x in (version, seq)):
            return None
        assert isinstance(version, int) and isinstance(seq, int)
        return cls(name, address, version, digest, seq)


def gossip_address(address: str) -> str:
    """A node's gossip (PUB) address: its request address with the port plus one."""
    parts = urlsplit(address)
    if parts.scheme == "ipc":
        return address + ".gossip"
    if parts.port is None or parts.hostname is None:
        raise ValueError(f"cannot derive a gossip address from {address!r}")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{parts.port + 1}"


class Gossip:
    """The PUB/SUB sockets of one node."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        context: zmq.Context[Any],
        bind: str,
        on_heartbeat: Callable[[Heartbeat], None],
        secure_pub: Callable[[zmq.Socket[Any]], None] | None = None,
        secure_sub: Callable[[zmq.Socket[Any]], None] | None = None,
    ) -> None:
        """``secure_pub``/``secure_sub`` set CURVE options on the sockets (before bind/connect)."""
        self.loop = loop
        self.on_heartbeat = on_heartbeat
        self.pub = context.socket(zmq.PUB)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.setsockopt(zmq.SNDHWM, 100)  # a stalled subscriber costs at most this many
        if secure_pub is not None:
            secure_pub(self.pub)
        self.pub.bind(bind)
        self.sub = context.socket(zmq.SUB)
        if secure_sub is not None:
            secure_sub(self.sub)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 1000)
        self.sub.setsockopt(zmq.MAXMSGSIZE, MAX_HEARTBEAT_BYTES)
        self.sub.setsockopt(zmq.RECONNECT_IVL, 100)
        self.sub.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._connected: dict[str, str] = {}  # name -> gossip address
        self._seq = itertools.count(1)
        self.sent = 0
        self.received = 0
        self.malformed = 0
        loop.add_reader(self.sub.fileno(), self._drain)

    def subscribe(self, name: str, address: str) -> None:
        """Listen to ``name``'s heartbeats at its gossip ``address`` (idempotent)."""
        current = self._connected.get(name)
        if current == address:
            return
        if current is not None:
            self.unsubscribe(name)
        self.sub.connect(address)
        self._connected[name] = address

    def unsubscribe(self, name: str) -> None:
        address = self._connected.pop(name, None)
        if address is not None:
            try:
                self.sub.disconnect(address)
            except zmq.ZMQError:
                pass

    def subscribed(self) -> list[str]:
        return sorted(self._connected)

    def publish(self, name: str, address: str, version: int, digest: bytes) -> None:
        frame = Heartbeat(name, address, version, digest, next(self._seq)).to_wire()
        try:
            self.pub.send(frame, zmq.NOBLOCK)
            self.sent += 1
        except zmq.ZMQError as exc:  # PUB never blocks; this is a closed socket at shutdown
            log.debug("heartbeat not sent: %s", exc)
        self._check()

    def _check(self) -> None:
        """The fd is edge-triggered: a send can swallow the edge of a waiting message."""
        if self.sub.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            self.loop.call_soon(self._drain)

    def _drain(self) -> None:
        while True:
            try:
                frame = self.sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            except zmq.ZMQError as exc:
                log.warning("gossip recv failed: %s", exc)
                return
            heartbeat = Heartbeat.from_wire(frame)
            if heartbeat is None:
                self.malformed += 1
                continue
            self.received += 1
            try:
                self.on_heartbeat(heartbeat)
            except Exception:  # a bug in handling one heartbeat must not stop gossip
                log.exception("heartbeat from %s not handled", heartbeat.name)

    def close(self) -> None:
        self.loop.remove_reader(self.sub.fileno())
        self.sub.close(0)
        self.pub.close(0)
