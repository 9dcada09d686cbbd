"""Limits at their boundaries, and a fuzz campaign against every op's validation on real
nodes: each request gets a clear error or is dropped; no node crashes, and data that was
stored stays exactly as it was.

A longer campaign: DYNQ_FUZZ_EXAMPLES=100000 scripts/test tests/integration/test_hostile.py
"""

from __future__ import annotations

import os
from typing import Any, Iterator

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynq.localcluster import LocalCluster
from dynq_client import Client, KeyTooLarge, TooManySiblings, ValueTooLarge
from tests.integration.test_bad_input import Raw

pytestmark = pytest.mark.integration

SMALL = """
[limits]
max_key_bytes = 64
max_value_bytes = 4096
max_message_bytes = 65536
max_siblings = 5
sibling_warn = 3
max_clock_entries = 8
max_context_bytes = 300
max_container_len = 10000
max_depth = 8
"""


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """One 3-node cluster with small limits, shared by this module's tests."""
    from tests.conftest import running_cluster

    with running_cluster(tmp_path_factory.mktemp("hostile"), 3, extra_config=SMALL) as cluster:
        yield cluster


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_key_size_at_the_limit(small: LocalCluster, delta: int) -> None:
    key = b"k" * (64 + delta)
    with Client(small.seeds) as client:
        if delta <= 0:
            client.put(key, b"v")
            assert client.get(key).values == [b"v"]
        else:
            with pytest.raises(KeyTooLarge):
                client.put(key, b"v")
            raw = Raw(small.nodes["n1"].address)  # past the client's own check, the node refuses too
            try:
                reply = raw.request({"v": 1, "id": 1, "op": "put", "b": {"k": key, "v": b"v"}})
                assert reply is not None and reply["err"]["code"] == "key_too_large"
            finally:
                raw.close()


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_value_size_at_the_limit(small: LocalCluster, delta: int) -> None:
    value = os.urandom(4096 + delta)
    key = f"value-{delta}".encode()
    raw = Raw(small.nodes["n1"].address)
    try:
        reply = raw.request({"v": 1, "id": 7, "op": "put", "b": {"k": key, "v": value}})
    finally:
        raw.close()
    assert reply is not None
    if delta <= 0:
        assert reply["ok"] is True, reply
        with Client(small.seeds) as client:
            assert client.get(key).values == [value]
    else:
        assert reply["err"]["code"] == ValueTooLarge.code


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_message_size_at_the_limit(small: LocalCluster, delta: int) -> None:
    """A message of exactly max_message_bytes is read; one byte more and the sender's
    connection is dropped (libzmq MAXMSGSIZE), not served."""
    limit = 65536
    def ping(pad: int) -> bytes:
        return msgpack.packb({"v": 1, "id": 9, "op": "ping", "b": {"pad": b"x" * pad}}, use_bin_type=True)

    pad = limit + delta - len(ping(0))
    pad -= len(ping(pad)) - (limit + delta)  # the bin header grows with the length
    frame = ping(pad)
    assert len(frame) == limit + delta
    raw = Raw(small.nodes["n1"].address)
    try:
        raw.send(frame)
        reply = raw.reply()
    finally:
        raw.close()
    if delta <= 0:
        assert reply is not None and reply["ok"] is True
    else:
        assert reply is None
    with Client(small.seeds) as client:
        assert client.call("n1", "ping")["name"] == "n1"


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_siblings_at_the_limit(small: LocalCluster, delta: int) -> None:
    """max_siblings concurrent writes are kept; one more is refused until they are resolved."""
    key = f"sib{delta}".encode()
    with Client(small.seeds) as client:
        for i in range(5 + min(delta, 0)):
            client.put(key, f"v{i}".encode(), context=b"")  # blind writes: all concurrent
        if delta <= 0:
            assert len(client.get(key, r=3).values) == 5 + delta
        else:
            with pytest.raises(TooManySiblings):
                client.put(key, b"one too many", context=b"")
            got = client.get(key, r=3)
            assert len(got.values) == 5
            client.put(key, b"resolved", context=got.context)
            assert client.get(key, r=3).values == [b"resolved"]


