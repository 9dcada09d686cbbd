"""Buckets: namespaces of keys, each with its own replication factor, quorums and
conflict policy (Dynamo's per-service N/R/W and reconciliation, as Riak's bucket types).

A bucket's properties live in the cluster state (versioned, gossiped, changed only by
the claimant), and every routing table carries them, so nodes and clients agree on each
bucket's ``n``. The *default* bucket (``"default"``) is implicit: its ``n`` is the ring's,
its quorums are the cluster's defaults, and its keys are stored exactly as before buckets
existed, so a database written by an older version needs no migration.

**Storage keys.** Every part below the request handlers (storage, hints, Merkle leaves,
transfers, replica writes) works on one byte string per key, the *storage key*::

    default bucket:  key                                   (unchanged)
    bucket "carts":  b"\\x00B" + len("carts") + b"carts" + key

so the keys of one named bucket are one contiguous range of the objects' primary-key
index (listing a bucket reads only that bucket's rows), and a storage key alone tells
which bucket, hence which ``n``, it belongs to. The price: keys of the default bucket
must not start with ``b"\\x00B"`` (refused with a clear error); they would be read as
bucket keys. The ring position is the MD5 of the storage key, so a bucket's keys spread
over all partitions.

Pure: no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from .errors import InvalidRequest, ProtocolError
from .protocol import short_repr

DEFAULT = "default"
"""Name of the implicit bucket that holds every key written without a bucket."""

MARK = b"\x00B"
"""Storage keys of named buckets start with this (see the module docstring)."""

MAX_NAME = 64
NAME_RE = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
CONFLICTS = ("siblings", "lww")
"""``siblings``: concurrent writes are all kept (the application resolves them);
``lww``: the sibling with the newest timestamp wins, the others are dropped (loses
concurrent writes, by design)."""

MAX_STORAGE_KEY_EXTRA = len(MARK) + 1 + MAX_NAME
"""A storage key is at most this much longer than the key a client gave."""

PROPS = ("n", "r", "w", "pw", "conflict", "max_siblings", "ttl", "datatype")
"""Properties an operator may set (``n`` and ``datatype`` only at creation). ``ttl``: seconds a put lives
when it gives no ttl of its own (set 0 to remove the default); in a typed bucket, seconds a
key lives after its last update."""

MAX_TTL_S = 10 * 365 * 86400
"""The longest time to live, of a bucket's default or of one put (ten years)."""

DATATYPES = ("counter", "set", "map", "register", "flag", "none")
"""``datatype``: the keys hold that convergent type's state (dynq_client.crdt), merged by
the cluster; ``none`` (or unset): plain values with siblings."""


class BucketError(InvalidRequest):
    """A bucket that cannot be created or changed as asked; the message says why."""


