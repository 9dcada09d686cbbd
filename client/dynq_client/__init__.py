"""dynq-client: talk to a dynq cluster.

>>> from dynq_client import Client
>>> with Client(seeds=["tcp://127.0.0.1:7100"]) as db:          # doctest: +SKIP
...     db.put(b"cart:1", b"apples")
...     got = db.get(b"cart:1")
...     db.put(b"cart:1", b"apples,pears", context=got.context)
"""

from __future__ import annotations

from .buckets import BucketProps
from .client import AsyncBucket, AsyncClient, Bucket, Client, GetResult
from .errors import (
    DynqError,
    Forbidden,
    HandshakeFailed,
    InternalError,
    InvalidContext,
    InvalidRequest,
    KeyTooLarge,
    NotEnoughReplicas,
    Overloaded,
    ProtocolError,
    QuorumError,
    QuorumTimeout,
    StorageError,
    Timeout,
    PreconditionFailed,
    TooManySiblings,
    Unavailable,
    UnknownBucket,
    UnknownOp,
    ValueTooLarge,
    WrongDataType,
)
from .listing import KeyPage
from .security import CurveKeys

__version__ = "0.1.0"

__all__ = [
    "AsyncBucket",
    "AsyncClient",
    "Bucket",
    "BucketProps",
    "Client",
    "CurveKeys",
    "DynqError",
    "Forbidden",
    "GetResult",
    "HandshakeFailed",
    "InternalError",
    "InvalidContext",
    "InvalidRequest",
    "KeyPage",
    "KeyTooLarge",
    "NotEnoughReplicas",
    "Overloaded",
    "ProtocolError",
    "QuorumError",
    "QuorumTimeout",
    "StorageError",
    "Timeout",
    "PreconditionFailed",
    "TooManySiblings",
    "Unavailable",
    "UnknownBucket",
    "UnknownOp",
    "ValueTooLarge",
    "WrongDataType",
]
