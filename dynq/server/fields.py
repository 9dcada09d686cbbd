"""Request fields every part reads alike: the key, the caller's deadline, a quorum size."""

from __future__ import annotations

from typing import Any

from dynq_client import buckets as b
from dynq_client import protocol as p
from dynq_client.buckets import BucketProps, Buckets
from dynq_client.errors import InvalidRequest, KeyTooLarge, UnknownBucket
from dynq_client.protocol import Limits


def key(body: dict[str, Any], limits: Limits) -> bytes:
    """Field ``k``: a non-empty key within the size limit."""
    value = p.get_bytes(body, "k")
    assert value is not None
    if not value:
        raise InvalidRequest("key must not be empty")
    if len(value) > limits.max_key_bytes:
        raise KeyTooLarge(f"key is {len(value)} bytes; the limit is {limits.max_key_bytes}")
    return value


def deadline_s(body: dict[str, Any], request_timeout_ms: int) -> float:
    """Seconds this node may spend on other nodes (field ``t``, the caller's timeout in
    ms): a bit less than the caller will wait, and never more than this node's own."""
    ms = p.get_int(body, "t", lo=1, hi=600_000, default=request_timeout_ms)
    assert ms is not None
    return min(ms, request_timeout_ms) * 0.9 / 1000


def quorum(body: dict[str, Any], field: str, default: int, n: int) -> int:
    """An R or W (1..n) the caller may ask for, else ``default`` (capped at n)."""
    value = p.get_int(body, field, lo=1, hi=n, default=min(default, n))
    assert value is not None
    return value


def storage_key(body: dict[str, Any], limits: Limits) -> bytes:
    """Field ``k`` of a replica op: a storage key (a client's key, prefixed by its bucket
    unless it is the default bucket's; see dynq_client.buckets)."""
    value = p.get_bytes(body, "k")
    assert value is not None
    if not value:
        raise InvalidRequest("key must not be empty")
    if len(value) > limits.max_key_bytes + b.MAX_STORAGE_KEY_EXTRA:
        raise KeyTooLarge(f"storage key is {len(value)} bytes; the limit is "
                          f"{limits.max_key_bytes + b.MAX_STORAGE_KEY_EXTRA}")
    return value


_DEFAULT, _MARK = b.DEFAULT, b.MARK


def bucket_key(body: dict[str, Any], limits: Limits, buckets: Buckets) -> tuple[bytes, BucketProps | None]:
    """Fields ``k`` and ``bk`` of a client op: the storage key and the named bucket's
    properties (None: the default bucket, which costs one prefix test)."""
    key_ = body.get("k")
    if type(key_) is not bytes or not key_ or len(key_) > limits.max_key_bytes:
        key_ = key(body, limits)  # the error (or a bytes subclass)
    name = body.get("bk")
    if name is None or name == _DEFAULT:
        if key_[:2] == _MARK:
            b.check_default_key(key_)
        return key_, None
    if type(name) is not str:
        raise InvalidRequest(f"field 'bk' must be a bucket name (a string), got {type(name).__name__}")
    props = buckets.get(name)
    if props is None:
        raise UnknownBucket(f"no bucket called {name!r:.80} (dynq bucket list; dynq bucket create NAME)")
    return b.storage_key(name, key_), props
