"""Node logic that needs its storage but no sockets: run in-process on a private loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

from dynq.config import parse_config
from dynq.kv.local import LocalReplica
from dynq.node import Node
from dynq.server.stats import Stats
from dynq_client.versions import VersionedObject, decode_object, encode_object, update


def make_node(tmp_path: Path) -> Node:
    cfg = parse_config(
        {"node": {"name": "n1", "listen": "tcp://127.0.0.1:1", "data_dir": str(tmp_path)},
         "cluster": {"n": 1, "r": 1, "w": 1, "q": 8}},
        base_dir=tmp_path,
    )
    return Node(cfg)


def local_replica(node: Node) -> LocalReplica:
    """The node's local replica on the running loop (what ``serve`` builds)."""
    return LocalReplica(asyncio.get_running_loop(), node.storage, node.cluster, Stats(),
                        max_hints=node.config.max_hints)


async def commit(node: Node, key: bytes, obj: VersionedObject) -> None:
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    local_replica(node).stage_local(key, obj, encode_object(obj), done.set_result)
    assert await done is None


def test_read_repair_of_own_copy_never_undoes_a_newer_write(tmp_path: Path) -> None:
    """A read that settles after a newer write was acknowledged must not write its older
    merge over it (which would also let the node mint the same dot twice)."""
    node = make_node(tmp_path)

    async def scenario() -> None:
        key = b"k"
        seen_by_read = update(None, {}, node.actor, b"old", 1)
        await commit(node, key, seen_by_read)
        newer = update(node.storage.current(key), seen_by_read.clock, node.actor, b"new", 2)
        await commit(node, key, newer)
        local_replica(node).repair(key, seen_by_read)
        await asyncio.sleep(0.05)
        stored = decode_object(node.storage.get_blob(key) or b"")
        assert stored.values == [b"new"] and stored.clock == newer.clock

    try:
        asyncio.run(scenario())
    finally:
        node.storage.close()
