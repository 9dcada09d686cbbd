"""The node's side of listing (``list_keys``) on a real SQLite file: pages and cursors over
every partition, bucket key ranges (no other bucket's keys, no tombstones), prefixes of
the default bucket around the bucket-key marker, and refusal of partitions the node is
not a primary of."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from dynq_client import buckets as b
from dynq_client.buckets import new_bucket
from dynq_client.errors import Unavailable
from dynq_client.protocol import DEFAULT_LIMITS, Request
from dynq_client.ring import Member, new_ring
from dynq_client.versions import encode_object, update
from hypothesis import given, settings
from hypothesis import strategies as st

from dynq.cluster.membership import ClusterState
from dynq.kv import listing
from dynq.kv.listing import KeyLister
from dynq.store.storage import Storage

Q = 8


class Reply:
    def __init__(self) -> None:
        self.body: dict[str, Any] | None = None

    def ok(self, body: dict[str, Any]) -> None:
        self.body = body


def setup(tmp_path: Path, keys: dict[str, list[bytes]], dead: dict[str, list[bytes]]) -> KeyLister:
    state = ClusterState(new_ring([Member("n1", "tcp://127.0.0.1:1")], q=Q, n=1))
    state = state.with_bucket(new_bucket("a", n=1, members=1)).with_bucket(new_bucket("ab", n=1, members=1))
    storage = Storage(tmp_path / "db.sqlite")
    loop = asyncio.new_event_loop()
    try:
        for bucket, names in list(keys.items()) + list(dead.items()):
            for key in names:
                obj = update(None, {}, "n1.x", None if key in dead.get(bucket, []) else b"v", 1)
                skey = b.storage_key(bucket, key)
                storage.stage(skey, state.ring.partition_for(skey), obj, encode_object(obj), lambda e: None, loop)
        storage.flush()
    finally:
        loop.close()
    cluster = SimpleNamespace(state=state, name="n1")
    return KeyLister(cluster, storage, SimpleNamespace(name="n1", limits=DEFAULT_LIMITS))  # type: ignore[arg-type]


def list_all(lister: KeyLister, bucket: str, prefix: bytes = b"", limit: int = 3) -> list[bytes]:
    out: list[bytes] = []
    after: list[Any] | None = None
    for _ in range(10_000):
        body: dict[str, Any] = {"parts": list(range(Q)), "limit": limit, "bk": bucket}
        if prefix:
            body["prefix"] = prefix
        if after is not None:
            body["after"] = after
        reply = Reply()
        lister.handle_list_keys(reply, Request(1, "list_keys", body))  # type: ignore[arg-type]
        assert reply.body is not None
        assert len(reply.body["keys"]) <= limit
        out += [k for _, k in reply.body["keys"]]
        after = reply.body["next"]
        if after is None:
            return out
    raise AssertionError("the listing did not end")


@settings(max_examples=25, deadline=None)
@given(st.dictionaries(st.sampled_from(["default", "a", "ab"]),
                       st.lists(st.binary(min_size=1, max_size=6), max_size=30, unique=True), min_size=1),
       st.integers(min_value=1, max_value=5), st.integers(min_value=1, max_value=7))
def test_pages_list_exactly_the_live_keys_of_the_bucket(tmp_path_factory: pytest.TempPathFactory,
                                                         keys: dict[str, list[bytes]], limit: int, scan: int) -> None:
    """Whatever the page size and scan bound, the pages together are exactly the bucket's
    live keys, each once; tombstones and other buckets' keys never appear."""
    keys = {bucket: [k for k in names if not (bucket == b.DEFAULT and k.startswith(b.MARK))]
            for bucket, names in keys.items()}
    dead = {bucket: names[::3] for bucket, names in keys.items()}
    lister = setup(tmp_path_factory.mktemp("listing"), keys, dead)
    old = listing.MAX_SCAN
    listing.MAX_SCAN = scan
    try:
        for bucket in ("default", "a", "ab"):
            listed = list_all(lister, bucket, limit=limit)
            expected = set(keys.get(bucket, [])) - set(dead.get(bucket, []))
            assert len(listed) == len(set(listed)) and set(listed) == expected, bucket
    finally:
        listing.MAX_SCAN = old
        lister.storage.close()


def test_prefixes_of_the_default_bucket_skip_bucket_keys(tmp_path: Path) -> None:
    """A prefix b"\\x00" in the default bucket lists its own NUL keys, never the bucket keys
    stored under the marker b"\\x00B"."""
    lister = setup(tmp_path, {"default": [b"\x00A", b"\x00C", b"\x01", b"x"], "a": [b"k1", b"k2"]}, {})
    assert sorted(list_all(lister, "default", prefix=b"\x00")) == [b"\x00A", b"\x00C"]
    assert sorted(list_all(lister, "default")) == [b"\x00A", b"\x00C", b"\x01", b"x"]
    assert sorted(list_all(lister, "a", prefix=b"k")) == [b"k1", b"k2"]
    assert list_all(lister, "a", prefix=b"z") == []


def test_partitions_of_another_primary_are_refused(tmp_path: Path) -> None:
    """A node asked for a partition it is not a primary of says so (the client then asks
    another replica), instead of listing a partial copy."""
    lister = setup(tmp_path, {"a": [b"k"]}, {})
    lister.cluster = SimpleNamespace(state=lister.cluster.state, name="n1")  # type: ignore[assignment]
    lister.name = "n9"
    with pytest.raises(Unavailable, match="not a primary"):
        lister.handle_list_keys(Reply(), Request(1, "list_keys", {"parts": [0], "bk": "a"}))  # type: ignore[arg-type]
