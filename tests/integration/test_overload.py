"""A connection that floods, and one that stops reading, against real nodes: the flooder
is refused (``overloaded``) at exactly max_in_flight_per_connection, every other
connection is still served, and replies nobody reads are dropped at socket_hwm instead of
piling up in the node."""

from __future__ import annotations

import signal
import time
from typing import Any, Iterator

import msgpack
import pytest
import zmq

from dynq.localcluster import LocalCluster
from dynq_client import Client
from tests.integration.test_bad_input import Raw

pytestmark = pytest.mark.integration

LIMITS = """
[limits]
max_value_bytes = 65536
max_message_bytes = 1048576
max_in_flight_per_connection = 10
[membership]
phi_threshold = 100
"""
"""phi_threshold 100: a SIGSTOPped replica is never marked down during a test, so requests
waiting for it stay in flight until their own deadline."""


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    from tests.conftest import running_cluster

    with running_cluster(tmp_path_factory.mktemp("overload"), 3, extra_config=LIMITS) as cluster:
        yield cluster


def put(req_id: int, key: bytes, w: int, timeout_ms: int = 4000) -> bytes:
    return msgpack.packb({"v": 1, "id": req_id, "op": "put",
                          "b": {"k": key, "v": b"x", "w": w, "t": timeout_ms}}, use_bin_type=True)


def replies(raw: Raw, count: int) -> list[dict[str, Any]]:
    got = []
    for _ in range(count):
        reply = raw.reply()
        assert reply is not None, f"only {len(got)} of {count} replies"
        got.append(reply)
    return got


@pytest.mark.parametrize("sent", [9, 10, 11, 200])
def test_in_flight_per_connection_at_the_limit(guarded: LocalCluster, sent: int) -> None:
    """With n3 stopped, puts at w=3 stay in flight until their deadline. A burst of them on
    one connection: the first 10 are taken, every later one is refused at once with
    ``overloaded`` and not executed; a second connection is served meanwhile."""
    flooder = Raw(guarded.nodes["n1"].address)
    other = Raw(guarded.nodes["n1"].address)
    flooder.sock.setsockopt(zmq.RCVTIMEO, 20_000)
    guarded.signal("n3", signal.SIGSTOP)
    try:
        for i in range(sent):
            flooder.send(put(i, b"flood-%d-%d" % (sent, i), w=3))
        refused = []
        if sent > 10:  # these come back at once, before any of the 10 can finish
            refused = replies(flooder, sent - 10)
        for i in range(5):  # another connection, meanwhile: served (w=2 needs only n1 and n2)
            reply = other.request({"v": 1, "id": 1000 + i, "op": "put",
                                   "b": {"k": b"other-%d-%d" % (sent, i), "v": b"y", "w": 2}})
            assert reply is not None and reply["ok"] is True, reply
    finally:
        guarded.signal("n3", signal.SIGCONT)
    try:
        taken = replies(flooder, min(sent, 10))
    finally:
        flooder.close()
        other.close()
    assert sorted(r["id"] for r in refused) == list(range(10, sent))
    assert all(r["ok"] is False and r["err"]["code"] == "overloaded" for r in refused)
    if refused:
        assert "max_in_flight_per_connection" in refused[0]["err"]["msg"]
    assert all(r.get("err", {}).get("code") != "overloaded" for r in taken)  # taken: ok, or timed out on n3
    assert sorted(r["id"] for r in taken) == list(range(min(sent, 10)))
    with Client(guarded.seeds) as client:  # a refused put was not executed anywhere
        for i in range(10, sent):
            assert client.get(b"flood-%d-%d" % (sent, i), r=3).values == []


def test_replies_nobody_reads_are_dropped_at_the_high_water_mark(cluster_factory: Any) -> None:
    """A client that sends gets of a 60 KB value and never reads the replies: once the
    kernel buffers and socket_hwm (20) replies are queued, the node drops further replies
    (counted) rather than holding them, and keeps serving everyone else."""
    cluster: LocalCluster = cluster_factory(1, extra_config=(
        "[limits]\nmax_value_bytes = 65536\nmax_message_bytes = 1048576\nsocket_hwm = 20\n"))
    with Client(cluster.seeds) as client:
        client.put(b"big", b"b" * 60_000)
        before = client.call("n1", "stats")["dropped_replies"]
    stalled = Raw(cluster.nodes["n1"].address)
    stalled.sock.setsockopt(zmq.RCVHWM, 1)  # it does not read: keep its own buffer small too
    other = Raw(cluster.nodes["n1"].address)
    try:
        dropped = before
        deadline = time.monotonic() + 60
        sent = 0
        while dropped == before and sent < 20_000 and time.monotonic() < deadline:  # bounded
            for _ in range(10):
                stalled.send(msgpack.packb({"v": 1, "id": sent, "op": "get", "b": {"k": b"big", "r": 1}}))
                sent += 1
            reply = other.request({"v": 1, "id": 1, "op": "stats", "b": {}})
            assert reply is not None and reply["ok"] is True  # the other connection is served
            dropped = reply["b"]["dropped_replies"]
        assert dropped > before, f"no reply dropped after {sent} unread gets"
    finally:
        stalled.close()
        other.close()
    assert not cluster.exited()
