"""SimSocket semantics (sim only; the pyzmq conformance comparison is still to be written)."""

from __future__ import annotations

import asyncio
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from dynq.sim.loop import SimLoop
from dynq.sim.net import SimNetwork


def _drain(sock: Any) -> list[list[bytes]]:
    out = []
    while True:
        try:
            out.append(sock.recv_multipart(zmq.NOBLOCK))
        except zmq.Again:
            return out


def _run(seed: int, partition: str | None = None) -> tuple[dict[str, Any], str]:
    loop = SimLoop(seed)
    net = SimNetwork(loop)
    a, b = loop.add_host("a"), loop.add_host("b")
    ca, cb = net.context(a), net.context(b)
    seen: dict[str, Any] = {}

    async def main() -> None:
        r = cb.socket(zmq.ROUTER)
        r.setsockopt(zmq.ROUTER_MANDATORY, 1)
        r.bind("tcp://b:1")
        d = ca.socket(zmq.DEALER)
        d.setsockopt(zmq.IMMEDIATE, 1)
        mon = d.get_monitor_socket()
        d.connect("tcp://b:1")
        try:
            d.send(b"early", zmq.NOBLOCK)
            seen["early"] = "sent"
        except zmq.Again:
            seen["early"] = "Again"
        await asyncio.sleep(0.01)
        for i in range(100):
            d.send(b"%d" % i, zmq.NOBLOCK)
        if partition:
            fault = net.partition([["a"], ["b"]], mode=partition)  # type: ignore[arg-type]
            await asyncio.sleep(5)
            net.heal(fault)
        await asyncio.sleep(2)
        got = _drain(r)
        seen["order"] = [m[1] for m in got] == [b"%d" % i for i in range(len(got))]
        seen["count"] = len(got)
        try:
            r.send(b"nobody", zmq.SNDMORE)
        except zmq.ZMQError as exc:
            seen["unknown"] = exc.errno == zmq.EHOSTUNREACH
        seen["events"] = [parse_monitor_message(m)["event"].name for m in _drain(mon)][:3]
        for sock in (d, mon, r):
            sock.close(0)
        ca.term()
        cb.term()

    loop.run(main())
    loop.close()
    return seen, loop.trace_hash()


def test_dealer_router_basics() -> None:
    """IMMEDIATE gives Again before connect; per-connection FIFO; MANDATORY raises; monitor handshake."""
    seen, _ = _run(1)
    assert seen == {"early": "Again", "order": True, "count": 100, "unknown": True,
                    "events": ["CONNECT_DELAYED", "CONNECTED", "HANDSHAKE_SUCCEEDED"]}


def test_hold_partition_delivers_after_heal_and_reset_loses() -> None:
    """A held partition delivers everything after heal; a reset one drops what was on the wire."""
    held, _ = _run(2, "hold")
    assert held["count"] == 100 and held["order"]
    reset, _ = _run(2, "reset")
    assert reset["order"] and reset["count"] < 100


def test_network_is_deterministic_per_seed() -> None:
    """Same seed, same trace hash."""
    assert _run(5, "hold")[1] == _run(5, "hold")[1]