def exact_context(size: int, seen: bytes) -> bytes:
    """A valid context of exactly ``size`` bytes that covers what ``seen`` (a get's
    context) covers, padded with a forged actor."""
    from dynq_client.versions import decode_context, encode_context

    clock = decode_context(seen)
    while len(encode_context({**clock, "pad": 1})) < size - 130:  # actor names stop at 128 chars
        clock[f"filler-{len(clock)}-" + "f" * 90] = 1
    base = len(encode_context({**clock, "pad": 1}))
    for pad in range(max(0, size - base - 3), size - base + 4):
        context = encode_context({**clock, "pad" + "p" * pad: 1})
        if len(context) == size:
            return context
    raise AssertionError(f"no context of {size} bytes")


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_context_bytes_at_the_limit(small: LocalCluster, delta: int) -> None:
    """A context of up to max_context_bytes (300 here) is taken; one byte more is refused
    with bad_context, naming the limit, and nothing changes."""
    from dynq_client import InvalidContext

    key = f"ctxb{delta}".encode()
    with Client(small.seeds) as client:
        client.put(key, b"before")
        context = exact_context(300 + delta, client.get(key, r=3).context)
        if delta <= 0:
            client.put(key, b"after", context=context)
            assert client.get(key, r=3).values == [b"after"]
        else:
            with pytest.raises(InvalidContext, match="301 bytes; the limit is 300"):
                client.put(key, b"after", context=context)
            assert client.get(key, r=3).values == [b"before"]


def nested(levels: int) -> Any:
    """A value that is ``levels`` arrays deep (0: a scalar)."""
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


@pytest.fixture
def raw_small(small: LocalCluster) -> Iterator[Raw]:
    conn = Raw(small.nodes["n1"].address)
    yield conn
    conn.close()


def assert_refused_past_the_limit(reply: dict[str, Any] | None, req_id: int, delta: int, names: str) -> None:
    """Answered under ``req_id``: served up to the limit, a protocol error naming it past."""
    assert reply is not None and reply["id"] == req_id
    if delta <= 0:
        assert reply["ok"] is True
    else:
        assert reply["ok"] is False and reply["err"]["code"] == "protocol"
        assert names in reply["err"]["msg"]


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_nesting_depth_at_the_limit(raw_small: Raw, delta: int) -> None:
    """max_depth is 8 here: the request map is level 1 and its body level 2, so a body
    field may hold 6 levels of arrays. One more is refused with a protocol error that
    names the limit (the id is still read, so the sender gets an answer)."""
    reply = raw_small.request({"v": 1, "id": 5, "op": "ping", "b": {"x": nested(6 + delta)}})
    assert_refused_past_the_limit(reply, 5, delta, "deeper than 8")


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_container_length_at_the_limit(raw_small: Raw, delta: int) -> None:
    """An array of max_container_len (10000 here) items is decoded; one more is refused
    with a protocol error naming the limit, answered under the request's id."""
    reply = raw_small.request({"v": 1, "id": 6, "op": "ping", "b": {"x": [0] * (10_000 + delta)}})
    assert_refused_past_the_limit(reply, 6, delta, "max_array_len(10000)")


@pytest.mark.parametrize("frames", [1, 2, 3])
def test_frames_per_message_at_the_limit(raw_small: Raw, frames: int) -> None:
    """A request is exactly one frame (the limit is 1, fixed by the protocol); a message of
    more frames is refused with a protocol error, and the connection keeps working."""
    ping = msgpack.packb({"v": 1, "id": 7, "op": "ping", "b": {}})
    raw_small.send(*([b"extra"] * (frames - 1)), ping)
    reply = raw_small.reply()
    assert reply is not None
    if frames == 1:
        assert reply["ok"] is True and reply["id"] == 7
    else:
        assert reply["ok"] is False and reply["err"]["code"] == "protocol"
        assert f"got {frames}" in reply["err"]["msg"]
        follow = raw_small.request({"v": 1, "id": 9, "op": "ping", "b": {}})
        assert follow is not None and follow["ok"] is True and follow["id"] == 9


