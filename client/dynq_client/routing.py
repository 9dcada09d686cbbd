"""The routing table a client caches: the ring (members, addresses, ownership, epoch)
plus the cluster's request defaults and size limits.

Nodes serve it through the ``routing_table`` op; every reply carries the responder's ring
epoch, and a client that sees an epoch newer than its table's fetches the table again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .buckets import EMPTY_BUCKETS, BucketProps, Buckets
from .errors import ProtocolError
from .protocol import Limits
from .ring import Ring, RingError


@dataclass(frozen=True)
class RoutingTable:
    ring: Ring
    r: int  # cluster default read quorum
    w: int  # cluster default write quorum
    max_key_bytes: int
    max_value_bytes: int
    buckets: Buckets = EMPTY_BUCKETS  # named buckets (the default one is implicit)

    @property
    def epoch(self) -> int:
        return self.ring.epoch

    def bucket(self, name: str) -> BucketProps | None:
        """A named bucket's properties; None for an unknown one. The default bucket's are
        the ring's n and this table's r and w."""
        return self.buckets.get(name)

    def to_wire(self) -> dict[str, Any]:
        return {
            "ring": self.ring.to_wire(),
            "r": self.r,
            "w": self.w,
            "max_key_bytes": self.max_key_bytes,
            "max_value_bytes": self.max_value_bytes,
            "buckets": self.buckets.to_wire(),
        }

    @classmethod
    def from_wire(cls, data: object) -> RoutingTable:
        if not isinstance(data, dict):
            raise ProtocolError("routing table must be a map")
        try:
            ring = Ring.from_wire(data.get("ring"))
        except RingError as exc:
            raise ProtocolError(f"invalid ring in routing table: {exc}") from exc
        fields = {}
        for name in ("r", "w", "max_key_bytes", "max_value_bytes"):
            value = data.get(name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ProtocolError(f"routing table field '{name}' must be a positive integer")
            fields[name] = value
        buckets = Buckets.from_wire(data.get("buckets"))  # absent from a node older than buckets
        return cls(ring=ring, buckets=buckets, **fields)

    def limits(self, base: Limits) -> Limits:
        """``base`` with the cluster's key/value limits."""
        from dataclasses import replace

        return replace(base, max_key_bytes=self.max_key_bytes, max_value_bytes=self.max_value_bytes)