@dataclass(frozen=True, slots=True)
class BucketProps:
    """One bucket's properties. Unknown properties of a newer version are kept in
    ``extra`` so that a state round-trips through an older node unchanged."""

    name: str
    n: int
    r: int
    w: int
    pw: int = 0
    conflict: str = "siblings"
    max_siblings: int | None = None  # None: the node's limits.max_siblings
    ttl: int | None = None  # default time to live of its puts (seconds); None: never expire
    datatype: str | None = None  # one of DATATYPES: the keys' convergent type (None/none: plain)
    extra: tuple[tuple[str, Any], ...] = field(default=(), compare=True)

    @property
    def lww(self) -> bool:
        return self.conflict == "lww"

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"n": self.n, "r": self.r, "w": self.w, "pw": self.pw, "conflict": self.conflict}
        if self.max_siblings is not None:
            wire["max_siblings"] = self.max_siblings
        if self.ttl is not None:
            wire["ttl"] = self.ttl
        if self.datatype is not None:
            wire["datatype"] = self.datatype
        for k, v in self.extra:
            wire[k] = v
        return wire

    def describe(self) -> dict[str, Any]:
        """Every property, for `dynq bucket show`."""
        return {"name": self.name, "n": self.n, "r": self.r, "w": self.w, "pw": self.pw,
                "conflict": self.conflict, "max_siblings": self.max_siblings, "ttl": self.ttl,
                "datatype": self.datatype, **dict(self.extra)}

    @classmethod
    def from_wire(cls, name: str, data: object) -> BucketProps:
        """Parse an untrusted peer's bucket; ProtocolError on anything inconsistent."""
        check_name(name, error=ProtocolError)
        if not isinstance(data, dict):
            raise ProtocolError(f"bucket {name!r}: properties must be a map, got {type(data).__name__}")
        known = {"n", "r", "w", "pw", "conflict", "max_siblings", "ttl", "datatype"}
        extra = tuple(sorted((k, v) for k, v in data.items() if isinstance(k, str) and k not in known))
        try:
            props = cls(name, data.get("n"), data.get("r"), data.get("w"), data.get("pw", 0),  # type: ignore[arg-type]
                        data.get("conflict", "siblings"), data.get("max_siblings"), data.get("ttl"),
                        data.get("datatype"), extra)
            props.check()
        except BucketError as exc:
            raise ProtocolError(exc.message) from exc
        return props

    def check(self, members: int | None = None, max_siblings: int | None = None) -> None:
        """BucketError unless every property is in range (``n`` at most ``members``)."""
        def integer(name: str, value: object, lo: int, hi: int | None) -> None:
            if not isinstance(value, int) or isinstance(value, bool) or value < lo or (hi is not None and value > hi):
                bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
                raise BucketError(f"bucket {self.name!r}: {name} must be an integer {bound}, got {short_repr(value)}")

        integer("n", self.n, 1, members)
        integer("r", self.r, 1, self.n)
        integer("w", self.w, 1, self.n)
        integer("pw", self.pw, 0, self.n)
        if self.conflict not in CONFLICTS:
            raise BucketError(f"bucket {self.name!r}: conflict must be one of {', '.join(CONFLICTS)}, "
                              f"got {short_repr(self.conflict)}")
        if self.max_siblings is not None:
            integer("max_siblings", self.max_siblings, 1, max_siblings)
        if self.ttl is not None:
            integer("ttl", self.ttl, 1, MAX_TTL_S)
        if self.datatype is not None and self.datatype not in DATATYPES:
            raise BucketError(f"bucket {self.name!r}: datatype must be one of {', '.join(DATATYPES)}, "
                              f"got {short_repr(self.datatype)}")


def check_name(name: object, *, error: type[InvalidRequest | ProtocolError] = BucketError) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise error(f"a bucket name is 1-{MAX_NAME} characters of A-Z a-z 0-9 _ . -, got {short_repr(name)}")
    return name


def new_bucket(name: str, *, n: int, r: int | None = None, w: int | None = None, pw: int = 0,
               conflict: str = "siblings", max_siblings: int | None = None, ttl: int | None = None,
               datatype: str | None = None, members: int, default_r: int = 2, default_w: int = 2,
               limit_siblings: int | None = None) -> BucketProps:
    """A bucket to create: quorums default to the cluster's, capped at ``n``."""
    check_name(name)
    if name == DEFAULT:
        raise BucketError("the default bucket exists already (its n is the ring's)")
    props = BucketProps(name, n, min(default_r, n) if r is None else r, min(default_w, n) if w is None else w,
                        pw, conflict, max_siblings, ttl, datatype)
    props.check(members, limit_siblings)
    return props


def changed(props: BucketProps, changes: Mapping[str, Any], *, limit_siblings: int | None = None) -> BucketProps:
    """``props`` with ``changes`` applied; ``n`` cannot change (replicas would be stranded)."""
    if "n" in changes and changes["n"] != props.n:
        raise BucketError(f"bucket {props.name!r}: n cannot change after creation (it is {props.n}): "
                          "create a new bucket and copy the keys (dynq export / import)")
    if "datatype" in changes and changes["datatype"] != props.datatype:
        raise BucketError(f"bucket {props.name!r}: datatype cannot change after creation (it is "
                          f"{props.datatype or 'none'}): its keys hold that type's state")
    unknown = [k for k in changes if k not in PROPS]
    if unknown:
        raise BucketError(f"unknown bucket properties: {', '.join(sorted(unknown))} (known: {', '.join(PROPS)})")
    changes = {k: (None if k == "ttl" and v == 0 else v) for k, v in changes.items() if k != "n"}
    new = replace(props, **changes)
    new.check(None, limit_siblings)
    return new


# --- storage keys --------------------------------------------------------------------------


