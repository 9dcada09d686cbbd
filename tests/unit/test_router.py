"""The request server (dynq.server.router): admission, dispatch and the one reply, over a
real ROUTER and DEALER (inproc) on a private loop; no node process."""

from __future__ import annotations

import asyncio
from typing import Any, Callable

import pytest
import zmq

from dynq.ops.metrics import Latencies
from dynq.server.responder import Responder
from dynq.server.router import RequestServer
from dynq.server.stats import Stats
from dynq_client import protocol as p
from dynq_client.protocol import DEFAULT_LIMITS, Reply, Request



class Rig:
    """A RequestServer on a ROUTER, and one client DEALER (identity b"c1") talking to it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_in_flight: int = 10) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.router = self.context.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.router.bind("inproc://server")
        self.client = self.context.socket(zmq.DEALER)
        self.client.setsockopt(zmq.IDENTITY, b"c1")
        self.client.connect("inproc://server")
        self.stats = Stats()
        self.server = RequestServer(loop, self.router, self.stats, Latencies(), name="n1", limits=DEFAULT_LIMITS,
                                    max_in_flight_per_connection=max_in_flight, security=None, epoch=7)
        self.held: list[Responder] = []  # responders of the "hold" op, never answered by it

        def echo(responder: Responder, req: Request) -> None:
            responder.ok({"echo": req.body.get("x")})

        def hold(responder: Responder, req: Request) -> None:
            self.held.append(responder)

        def bug(responder: Responder, req: Request) -> None:
            raise RuntimeError("a bug")

        def twice(responder: Responder, req: Request) -> None:
            responder.ok({"first": True})
            responder.ok({"second": True})
            raise RuntimeError("and a bug after replying")

        self.server.register({"echo": echo, "hold": hold, "bug": bug, "twice": twice}, client_ops={"echo", "hold"})
        self.server.register({"peer_hold": hold})
        self.ids = iter(range(1, 1_000_000))

    def send(self, op: str, body: dict[str, Any] | None = None) -> int:
        req_id = next(self.ids)
        self.client.send(p.encode_request(req_id, op, body or {}))
        return req_id

    async def replies(self, count: int) -> list[Reply]:
        """The next ``count`` replies (the loop runs the server meanwhile), bounded in time."""
        out: list[Reply] = []
        for _ in range(2000):
            while self.client.poll(0):
                out.append(p.decode_reply(self.client.recv()))
            if len(out) >= count:
                return out
            await asyncio.sleep(0.005)
        raise AssertionError(f"only {len(out)} of {count} replies")

    def close(self) -> None:
        self.server.stop_reading()
        self.client.close(0)
        self.router.close(0)
        self.context.term()


@pytest.fixture
def run() -> Callable[..., None]:
    def runner(scenario: Callable[[Rig], Any], **kw: Any) -> None:
        async def main() -> None:
            rig = Rig(asyncio.get_running_loop(), **kw)
            rig.server.start()
            try:
                await scenario(rig)
            finally:
                rig.close()
        asyncio.run(main())
    return runner


def test_a_request_gets_its_reply_with_the_epoch(run: Callable[..., None]) -> None:
    async def scenario(rig: Rig) -> None:
        req_id = rig.send("echo", {"x": 1})
        [reply] = await rig.replies(1)
        assert (reply.id, reply.ok, reply.epoch, reply.body) == (req_id, True, 7, {"echo": 1})
        assert rig.server.in_flight == 0 and rig.stats.requests["echo"] == 1
    run(scenario)


def test_unknown_op_is_a_structured_error_and_mints_no_metric(run: Callable[..., None]) -> None:
    async def scenario(rig: Rig) -> None:
        rig.send("no_such_op")
        [reply] = await rig.replies(1)
        assert not reply.ok and (reply.error or {})["code"] == "unknown_op"
        assert "no_such_op" not in rig.stats.requests and rig.stats.requests["unknown"] == 1
    run(scenario)


def test_a_bug_costs_one_internal_reply_never_two(run: Callable[..., None]) -> None:
    """A handler that raises gets one ``internal`` reply; one that replies twice and then
    raises sends only its first reply."""
    async def scenario(rig: Rig) -> None:
        bug_id = rig.send("bug")
        twice_id = rig.send("twice")
        echo_id = rig.send("echo", {"x": 2})  # the next request after them is served as usual
        replies = {r.id: r for r in await rig.replies(3)}
        await asyncio.sleep(0.05)
        assert not rig.client.poll(0)  # no further reply
        assert not replies[bug_id].ok and (replies[bug_id].error or {})["code"] == "internal"
        assert replies[twice_id].ok and replies[twice_id].body == {"first": True}
        assert replies[echo_id].body == {"echo": 2}
        assert rig.server.in_flight == 0
    run(scenario)


def test_a_closing_server_refuses_new_requests_unexecuted(run: Callable[..., None]) -> None:
    """Refused as ``unavailable`` (never executed), so callers retry elsewhere at once."""
    async def scenario(rig: Rig) -> None:
        rig.server.refuse_new()
        rig.send("echo", {"x": 3})
        [reply] = await rig.replies(1)
        assert not reply.ok and (reply.error or {})["code"] == "unavailable"
        assert rig.stats.requests["echo"] == 0
    run(scenario)


def test_overload_caps_client_ops_of_one_connection_only(run: Callable[..., None]) -> None:
    """Past the in-flight cap a client op is refused as ``overloaded``; a peer op (or a
    forwarded client op) on the same connection is not capped; answering frees a slot."""
    async def scenario(rig: Rig) -> None:
        rig.send("hold")
        rig.send("hold")
        over = rig.send("hold")
        [reply] = await rig.replies(1)
        assert reply.id == over and (reply.error or {})["code"] == "overloaded"
        rig.send("peer_hold")
        rig.send("hold", {"fwd": True})
        await asyncio.sleep(0.05)
        assert len(rig.held) == 4 and rig.stats.overloaded == 1
        rig.held[0].ok({})
        [freed] = await rig.replies(1)
        assert freed.ok
        rig.send("echo", {"x": 4})
        [reply] = await rig.replies(1)
        assert (reply.error or {}).get("code") == "overloaded"  # still 4 in flight, cap 2
        for responder in rig.held[1:]:
            responder.ok({})
        await rig.replies(3)
        assert rig.server.in_flight == 0 and rig.server.in_flight_by_connection == {}
    run(scenario, max_in_flight=2)


def test_a_client_key_may_call_client_ops_only(run: Callable[..., None]) -> None:
    """Under CURVE the sender's role comes with its frame: a client key on a peer op is
    ``forbidden``, a revoked key (no role) on anything."""
    async def scenario(rig: Rig) -> None:
        rig.server.dispatch(b"c1", p.encode_request(1, "echo", {"x": 5}), "client")
        rig.server.dispatch(b"c1", p.encode_request(2, "peer_hold", {}), "client")
        rig.server.dispatch(b"c1", p.encode_request(3, "echo", {}), "none")
        replies = {r.id: r for r in await rig.replies(3)}
        assert replies[1].ok
        assert (replies[2].error or {})["code"] == "forbidden" and (replies[3].error or {})["code"] == "forbidden"
        assert rig.held == [] and rig.stats.forbidden == 2
    run(scenario)


def test_undecodable_frames_are_dropped_and_counted(run: Callable[..., None]) -> None:
    async def scenario(rig: Rig) -> None:
        rig.client.send(b"\xc1not msgpack")
        rig.send("echo", {"x": 6})
        [reply] = await rig.replies(1)
        assert reply.body == {"echo": 6} and rig.stats.dropped_frames == 1
    run(scenario)


def test_an_op_registered_twice_fails_at_start() -> None:
    async def main() -> None:
        rig = Rig(asyncio.get_running_loop())
        try:
            with pytest.raises(ValueError, match="registered twice"):
                rig.server.register({"echo": lambda responder, req: None})
            with pytest.raises(ValueError, match="without a handler"):
                rig.server.register({"other": lambda responder, req: None}, client_ops={"missing"})
        finally:
            rig.close()
    asyncio.run(main())


