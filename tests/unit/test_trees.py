"""The node's persisted Merkle trees (dynq.repair.trees) against a real SQLite file, no sockets."""

from __future__ import annotations

import asyncio
from pathlib import Path

import apsw

from dynq.repair.merkle import Tree, leaf_hash
from dynq.node import Node
from dynq_client.versions import encode_object, update
from tests.unit.test_node_local import commit, make_node


def fresh_tree(node: Node, partition: int) -> Tree:
    """The partition's tree computed from the objects table alone (the model)."""
    trees = node.trees
    tree = Tree.empty(trees.segments, trees.fanout)
    for key, blob in node.storage.conn.execute("SELECT key, obj FROM objects WHERE partition = ?", (partition,)):
        tree.update(trees.segment(bytes(key)), leaf_hash(bytes(key), bytes(blob)))
    return tree


def test_trees_follow_commits_survive_restarts_and_verify_fixes_drift(tmp_path: Path) -> None:
    """Every commit keeps the loaded trees equal to a build from the data; a restart loads
    the same roots from the leaf rows; rows changed behind the node's back are found and
    fixed by verification; compare-and-delete reaps only an unchanged leaf."""
    node = make_node(tmp_path)
    keys = [f"k{i}".encode() for i in range(200)]

    async def write_all() -> None:
        trees = node.trees
        assert trees.tracked_partitions() == list(range(8)) and all(trees.verified(p) for p in range(8))
        for p in range(8):
            trees.tree(p)  # loaded before the writes: updated incrementally
        for i, key in enumerate(keys):
            await commit(node, key, update(node.storage.current(key), {}, node.actor, b"v%d" % i, i))
        for key in keys[:50]:  # second versions, replacing the first
            obj = node.storage.current(key)
            assert obj is not None
            await commit(node, key, update(obj, obj.clock, node.actor, b"w", 1))

    asyncio.run(write_all())
    roots = {p: node.trees.tree(p).root for p in range(8)}
    assert roots == {p: fresh_tree(node, p).root for p in range(8)}
    node.storage.close()

    node = make_node(tmp_path)  # restart: loads from leaf rows, no rebuild
    trees = node.trees
    assert {p: trees.tree(p).root for p in range(8)} == roots
    assert all(trees.verified(p) for p in range(8))
    conn = apsw.Connection(str(tmp_path / "dynq.db"))
    with conn:  # drift: one row deleted, one altered
        conn.execute("DELETE FROM objects WHERE key = ?", (keys[0],))
        conn.execute("UPDATE objects SET obj = ? WHERE key = ?",
                     (encode_object(update(None, {}, "x", b"bad", 1)), keys[1]))
    conn.close()
    p0, p1 = node.ring.partition_for(keys[0]), node.ring.partition_for(keys[1])

    async def verify() -> int:
        return sum([await trees.verify(p) for p in range(8)])

    assert asyncio.run(verify()) == 2
    assert trees.tree(p0).root == fresh_tree(node, p0).root and trees.tree(p1).root == fresh_tree(node, p1).root

    leaf = trees.leaf(p1, keys[1])
    assert leaf is not None
    assert trees.delete_if_unchanged(p1, [(keys[1], b"\0" * 16)]) == []  # changed meanwhile: kept
    assert trees.delete_if_unchanged(p1, [(keys[1], leaf)]) == [keys[1]]
    assert node.storage.get_blob(keys[1]) is None and trees.tree(p1).root == fresh_tree(node, p1).root
    node.storage.close()


def test_sliced_load_sees_writes_committed_while_it_runs(tmp_path: Path) -> None:
    """Loading a tree in slices (so the loop keeps serving) while writes commit in between
    ends with the same tree as a build from the final data."""
    node = make_node(tmp_path)
    trees = node.trees
    keys = [f"s{i}".encode() for i in range(400)]
    partition = node.ring.partition_for(keys[0])
    mine = [k for k in keys if node.ring.partition_for(k) == partition]

    async def scenario() -> None:
        for key in keys:
            await commit(node, key, update(None, {}, node.actor, b"v", 1))
        trees.trees.clear()
        loading = asyncio.get_running_loop().create_task(trees.load(partition, slice_rows=3))
        for i, key in enumerate(mine * 2):  # rewrites before and after the loader's cursor
            obj = node.storage.current(key)
            assert obj is not None
            await commit(node, key, update(obj, obj.clock, node.actor, b"w%d" % i, 2))
        tree = await loading
        assert tree.root == fresh_tree(node, partition).root
        assert trees.tree(partition) is tree

    asyncio.run(scenario())
    node.storage.close()


