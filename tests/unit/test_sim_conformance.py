"""The same scripted socket cases against real pyzmq on 127.0.0.1 and against SimSocket.

Each case is one coroutine using only non-blocking calls and ``asyncio.sleep`` polling, so it
runs unchanged on a real loop (bounded waits, never timed assertions) and on SimLoop; it
returns what it observed, and both backends must observe the expected outcome."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import zmq

from dynq.sim.loop import SimLoop
from dynq.sim.net import SimNetwork


class Env:
    def __init__(self, ctx_for: Callable[[str], Any], address: Callable[[], str]) -> None:
        self.ctx_for, self.address = ctx_for, address

    async def until(self, pred: Callable[[], bool], polls: int = 1000) -> bool:
        for _ in range(polls):
            if pred():
                return True
            await asyncio.sleep(0.005)
        return pred()


def _try_send(sock: Any, frames: list[bytes]) -> bool:
    try:
        sock.send_multipart(frames, zmq.NOBLOCK)
        return True
    except zmq.Again:
        return False


def _recv(sock: Any) -> list[bytes] | None:
    try:
        return list(sock.recv_multipart(zmq.NOBLOCK))
    except zmq.Again:
        return None


def _socket(env: Env, host: str, kind: int, **opts: Any) -> Any:
    s = env.ctx_for(host).socket(kind)
    s.setsockopt(zmq.LINGER, 0)
    for name, value in opts.items():
        s.setsockopt(getattr(zmq, name), value)
    return s


async def case_request_reply(env: Env) -> dict[str, Any]:
    addr = env.address()
    r = _socket(env, "b", zmq.ROUTER)
    r.bind(addr)
    d = _socket(env, "a", zmq.DEALER, IMMEDIATE=1)
    d.connect(addr)
    await env.until(lambda: _try_send(d, [b"ping", b"two"]))
    got: list[list[bytes] | None] = [None]
    await env.until(lambda: (got.__setitem__(0, _recv(r)) or got[0]) is not None)
    msg = got[0] or []
    r.send_multipart([msg[0], b"pong"])
    reply: list[list[bytes] | None] = [None]
    await env.until(lambda: (reply.__setitem__(0, _recv(d)) or reply[0]) is not None)
    out = {"frames": msg[1:], "id_len": len(msg[0]), "id0": msg[0][:1], "reply": reply[0]}
    d.close(0)
    r.close(0)
    return out


async def case_immediate_and_mandatory(env: Env) -> dict[str, Any]:
    addr = env.address()
    d = _socket(env, "a", zmq.DEALER, IMMEDIATE=1)
    d.connect(addr)
    early = _try_send(d, [b"x"])
    r = _socket(env, "b", zmq.ROUTER, ROUTER_MANDATORY=1)
    r.bind(addr)
    later = await env.until(lambda: _try_send(d, [b"y"]))
    try:
        r.send_multipart([b"nobody", b"z"], zmq.NOBLOCK)
        unknown = "sent"
    except zmq.ZMQError as exc:
        unknown = "EHOSTUNREACH" if exc.errno == zmq.EHOSTUNREACH else str(exc)
    d.close(0)
    r.close(0)
    return {"early": early, "later": later, "unknown": unknown}


async def case_order(env: Env) -> dict[str, Any]:
    addr = env.address()
    r = _socket(env, "b", zmq.ROUTER)
    r.bind(addr)
    d = _socket(env, "a", zmq.DEALER, IMMEDIATE=1)
    d.connect(addr)
    await env.until(lambda: _try_send(d, [b"0"]))
    for i in range(1, 500):
        d.send(b"%d" % i)
    got: list[bytes] = []

    def more() -> bool:
        while (m := _recv(r)) is not None:
            got.append(m[1])
        return len(got) >= 500

    await env.until(more)
    d.close(0)
    r.close(0)
    return {"in_order": got == [b"%d" % i for i in range(500)]}


async def case_pub_sub(env: Env) -> dict[str, Any]:
    addr = env.address()
    p = _socket(env, "b", zmq.PUB)
    p.bind(addr)
    p.send(b"a-before-connect")
    s = _socket(env, "a", zmq.SUB)
    s.setsockopt(zmq.SUBSCRIBE, b"a")
    s.connect(addr)
    got: list[bytes] = []

    def probe() -> bool:
        p.send(b"b-filtered")
        p.send(b"a-probe")
        while (m := _recv(s)) is not None:
            got.append(m[0])
        return bool(got)

    await env.until(probe)
    s.setsockopt(zmq.UNSUBSCRIBE, b"a")
    await asyncio.sleep(0.2)
    while _recv(s) is not None:
        pass
    p.send(b"a-after-unsubscribe")
    await asyncio.sleep(0.2)
    after = _recv(s)
    s.close(0)
    p.close(0)
    return {"early_lost": b"a-before-connect" not in got, "filtered": b"b-filtered" not in got,
            "received": bool(got), "after_unsubscribe": after}


async def case_disconnect_and_restart(env: Env) -> dict[str, Any]:
    addr = env.address()
    r = _socket(env, "b", zmq.ROUTER)
    r.bind(addr)
    d = _socket(env, "a", zmq.DEALER, IMMEDIATE=1, RECONNECT_IVL=50)
    d.connect(addr)
    first = await env.until(lambda: _try_send(d, [b"1"]))
    await env.until(lambda: _recv(r) is not None)
    r.close(0)
    await asyncio.sleep(0.2)
    r2 = _socket(env, "b", zmq.ROUTER)
    r2.bind(addr)
    again = await env.until(lambda: _try_send(d, [b"2"]))
    got: list[list[bytes] | None] = [None]
    await env.until(lambda: (got.__setitem__(0, _recv(r2)) or got[0]) is not None)
    d.disconnect(addr)
    await asyncio.sleep(0.1)
    after_disconnect = _try_send(d, [b"3"])
    try:
        d.disconnect(addr)
        unknown = "ok"
    except zmq.ZMQError as exc:
        unknown = exc.errno
    d.close(0)
    r2.close(0)
    return {"first": first, "again": again, "restarted_got": (got[0] or [b"", b""])[1],
            "after_disconnect": after_disconnect, "disconnect_unknown_errno": unknown}


async def case_events(env: Env) -> dict[str, Any]:
    addr = env.address()
    r = _socket(env, "b", zmq.ROUTER)
    r.bind(addr)
    d = _socket(env, "a", zmq.DEALER, IMMEDIATE=1)
    d.connect(addr)
    await env.until(lambda: bool(d.getsockopt(zmq.EVENTS) & zmq.POLLOUT))
    d.send(b"q")
    pollin = await env.until(lambda: bool(r.getsockopt(zmq.EVENTS) & zmq.POLLIN))
    _recv(r)
    cleared = not r.getsockopt(zmq.EVENTS) & zmq.POLLIN
    d.close(0)
    r.close(0)
    return {"pollin": pollin, "cleared": cleared}


async def case_maxmsgsize(env: Env) -> dict[str, Any]:
    addr = env.address()
    r = _socket(env, "b", zmq.ROUTER, MAXMSGSIZE=100)
    r.bind(addr)
    d = _socket(env, "a", zmq.DEALER, IMMEDIATE=1, RECONNECT_IVL=50)
    d.connect(addr)
    await env.until(lambda: _try_send(d, [b"small"]))
    d.send(b"x" * 1000)
    got: list[bytes] = []

    def probe() -> bool:
        _try_send(d, [b"after"])
        while (m := _recv(r)) is not None:
            got.append(m[1])
        return b"after" in got

    recovered = await env.until(probe)
    d.close(0)
    r.close(0)
    return {"first": got[:1], "big_dropped": b"x" * 1000 not in got, "recovered": recovered}


async def case_monitor(env: Env) -> dict[str, Any]:
    from zmq.utils.monitor import parse_monitor_message
    addr = env.address()
    r = _socket(env, "b", zmq.ROUTER)
    r.bind(addr)
    d = _socket(env, "a", zmq.DEALER, IMMEDIATE=1)
    mon = d.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_CONNECTED)
    d.connect(addr)
    events: list[str] = []

    def more() -> bool:
        while (m := _recv(mon)) is not None:
            events.append(parse_monitor_message(m)["event"].name)
        return "HANDSHAKE_SUCCEEDED" in events

    await env.until(more)
    d.disable_monitor()
    mon.close(0)
    d.close(0)
    r.close(0)
    return {"events": events}


CASES: dict[str, tuple[Callable[[Env], Awaitable[dict[str, Any]]], dict[str, Any]]] = {
    "request_reply": (case_request_reply, {"frames": [b"ping", b"two"], "id_len": 5, "id0": b"\x00",
                                           "reply": [b"pong"]}),
    "immediate_and_mandatory": (case_immediate_and_mandatory, {"early": False, "later": True,
                                                               "unknown": "EHOSTUNREACH"}),
    "order": (case_order, {"in_order": True}),
    "pub_sub": (case_pub_sub, {"early_lost": True, "filtered": True, "received": True, "after_unsubscribe": None}),
    "disconnect_and_restart": (case_disconnect_and_restart, {"first": True, "again": True, "restarted_got": b"2",
                                                             "after_disconnect": False,
                                                             "disconnect_unknown_errno": 2}),
    "events": (case_events, {"pollin": True, "cleared": True}),
    "maxmsgsize": (case_maxmsgsize, {"first": [b"small"], "big_dropped": True, "recovered": True}),
    "monitor": (case_monitor, {"events": ["CONNECTED", "HANDSHAKE_SUCCEEDED"]}),
}


def _run_real(case: Callable[[Env], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    contexts: dict[str, zmq.Context[Any]] = {}

    def address() -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return f"tcp://127.0.0.1:{s.getsockname()[1]}"

    def ctx_for(host: str) -> Any:
        return contexts.setdefault(host, zmq.Context())

    try:
        return asyncio.run(asyncio.wait_for(case(Env(ctx_for, address)), 30))
    finally:
        for ctx in contexts.values():
            ctx.destroy(0)


def _run_sim(case: Callable[[Env], Awaitable[dict[str, Any]]], seed: int) -> dict[str, Any]:
    loop = SimLoop(seed)
    net = SimNetwork(loop)
    contexts: dict[str, Any] = {}
    ports = iter(range(30000, 31000))

    def ctx_for(host: str) -> Any:
        if host not in contexts:
            contexts[host] = net.context(loop.hosts.get(host) or loop.add_host(host))
        return contexts[host]

    try:
        return loop.run(case(Env(ctx_for, lambda: f"tcp://127.0.0.1:{next(ports)}")))
    finally:
        loop.close()


@pytest.mark.parametrize("name", sorted(CASES))
def test_real_pyzmq(name: str) -> None:
    """Real libzmq shows the expected outcome (the ground truth of the model)."""
    case, expected = CASES[name]
    assert _run_real(case) == expected


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("name", sorted(CASES))
def test_simulated(name: str, seed: int) -> None:
    """SimSocket shows the same outcome as real libzmq."""
    case, expected = CASES[name]
    assert _run_sim(case, seed) == expected
