"""Listing a bucket's keys, the node's side: one bounded page per request.

The client plans the coverage (:mod:`dynq_client.listing`): every partition is read from
one replica of the *serving* ring that holds it completely for the bucket's ``n``, and it
asks for the next page only after it consumed the last one, so a listing holds at most
one page in memory on either side (back-pressure by pull). A node refuses partitions it
is not a primary of for that ``n`` (its copy may be partial: a partition that moved to
it, or away from it, since the client's table was made); the client then refreshes its
table and asks another replica. A page reads at most ``MAX_SCAN`` rows, through the
(partition, key) index restricted to the bucket's key range (see
:func:`dynq_client.buckets.prefix`), so listing a small bucket never reads a big one's
rows; tombstones are skipped. Scans are paced like anti-entropy: each reply says how
long the client should wait before the next page (``wait``), from a token bucket of
rows and bytes per second per node.

Request ``list_keys``::

    {"bk": bucket?, "parts": [p, ...ascending], "after": [p, key]?, "limit": int, "prefix": bytes?}

Reply: ``{"keys": [[p, key], ...], "next": [p, key] | None, "wait": seconds}``; ``next``
is the cursor to resume from (None: every partition asked for is done).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from dynq_client import buckets as b
from dynq_client import protocol as p
from dynq_client.errors import InvalidRequest, ProtocolError, Unavailable, UnknownBucket
from dynq_client.protocol import Request
from dynq_client.versions import decode_object

from ..config import NodeConfig
from ..env import SYSTEM
from ..server.ports import ClusterView, Handler
from ..server.responder import Responder
from ..store.storage import Storage
from .typed_store import is_typed, typed_live

MAX_PAGE = 10_000  # keys per reply at most
MAX_SCAN = 2_000  # rows read per request at most (tombstones and other partitions' rows count)
ROWS_PER_S = 20_000.0  # listing budget per node (anti-entropy's is 500 objects/s: listing reads, it does not write)
BYTES_PER_S = 64.0 * 1024 * 1024

CLIENT_OPS = frozenset({p.OP_LIST_KEYS})


class Pacer:
    """A token bucket of rows and bytes per second with ``burst_s`` of credit (GCRA, as
    anti-entropy's RateLimiter): :meth:`delay` books what a page read and says how long
    the reader should wait before the next one."""

    def __init__(self, rows_per_s: float, bytes_per_s: float, burst_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rows_per_s, self.bytes_per_s, self.burst_s, self.clock = rows_per_s, bytes_per_s, burst_s, clock
        self._paid_at = 0.0  # virtual time up to which the budget is spent

    def delay(self, rows: int, nbytes: int) -> float:
        now = self.clock()
        cost = max(rows / self.rows_per_s, nbytes / self.bytes_per_s)
        self._paid_at = max(self._paid_at, now - self.burst_s) + cost
        return max(0.0, self._paid_at - now)


class KeyLister:
    """The ``list_keys`` op."""

    def __init__(self, cluster: ClusterView, storage: Storage, config: NodeConfig,
                 clock: Callable[[], float] = time.monotonic, wall_ms: Callable[[], int] = SYSTEM.wall_ms) -> None:
        self.wall_ms = wall_ms  # what expiries of values compare with
        self.cluster = cluster
        self.storage = storage
        self.config = config
        self.name = config.name
        self.pacer = Pacer(ROWS_PER_S, BYTES_PER_S, burst_s=0.2, clock=clock)  # pacing of all listings on this node
        self.rows_scanned = 0  # total, for stats

    def handlers(self) -> dict[str, Handler]:
        return {p.OP_LIST_KEYS: self.handle_list_keys}

    def handle_list_keys(self, responder: Responder, req: Request) -> None:
        body = req.body
        state = self.cluster.state
        ring = state.ring
        name = body.get("bk", b.DEFAULT)
        if not isinstance(name, str):
            raise InvalidRequest("field 'bk' must be a bucket name")
        if name == b.DEFAULT:
            n = ring.n
        else:
            props = state.buckets.get(name)
            if props is None:
                raise UnknownBucket(f"no bucket called {name!r:.80}")
            n = props.n
        parts = body.get("parts")
        if (not isinstance(parts, list) or not parts or len(parts) > ring.q
                or not all(type(x) is int and 0 <= x < ring.q for x in parts) or parts != sorted(set(parts))):
            raise InvalidRequest(f"field 'parts' must be ascending distinct partitions in 0..{ring.q - 1}")
        limit = p.get_int(body, "limit", lo=1, hi=MAX_PAGE, default=1000)
        assert limit is not None
        now_ms = self.wall_ms()
        user_prefix = p.get_bytes(body, "prefix", required=False) or b""
        after = body.get("after")
        after_p, after_key = -1, None
        if after is not None:
            if (not isinstance(after, list) or len(after) != 2 or type(after[0]) is not int
                    or not isinstance(after[1], bytes)):
                raise InvalidRequest("field 'after' must be [partition, key]")
            after_p, after_key = after[0], after[1]
        not_mine = [x for x in parts if x >= after_p and self.name not in ring.preference_list(x, n).primaries]
        if not_mine:
            raise Unavailable(f"{self.name} is not a primary of partitions {not_mine[:8]} for n={n} "
                              f"(ring epoch {ring.epoch}); ask one of their primaries")
        ranges = self._ranges(name, user_prefix)
        plen = len(b.prefix(name))
        keys: list[list[Any]] = []
        scanned = nbytes = 0
        cursor: list[Any] | None = None  # where the next page starts; None: all asked for is done
        for partition in parts:
            if partition < after_p:
                continue
            last = b.storage_key(name, after_key) if partition == after_p and after_key is not None else None
            resume = last  # every range of the partition resumes after the same key
            for lo, hi in ranges:
                start = resume
                while cursor is None:
                    budget = min(MAX_SCAN - scanned, limit - len(keys))
                    if budget <= 0:
                        cursor = [partition, b"" if last is None else last[plen:]]
                        break
                    rows = self.storage.range_rows(partition, lo, hi, start, budget)
                    for skey, blob in rows:
                        scanned += 1
                        nbytes += len(blob)
                        start = last = skey
                        try:
                            live = (typed_live(blob, now_ms) if is_typed(blob)
                                    else decode_object(blob, self.config.limits).live(now_ms).found)
                        except ProtocolError:
                            live = True  # list what we cannot read: a get will say what is wrong
                        if live:
                            keys.append([partition, skey[plen:]])
                    if len(rows) < budget:
                        break  # this range of this partition is done
            if cursor is not None:
                break
        self.rows_scanned += scanned
        wait = self.pacer.delay(max(scanned, 1), nbytes)
        responder.ok({"keys": keys, "next": cursor, "wait": round(wait, 4)})

    @staticmethod
    def _ranges(name: str, user_prefix: bytes) -> list[tuple[bytes, bytes | None]]:
        """The storage-key ranges of a bucket's keys starting with ``user_prefix``."""
        if name != b.DEFAULT:
            lo = b.prefix(name) + user_prefix
            return [(lo, b.range_end(lo) or None)]
        if user_prefix.startswith(b.MARK):
            return []  # no key of the default bucket starts so
        if user_prefix:
            hi = b.range_end(user_prefix) or None
            if user_prefix < b.MARK and (hi is None or hi > b.MARK):  # e.g. prefix b"\x00": skip the bucket keys
                return [(user_prefix, b.MARK), (b.range_end(b.MARK), hi)]
            return [(user_prefix, hi)]
        return [(b"", b.MARK), (b.range_end(b.MARK), None)]
