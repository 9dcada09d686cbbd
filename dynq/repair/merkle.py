"""Merkle trees for anti-entropy: pure code, no I/O.

One tree per partition per replica. Its leaves are *segments*: a key's segment is the
``log2(segments)`` bits of its ring hash that follow the partition bits, so keys spread
evenly over the segments and both replicas put a key in the same segment. A segment's
hash is the XOR of the hashes of the keys in it, and every inner node is the XOR of its
children (``fanout`` of them)::

    level 0                      root = s0 ^ s1 ^ ... ^ s1023
                       /           |            \\
    level 1       n0 = s0^..^s31   n1   ...   n31              (fanout 32)
                 /    |    \\
    level 2    s0    s1 ... s31     ...                        (1024 segments)
              /  \\
    keys   h(k1, v1) ^ h(k7, v7) ...                           (leaf = H(key, object bytes))

XOR instead of hashing the concatenation of the children (the TicTac trees of Riak's
``kv_index_tictactree`` do the same) is what makes the tree cheap to keep current: a
write that changes a key's leaf hash from ``old`` to ``new`` XORs ``old ^ new`` into one
segment and its ancestors, without reading any other key. Two replicas whose keys hash
the same have equal trees; a difference in any key shows up in its segment and every
ancestor (unless two 128-bit differences cancel, which random hashes make negligible).

Exchange descends from the root: compare, ask for the children of the nodes that
differ, repeat down to the segments, then compare the (key, hash) lists of the differing
segments. :func:`differing_children`, :func:`diff_trees` and :func:`diff_keys` are the
steps, shared by the networked exchange and the property tests.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable, Mapping

HASH_BYTES = 16
SEGMENTS = 1024
FANOUT = 32


def leaf_hash(key: bytes, blob: bytes) -> int:
    """The hash of one key holding one encoded (canonical) object.

    The key's length goes first so that (key, blob) pairs can never run into each other.
    """
    return int.from_bytes(leaf_hash_bytes(key, blob), "big")


def leaf_hash_bytes(key: bytes, blob: bytes) -> bytes:
    """:func:`leaf_hash` as the 16 bytes a leaf row stores (what a rebuild compares)."""
    h = hashlib.blake2b(len(key).to_bytes(4, "big"), digest_size=HASH_BYTES)
    h.update(key)
    h.update(blob)
    return h.digest()


def hash_bytes(h: int) -> bytes:
    return h.to_bytes(HASH_BYTES, "big")


def hash_int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def segment_of(key_hash: int, partition_bits: int, segments: int = SEGMENTS, ring_bits: int = 128) -> int:
    """The segment of a key with ring hash ``key_hash``: the bits after the partition's."""
    seg_bits = segments.bit_length() - 1
    return (key_hash >> (ring_bits - partition_bits - seg_bits)) & (segments - 1)


@dataclass
class Tree:
    """A partition's tree: ``levels[0]`` is ``[root]``, ``levels[-1]`` the segments."""

    segments: int
    fanout: int
    levels: list[list[int]]  # levels[d][i]: XOR of everything below node i of depth d

    @classmethod
    def empty(cls, segments: int = SEGMENTS, fanout: int = FANOUT) -> Tree:
        if segments < 1 or segments & (segments - 1) or fanout < 2 or fanout & (fanout - 1):
            raise ValueError("segments and fanout must be powers of two (fanout >= 2)")
        sizes = [segments]
        while sizes[-1] > 1:
            sizes.append(max(1, sizes[-1] // fanout))
        return cls(segments, fanout, [[0] * n for n in reversed(sizes)])

    @classmethod
    def from_segments(cls, hashes: Mapping[int, int] | Iterable[tuple[int, int]],
                      segments: int = SEGMENTS, fanout: int = FANOUT) -> Tree:
        """Build from (segment, hash) pairs; a segment listed twice XORs (one row per key)."""
        tree = cls.empty(segments, fanout)
        items = hashes.items() if isinstance(hashes, Mapping) else hashes
        for segment, h in items:
            tree.update(segment, h)
        return tree

    @property
    def depth(self) -> int:
        """Index of the segment level."""
        return len(self.levels) - 1

    @property
    def root(self) -> int:
        return self.levels[0][0]

    def __post_init__(self) -> None:
        # (level, segments per node of that level), root first: the write path's only loop
        self._path = [(level, self.segments // len(level)) for level in self.levels]

    def update(self, segment: int, delta: int) -> None:
        """XOR ``delta`` (old leaf hash ^ new leaf hash) into a segment and its ancestors."""
        if delta:
            for level, per in self._path:
                level[segment // per] ^= delta

    def children(self, depth: int, index: int) -> list[int]:
        """Hashes of the children (at ``depth + 1``) of node ``index`` at ``depth``."""
        below = self.levels[depth + 1]
        per = len(below) // len(self.levels[depth])
        return below[index * per:(index + 1) * per]

    def children_per_node(self, depth: int) -> int:
        return len(self.levels[depth + 1]) // len(self.levels[depth])


def differing_children(tree: Tree, depth: int, remote: Mapping[int, list[int]]) -> list[int]:
    """Indices at ``depth + 1`` whose hash differs, given the remote children of some nodes
    at ``depth`` (node index -> that node's children hashes on the other replica)."""
    out: list[int] = []
    per = tree.children_per_node(depth)
    for index in sorted(remote):
        mine = tree.children(depth, index)
        theirs = remote[index]
        if len(theirs) != per:
            raise ValueError(f"node {index} at depth {depth}: {len(theirs)} children, expected {per}")
        out.extend(index * per + i for i, (a, b) in enumerate(zip(mine, theirs)) if a != b)
    return out


def diff_trees(a: Tree, b: Tree) -> list[int]:
    """Segments whose hashes differ, found by descending only into differing branches
    (what an exchange does over the network, here with both trees in hand)."""
    if (a.segments, a.fanout) != (b.segments, b.fanout):
        raise ValueError("trees of different shapes cannot be compared")
    if a.root == b.root:
        return []
    frontier = [0]
    for depth in range(a.depth):
        frontier = differing_children(a, depth, {i: b.children(depth, i) for i in frontier})
    return frontier


@dataclass(frozen=True)
class KeyDiff:
    """How two replicas' (key -> leaf hash) maps of some segments differ."""

    only_local: frozenset[bytes]
    only_remote: frozenset[bytes]
    different: frozenset[bytes]  # on both, with different hashes

    @property
    def keys(self) -> frozenset[bytes]:
        return self.only_local | self.only_remote | self.different


def diff_keys(local: Mapping[bytes, int], remote: Mapping[bytes, int]) -> KeyDiff:
    only_local = frozenset(k for k in local if k not in remote)
    only_remote = frozenset(k for k in remote if k not in local)
    different = frozenset(k for k, h in local.items() if k in remote and remote[k] != h)
    return KeyDiff(only_local, only_remote, different)
