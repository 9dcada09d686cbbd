"""Request fields every part reads alike: the key, the caller's deadline, a quorum size."""

from __future__ import annotations

from typing import Any

from dynq_client import protocol as p
from dynq_client.errors import InvalidRequest, KeyTooLarge
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