def rss_kib(cluster: LocalCluster, name: str) -> int:
    process = cluster.nodes[name].process
    assert process is not None
    for line in open(f"/proc/{process.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def bad_requests(round_: int) -> list[list[bytes]]:
    """3,000 requests a node must refuse (each a list of frames), of every kind; ids differ
    per round so nothing can be cached by id."""
    out: list[list[bytes]] = []
    for i in range(500):
        req_id = round_ * 10_000 + i
        out += [
            [b"\xc1" + bytes([i % 256])],  # not msgpack
            [msgpack.packb({"v": 1, "id": req_id, "op": "ping", "b": {"x": nested(8)}})],  # too deep
            [msgpack.packb({"v": 1, "id": req_id, "op": "ping", "b": {"x": [0] * 10_001}})],  # too long
            [msgpack.packb({"v": 1, "id": req_id, "op": f"no-such-op-{i}", "b": {}})],  # unknown op
            [msgpack.packb({"v": 1, "id": req_id, "op": "put", "b": {"k": i, "v": [b"x"]}})],  # wrong types
            [msgpack.packb({"v": 1, "id": req_id, "op": "put",  # a context that is not one
                            "b": {"k": b"leak-%d" % i, "v": b"x", "ctx": b"\x92\x01\x91\x91\xc0"}})],
        ]
    return out


def test_refused_requests_do_not_grow_memory(small: LocalCluster) -> None:
    """Four rounds of the same 3,000 bad requests: after the first (warm-up: caches, the
    allocator's pools), n3's resident memory grows by less than 8 MiB over three more
    rounds - a leak of 1 KiB per refused request would be 9 MiB - and nothing is stored."""
    conn = Raw(small.nodes["n3"].address)
    conn.sock.setsockopt(zmq.RCVTIMEO, 10_000)
    try:
        sizes = []
        for round_ in range(4):
            requests = bad_requests(round_)
            for frames in requests:
                conn.send(*frames)
            conn.send(msgpack.packb({"v": 1, "id": 2**40, "op": "ping", "b": {}}))
            for _ in range(len(requests) + 1):  # bounded: until the ping's reply
                reply = conn.reply()
                assert reply is not None
                if reply.get("id") == 2**40:
                    break
                assert reply["ok"] is False and reply["err"]["code"] != "internal", reply
            sizes.append(rss_kib(small, "n3"))
    finally:
        conn.close()
    assert sizes[3] - sizes[0] < 8 * 1024, f"RSS by round (KiB): {sizes}"
    with Client(small.seeds) as client:
        assert client.get(b"leak-1", r=3).values == []


# --- fuzzing -------------------------------------------------------------------------------

# "backup" is the one op left out: its valid use writes a file at a path the request
# names, which a fuzz campaign must not do to the machine it runs on (its parser is
# checked in test_operations). Ops that change membership are in: a random body that
# happened to be valid could only stage or commit a change the checks below would see.
# bucket_create and bucket_set are left out for the same reason as backup: a random body
# that is valid ({"name": "a"}) makes a change at once (no staging), by design; their
# parsers are checked in test_buckets (CLI errors) and tests/unit/test_buckets.py.
_NOT_FUZZED = {"backup", "bucket_create", "bucket_set"}
_OPS = sorted({"ping", "routing_table", "get", "put", "delete", "replica_get", "replica_put", "replica_put_batch",
               "stats", "inspect", "read_repair", "cluster_state", "cluster_join", "member_join", "cluster_leave",
               "cluster_plan", "cluster_clear", "cluster_commit", "transfer_done", "transfers", "ae_root",
               "ae_level", "ae_keys", "ae_objects", "ae_verify", "ae_reap_check", "ae_reap", "ae_repair",
               "ae_tree", "key_register", "key_revoke", "node_history", "console", "list_keys", "bucket_create",
               "bucket_set"} - _NOT_FUZZED)
_FIELDS = ["k", "v", "ctx", "ob", "items", "h", "r", "w", "pw", "t", "local", "fwd", "peers", "hops", "node", "plan",
           "state", "member", "cluster", "p", "d", "i", "s", "c", "rebuild", "name", "key", "bk", "parts", "after",
           "limit", "prefix", "props"]

_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1), st.floats(allow_nan=True),
    st.binary(max_size=80).filter(lambda b: not b.startswith(b"sentinel")), st.text(max_size=40),
)
_values = st.recursive(_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(_FIELDS + ["x"]), inner, max_size=4)), max_leaves=12)
_bodies = st.dictionaries(st.sampled_from(_FIELDS), _values, max_size=6)
_requests = st.one_of(
    st.fixed_dictionaries({"v": st.just(1), "id": st.integers(1, 2**31), "op": st.sampled_from(_OPS), "b": _bodies}),
    st.fixed_dictionaries({"v": st.sampled_from([0, 1, 2, "1", None]), "id": _scalars,
                           "op": st.one_of(st.sampled_from(_OPS), st.text(max_size=12), _scalars), "b": _values}),
)


