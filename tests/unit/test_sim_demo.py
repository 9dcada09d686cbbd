"""The real client transport (two RequestMuxes, each its own host and SimContext) against an
echo ROUTER, on SimLoop: requests succeed, a killed server yields timeouts, and the run is
deterministic (same seed, same trace hash)."""

from __future__ import annotations

import asyncio
from typing import Any

import zmq

from dynq.sim.loop import SimLoop
from dynq.sim.net import SimNetwork
from dynq_client import protocol as p
from dynq_client.transport import RequestMux


def _run(seed: int) -> tuple[list[str], str]:
    loop = SimLoop(seed)
    net = SimNetwork(loop)
    server = loop.add_host("server")
    outcomes: list[str] = []

    def serve() -> Any:
        router = net.context(server).socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.bind("tcp://server:7000")

        def drain() -> None:
            while True:
                try:
                    ident, frame = router.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    return
                req = p.decode_request(frame)
                router.send(ident, zmq.NOBLOCK | zmq.SNDMORE)
                router.send(p.encode_reply(req.id, 1, {"echo": req.body["n"]}), zmq.NOBLOCK)

        loop.add_reader(router.fileno(), drain)
        return router

    server.run(serve)

    async def client(name: str) -> None:
        mux = RequestMux(loop, context=net.context(loop.hosts[name]))  # type: ignore[arg-type]
        mux.connect("server", "tcp://server:7000")
        for i in range(20):
            fut: asyncio.Future[str] = loop.create_future()
            mux.request("server", "ping", {"n": i}, 0.5,
                        lambda reply, err: fut.set_result(f"{name}:{reply.body['echo'] if reply else type(err).__name__}"))
            outcomes.append(await fut)
            await asyncio.sleep(0.1)
        mux.close()

    async def main() -> None:
        tasks = [loop.add_host(n).spawn(client(n)) for n in ("c1", "c2")]
        await asyncio.sleep(1.0)
        server.kill()
        await asyncio.gather(*tasks)

    loop.run(main())
    loop.close()
    return outcomes, loop.trace_hash()


def test_request_mux_on_sim_sockets_is_deterministic() -> None:
    """Replies before the kill, Timeout/Unavailable after it; one seed gives one trace hash."""
    out1, h1 = _run(11)
    out2, h2 = _run(11)
    assert out1 == out2 and h1 == h2
    assert "c1:0" in out1 and "c2:0" in out1
    assert any(o.endswith(("Timeout", "Unavailable")) for o in out1)