def prefix(bucket: str) -> bytes:
    """The common start of every storage key of ``bucket`` (empty for the default)."""
    if bucket == DEFAULT:
        return b""
    raw = bucket.encode()
    return MARK + bytes((len(raw),)) + raw


def storage_key(bucket: str, key: bytes) -> bytes:
    if bucket == DEFAULT:
        return key
    return prefix(bucket) + key


def bucket_of(skey: bytes) -> str:
    """The bucket a storage key belongs to (cheap for the default bucket)."""
    if not skey.startswith(MARK) or len(skey) < 3:
        return DEFAULT
    size = skey[2]
    return skey[3:3 + size].decode("ascii", "replace")


def split(skey: bytes) -> tuple[str, bytes]:
    """(bucket, key) of a storage key."""
    if not skey.startswith(MARK) or len(skey) < 3:
        return DEFAULT, skey
    size = skey[2]
    return skey[3:3 + size].decode("ascii", "replace"), skey[3 + size:]


def check_default_key(key: bytes) -> None:
    """Keys of the default bucket may not look like storage keys of a named bucket."""
    if key.startswith(MARK):
        raise InvalidRequest("keys of the default bucket may not start with b'\\x00B' (it marks bucket keys)")


def range_end(start: bytes) -> bytes:
    """The smallest byte string greater than every string starting with ``start``."""
    trimmed = start.rstrip(b"\xff")
    return trimmed[:-1] + bytes((trimmed[-1] + 1,)) if trimmed else b""


def tree_id(q: int, ring_n: int, partition: int, n: int) -> int:
    """The anti-entropy tree (and transfer unit) of the keys of ``partition`` whose bucket
    has replication factor ``n``: the partition itself for the ring's n (so the trees of
    a database from before buckets keep their ids), ``partition + q * n`` otherwise."""
    return partition if n == ring_n else partition + q * n


def tree_split(q: int, ring_n: int, tid: int) -> tuple[int, int]:
    """(partition, n) of a tree id (see :func:`tree_id`)."""
    return (tid, ring_n) if tid < q else (tid % q, tid // q)


class Buckets:
    """The named buckets of a cluster state, by name (an immutable mapping with helpers)."""

    __slots__ = ("_by_name", "_wire")

    def __init__(self, props: Mapping[str, BucketProps] | None = None) -> None:
        self._by_name: dict[str, BucketProps] = dict(sorted((props or {}).items()))
        self._wire: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return bool(self._by_name)

    def __len__(self) -> int:
        return len(self._by_name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Buckets) and other._by_name == self._by_name

    def __hash__(self) -> int:
        return hash(tuple(self._by_name.items()))

    def __repr__(self) -> str:
        return f"Buckets({sorted(self._by_name)})"

    def get(self, name: str) -> BucketProps | None:
        return self._by_name.get(name)

    def names(self) -> list[str]:
        return list(self._by_name)

    def values(self) -> list[BucketProps]:
        return list(self._by_name.values())

    def with_bucket(self, props: BucketProps) -> Buckets:
        return Buckets({**self._by_name, props.name: props})

    def n_of(self, skey: bytes, default_n: int) -> int | None:
        """The replication factor of a storage key: ``default_n`` for the default bucket,
        None for a bucket this state does not know (yet)."""
        if not skey.startswith(MARK):
            return default_n
        props = self._by_name.get(bucket_of(skey))
        return None if props is None else props.n

    def props_of(self, skey: bytes) -> BucketProps | None:
        """The properties of a storage key's named bucket (None: default or unknown)."""
        if not skey.startswith(MARK):
            return None
        return self._by_name.get(bucket_of(skey))

    def ns(self, default_n: int) -> list[int]:
        """Every replication factor in use, the default one first."""
        return [default_n] + sorted({b.n for b in self._by_name.values() if b.n != default_n})

    def to_wire(self) -> dict[str, Any]:
        if self._wire is None:
            self._wire = {name: b.to_wire() for name, b in self._by_name.items()}
        return self._wire

    @classmethod
    def from_wire(cls, data: object) -> Buckets:
        if data is None:
            return EMPTY_BUCKETS
        if not isinstance(data, dict):
            raise ProtocolError(f"buckets must be a map of name -> properties, got {type(data).__name__}")
        return cls({name: BucketProps.from_wire(name, raw) for name, raw in data.items()})


EMPTY_BUCKETS = Buckets()