@pytest.fixture(scope="module")
def fuzz_target(small: LocalCluster) -> Iterator[tuple[LocalCluster, dict[bytes, list[bytes]], Raw]]:
    sentinels = {f"sentinel-{i}".encode(): [f"value-{i}".encode()] for i in range(20)}
    with Client(small.seeds) as client:
        for key, values in sentinels.items():
            client.put(key, values[0])
        states = membership_views(client, small)
    raw = Raw(small.nodes["n2"].address)
    yield small, sentinels, raw
    raw.close()
    with Client(small.seeds) as client:  # (checked after the campaign's last test)
        assert membership_views(client, small) == states, "the fuzz campaign changed the membership"


def membership_views(client: Client, cluster: LocalCluster) -> list[Any]:
    """Each node's cluster state, and what the claimant has staged."""
    views: list[Any] = [client.call(name, "cluster_state")["state"] for name in cluster.nodes]
    views.append(client.call("n1", "cluster_plan").get("staged"))
    return views


_MARKER_ID = 2**40  # ids of the ping sent after each fuzz message (fuzzed ids stay below)


@settings(max_examples=int(os.environ.get("DYNQ_FUZZ_EXAMPLES", "1000")), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(message=_requests)
def test_fuzz_every_op(fuzz_target: tuple[LocalCluster, dict[bytes, list[bytes]], Raw], message: dict[str, Any]) -> None:
    """Random envelopes and bodies for every op: an answer (an error, or success for a body
    that happens to be valid) or a drop, never an internal error or a crash. A ping after
    each message shows the node is still serving (replies may come in any order)."""
    cluster, _, raw = fuzz_target
    try:
        frame = msgpack.packb(message, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        return
    raw.send(frame)
    raw.send(msgpack.packb({"v": 1, "id": _MARKER_ID, "op": "ping", "b": {}}))
    for _ in range(100):  # bounded: every reply until the ping's
        reply = raw.reply()
        assert reply is not None, f"no answer to the ping after {message!r:.300}"
        assert isinstance(reply, dict) and reply.get("ok") in (True, False), reply
        if reply["ok"] is False:
            code = reply["err"]["code"]
            assert isinstance(code, str) and code != "internal", (message, reply)
        if reply.get("id") == _MARKER_ID:
            break
    assert not cluster.exited()


def test_fuzz_left_nodes_up_and_data_intact(fuzz_target: tuple[LocalCluster, dict[bytes, list[bytes]], Raw]) -> None:
    """(Runs after the campaign.) Every node serves, and every sentinel reads back unchanged
    from every replica."""
    cluster, sentinels, _ = fuzz_target
    assert not cluster.exited()
    with Client(cluster.seeds) as client:
        for name in cluster.nodes:
            assert client.call(name, "ping")["name"] == name
        for key, values in sentinels.items():
            assert client.get(key, r=3).values == values


@pytest.mark.parametrize("delta", [-1, 0, 1])
def test_context_entries_at_the_limit(small: LocalCluster, delta: int) -> None:
    """A context may name up to max_clock_entries actors (8 here); the object a write makes
    must stay readable everywhere, so a write whose version vector would pass the limit is
    refused with a clear error and changes nothing."""
    from dynq_client import InvalidContext
    from dynq_client.versions import encode_context

    key = f"ctx{delta}".encode()
    context = encode_context({f"forged-{i}": 1 for i in range(8 + delta)})
    with Client(small.seeds) as client:
        client.put(key, b"before")
        if delta < 0:
            client.put(key, b"after", context=context)
            assert b"after" in client.get(key, r=3).values
        else:
            with pytest.raises(InvalidContext):
                client.put(key, b"after", context=context)
            assert client.get(key, r=3).values == [b"before"]