def test_tombstone_time_from_the_plain_form_matches_the_decoded_object() -> None:
    """verify() reads tombstone times without building objects: same answer as tombstone_ms."""
    from dynq.repair.trees import tombstone_ms, tombstone_ms_of_blob
    from dynq_client.versions import decode_object

    live = update(None, {}, "a", b"v", 5)
    dead = update(live, live.clock, "a", None, 9)
    concurrent_dead = update(dead, {}, "b", None, 12)  # two delete siblings
    mixed = update(dead, {}, "b", b"back", 11)  # a delete and a concurrent live write
    for obj in (live, dead, concurrent_dead, mixed):
        blob = encode_object(obj)
        assert tombstone_ms_of_blob(blob) == tombstone_ms(decode_object(blob))
    assert tombstone_ms_of_blob(encode_object(concurrent_dead)) == 12
    assert tombstone_ms_of_blob(b"\xc1 not msgpack") == 0


def _leaf_rows(node: Node) -> dict[bytes, bytes]:
    return {bytes(k): bytes(h) for k, h in node.storage.conn.execute("SELECT key, h FROM ae_leaves")}


def test_verify_in_small_slices_rebuilds_from_nothing_and_fixes_every_kind_of_drift(tmp_path: Path) -> None:
    """A rebuild in slices of 3 (so every slice boundary is crossed): from no leaf rows at
    all, with writes committed between the slices; then with leaves missing, wrong and
    orphaned on both sides of slice boundaries. Each ends with one leaf row per object,
    holding its leaf hash, the loaded trees equal to a build from the data, and the
    connection back at synchronous=FULL (the rebuild's own commits skip their fsync)."""
    node = make_node(tmp_path)
    trees = node.trees
    keys = [f"r{i}".encode() for i in range(300)]

    def expected() -> dict[bytes, bytes]:
        return {bytes(k): leaf_hash(bytes(k), bytes(o)).to_bytes(16, "big")
                for k, o in node.storage.conn.execute("SELECT key, obj FROM objects")}

    async def scenario() -> None:
        for key in keys:
            await commit(node, key, update(None, {}, node.actor, b"v", 1))
        with node.storage.conn:
            node.storage.conn.execute("DELETE FROM ae_leaves")
        trees.trees.clear()
        verifying = asyncio.get_running_loop().create_task(trees.verify(0, slice_rows=3))
        written = [k for k in keys if node.ring.partition_for(k) == 0][::7]
        for key in written:  # while the rebuild runs
            obj = node.storage.current(key)
            assert obj is not None
            await commit(node, key, update(obj, obj.clock, node.actor, b"w", 2))
        await verifying
        assert sum([await trees.verify(p, slice_rows=3) for p in range(1, 8)]) > 0
        assert _leaf_rows(node) == expected()

        conn = node.storage.conn
        rows = sorted(_leaf_rows(node))
        with conn:
            for key in rows[::5]:  # missing
                conn.execute("DELETE FROM ae_leaves WHERE key = ?", (key,))
            for key in rows[1::5]:  # wrong
                conn.execute("UPDATE ae_leaves SET h = ? WHERE key = ?", (b"\1" * 16, key))
            for key in rows[2::5]:  # orphaned: the object is gone, the leaf stays
                conn.execute("DELETE FROM objects WHERE key = ?", (key,))
        broken = len(rows[::5]) + len(rows[1::5]) + len(rows[2::5])
        assert sum([await trees.verify(p, slice_rows=3) for p in range(8)]) == broken
        assert sum([await trees.verify(p, slice_rows=3) for p in range(8)]) == 0
        assert _leaf_rows(node) == expected()
        for p in range(8):
            assert trees.tree(p).root == fresh_tree(node, p).root
        assert node.storage.conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL

    asyncio.run(scenario())
    node.storage.close()
