"""Merkle trees (dynq.repair.merkle) and the anti-entropy rate limiter: pure code, no sockets."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynq.repair.exchange import RateLimiter
from dynq.repair.merkle import Tree, diff_keys, diff_trees, leaf_hash, segment_of
from dynq_client.ring import key_hash

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEGMENTS, FANOUT = 64, 4  # small trees: every level and collisions in segments get exercised

Model = dict[bytes, bytes]  # key -> encoded object (what a replica stores)


def segment(key: bytes) -> int:
    return segment_of(key_hash(key), 3, SEGMENTS)


def tree_of(model: Model) -> Tree:
    return Tree.from_segments([(segment(k), leaf_hash(k, v)) for k, v in model.items()], SEGMENTS, FANOUT)


def keys_of(model: Model, segments: list[int]) -> dict[bytes, int]:
    wanted = set(segments)
    return {k: leaf_hash(k, v) for k, v in model.items() if segment(k) in wanted}


keys = st.binary(min_size=1, max_size=6)
values = st.sampled_from([b"v1", b"v2", b"v3", b"tomb"])
models = st.dictionaries(keys, values, max_size=60)


@PROPERTY
@given(models, st.lists(st.tuples(keys, st.one_of(st.none(), values)), max_size=20))
def test_diff_equals_the_set_difference_of_the_models(base: Model, edits: list[tuple[bytes, bytes | None]]) -> None:
    """Descending two replicas' trees and comparing the keys of the differing segments
    reports exactly the keys whose (key, version) pairs differ between the two models."""
    a = dict(base)
    b = dict(base)
    for key, value in edits:  # b drifts: keys removed, changed or added
        if value is None:
            b.pop(key, None)
        else:
            b[key] = value
    segments = diff_trees(tree_of(a), tree_of(b))
    found = diff_keys(keys_of(a, segments), keys_of(b, segments))
    expected = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    assert set(found.keys) == expected
    assert set(found.only_local) == a.keys() - b.keys()
    assert set(found.only_remote) == b.keys() - a.keys()
    assert (tree_of(a).root == tree_of(b).root) == (not expected)


@PROPERTY
@given(models, st.lists(st.tuples(keys, st.one_of(st.none(), values)), max_size=30))
def test_incremental_updates_equal_a_build_from_scratch(base: Model, writes: list[tuple[bytes, bytes | None]]) -> None:
    """XORing old ^ new leaf hashes into a tree on every write gives the same tree as
    building it from the final data (what lets the write path skip rebuilds)."""
    model = dict(base)
    tree = tree_of(model)
    for key, value in writes:
        old = leaf_hash(key, model[key]) if key in model else 0
        if value is None:
            model.pop(key, None)
        else:
            model[key] = value
        new = leaf_hash(key, model[key]) if key in model else 0
        tree.update(segment(key), old ^ new)
    assert tree.levels == tree_of(model).levels


def test_tree_shape_and_children() -> None:
    """1024 segments with fanout 32: root, 32 inner nodes, 1024 segments; a segment's
    change shows in exactly one node per level."""
    tree = Tree.empty()
    assert [len(level) for level in tree.levels] == [1, 32, 1024]
    tree.update(700, 5)
    assert tree.root == 5 and tree.levels[1][700 // 32] == 5 and tree.levels[2][700] == 5
    assert tree.children(1, 700 // 32)[700 % 32] == 5
    assert diff_trees(tree, Tree.empty()) == [700]


def test_leaf_hash_separates_key_from_value() -> None:
    """(key, object) pairs cannot run into each other: the key's length is hashed first."""
    assert leaf_hash(b"ab", b"c") != leaf_hash(b"a", b"bc")


def test_rate_limiter_paces_objects_and_bytes() -> None:
    """The slower of the two budgets decides, with a small burst allowance."""
    now = [100.0]
    limiter = RateLimiter(objects_per_s=100, bytes_per_s=1000, burst_s=0.0, clock=lambda: now[0])
    assert abs(limiter.delay(10, 10) - 0.1) < 1e-9  # 10 objects at 100/s
    assert abs(limiter.delay(0, 1000) - 1.01) < 1e-9  # 1010 bytes booked at 1000/s
    now[0] += 5
    assert abs(limiter.delay(1, 1) - 0.01) < 1e-9  # idle time is not banked beyond the burst
