"""Hostile and malformed input against a real node: clear errors or clean drops, no harm done."""

from __future__ import annotations

from typing import Any, Iterator

import msgpack
import pytest
import zmq

from dynq.localcluster import LocalCluster
from dynq_client import Client

pytestmark = pytest.mark.integration


class Raw:
    """A bare DEALER talking to one node, for sending what no client library would."""

    def __init__(self, address: str) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVTIMEO, 3000)
        self.sock.connect(address)

    def send(self, *frames: bytes) -> None:
        self.sock.send_multipart(list(frames))

    def reply(self) -> dict[str, Any] | None:
        try:
            return msgpack.unpackb(self.sock.recv(), raw=False)  # type: ignore[no-any-return]
        except zmq.Again:
            return None

    def request(self, msg: Any) -> dict[str, Any] | None:
        self.send(msgpack.packb(msg, use_bin_type=True))
        return self.reply()

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@pytest.fixture
def raw(cluster3: LocalCluster) -> Iterator[Raw]:
    conn = Raw(cluster3.nodes["n1"].address)
    yield conn
    conn.close()


def error_code(reply: dict[str, Any] | None) -> str:
    assert reply is not None, "expected an error reply, got none"
    assert reply["ok"] is False
    return str(reply["err"]["code"])


def test_malformed_requests_get_structured_errors(raw: Raw, client3: Client) -> None:
    """Bad envelopes, unknown ops and wrong field types are answered with an error code,
    and data stored before them is untouched."""
    client3.put(b"precious", b"keep me")
    assert error_code(raw.request({"v": 1, "id": 1, "op": "frobnicate", "b": {}})) == "unknown_op"
    assert error_code(raw.request({"v": 99, "id": 2, "op": "get", "b": {}})) == "protocol"
    assert error_code(raw.request({"v": 1, "id": 3, "op": 7, "b": {}})) == "protocol"
    assert error_code(raw.request({"v": 1, "id": 4, "op": "get", "b": []})) == "protocol"
    assert error_code(raw.request({"v": 1, "id": 5, "op": "put", "b": {"k": "str-key", "v": b"x"}})) == "invalid"
    assert error_code(raw.request({"v": 1, "id": 6, "op": "put", "b": {"k": b"k", "v": 12}})) == "invalid"
    assert error_code(raw.request({"v": 1, "id": 7, "op": "put", "b": {"k": b"k"}})) == "invalid"
    assert error_code(raw.request({"v": 1, "id": 8, "op": "put", "b": {"k": b"k", "v": b"x", "w": 9}})) == "invalid"
    assert error_code(raw.request({"v": 1, "id": 9, "op": "put", "b": {"k": b"k", "v": b"x", "ctx": b"forged"}})) == "bad_context"
    assert error_code(raw.request({"v": 1, "id": 10, "op": "replica_put", "b": {"k": b"precious", "ob": b"\x93\x01"}})) == "protocol"
    assert error_code(raw.request({"v": 1, "id": 11, "op": "get", "b": {"k": b""}})) == "invalid"
    assert client3.get(b"precious", r=3).values == [b"keep me"]


def test_garbage_frames_are_dropped_and_node_keeps_serving(raw: Raw, client3: Client) -> None:
    """Undecodable frames (no readable id) are dropped; the next request is served."""
    for frame in (b"", b"\xc1", b"\xff" * 100, b"\x91" * 5000 + b"\xc0", b"\xdb\xff\xff\xff\xff", msgpack.packb([1, 2, 3])):
        raw.send(frame)
    reply = raw.request({"v": 1, "id": 42, "op": "ping", "b": {}})
    assert reply is not None and reply["ok"] and reply["id"] == 42
    stats = client3.call("n1", "stats")
    assert stats["dropped_frames"] >= 6


def test_multi_frame_request_is_refused(raw: Raw) -> None:
    """A request is exactly one frame; more frames get a protocol error."""
    raw.send(b"a", b"b")
    assert error_code(raw.reply()) == "protocol"


def test_oversized_message_drops_only_that_sender(cluster3: LocalCluster, client3: Client) -> None:
    """A message over MAXMSGSIZE disconnects its sender; everyone else is still served."""
    hog = Raw(cluster3.nodes["n1"].address)
    try:
        hog.request({"v": 1, "id": 1, "op": "ping", "b": {}})
        hog.send(b"\x00" * (17 * 1024 * 1024))
        client3.put(b"after-hog", b"fine")
        assert client3.get(b"after-hog").values == [b"fine"]
    finally:
        hog.close()


def test_requester_vanishing_mid_request_harms_nobody(cluster3: LocalCluster, client3: Client) -> None:
    """A client that sends writes and disappears before the replies leaves the node serving."""
    ghost = Raw(cluster3.nodes["n1"].address)
    for i in range(50):
        ghost.send(msgpack.packb({"v": 1, "id": i, "op": "put", "b": {"k": f"g{i}".encode(), "v": b"x"}}, use_bin_type=True))
    ghost.close()
    client3.put(b"still", b"here")
    assert client3.get(b"still").values == [b"here"]


def test_replica_batch_answers_each_item(raw: Raw, client3: Client) -> None:
    """A batched replica write answers per item: good items are stored, bad ones get their
    own error, and a malformed batch is refused as a whole."""
    from dynq_client.versions import encode_object, update

    good = encode_object(update(None, {}, "x.1", b"batched", 1))
    reply = raw.request({"v": 1, "id": 1, "op": "replica_put_batch", "b": {"items": [
        {"k": b"batch-ok", "ob": good},
        {"k": b"batch-bad", "ob": b"not an object"},
        "not a map",
        {"k": b"batch-hint", "ob": good, "h": "nobody"},
    ]}})
    assert reply is not None and reply["ok"], reply
    results = reply["b"]["r"]
    assert results[0] is None
    assert [r["code"] for r in results[1:]] == ["protocol", "invalid", "invalid"]
    assert client3.call("n1", "replica_get", {"k": b"batch-ok"})["ob"] == good
    assert client3.call("n1", "replica_get", {"k": b"batch-hint"})["ob"] is None
    assert error_code(raw.request({"v": 1, "id": 2, "op": "replica_put_batch", "b": {"items": []}})) == "invalid"
    assert error_code(raw.request({"v": 1, "id": 3, "op": "replica_put_batch", "b": {"items": 5}})) == "invalid"


def test_unknown_op_names_do_not_become_metric_series(raw: Raw, client3: Client) -> None:
    """Whatever op name a sender invents is counted as "unknown", never as a new series."""
    assert error_code(raw.request({"v": 1, "id": 1, "op": 'bad"op\nx 1', "b": {}})) == "unknown_op"
    requests = client3.call("n1", "stats")["requests"]
    assert requests.get("unknown", 0) >= 1 and not any("bad" in op for op in requests)
