"""A Jepsen-style history: every operation of a fault test, as invoke and completion events.

A worker calls :meth:`History.invoke` before it sends an operation and
:meth:`History.complete` after, with the outcome classified by :func:`classify`:

* ``ok``: the cluster acknowledged it;
* ``fail``: it certainly did not take effect (the client or the coordinator guarantees
  it was executed nowhere);
* ``unknown``: it may or may not have taken effect (a timeout, a quorum missed after
  some replica may already have written it, a connection lost with it in flight).

An operation invoked and never completed (the test stopped first) counts as unknown.
The history is plain data; the checkers (``checker.py``) read it without any I/O.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from dynq_client.errors import (
    DynqError,
    InvalidRequest,
    NotEnoughReplicas,
    PreconditionFailed,
    QuorumError,
    StorageError,
    Timeout,
    TooManySiblings,
    Unavailable,
)

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"

def classify(exc: BaseException) -> str:
    """``fail`` only when the error guarantees the write was executed nowhere, else ``unknown``.

    * ``Unavailable`` (not a timeout): the client tried every node and none took the write,
      or the node refused it before executing (shutting down).
    * ``InvalidRequest``, ``TooManySiblings``, ``PreconditionFailed``: refused before
      anything was staged.
    * ``StorageError`` as the whole answer: the coordinator's own commit failed, and it
      never shows a dot to other replicas before it is durable locally.
    * ``NotEnoughReplicas``: a coordinator refused before writing (too few replicas
      reachable). Any other quorum error (some replica may hold it) and every timeout is
      unknown.
    """
    if isinstance(exc, Timeout):  # includes QuorumTimeout
        return UNKNOWN
    if isinstance(exc, (Unavailable, InvalidRequest, TooManySiblings, PreconditionFailed, StorageError,
                        NotEnoughReplicas)):
        return FAIL
    if isinstance(exc, QuorumError):
        return UNKNOWN
    if isinstance(exc, DynqError):
        return UNKNOWN
    return UNKNOWN


@dataclass
class Op:
    """One operation: its invocation and (once known) its completion."""

    index: int
    process: int  # the worker that ran it
    f: str  # "add" (set element), "put", "delete", "read"
    key: str
    value: Any = None  # add: the int element; put: the unique str value; else None
    covers: frozenset[str] = frozenset()  # put/delete: the values of the read whose context it carries
    invoke_t: float = 0.0
    type: str = "invoke"  # then "ok", "fail" or "unknown"
    complete_t: float | None = None
    result: Any = None  # read: what it returned
    error: str = ""
    ttl: int | None = None  # put: the time to live it asked for (None: none)
    invoke_wall: float = 0.0  # wall-clock time of the invocation (expiry is wall-clock)
    complete_wall: float | None = None

    @property
    def completed(self) -> bool:
        return self.type != "invoke"

    @property
    def outcome(self) -> str:
        """ok / fail / unknown; an operation never completed is unknown."""
        return self.type if self.completed else UNKNOWN


@dataclass
class History:
    """Thread-safe, append-only record of operations (indexes are invocation order)."""

    ops: list[Op] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def invoke(self, process: int, f: str, key: str, value: Any = None, covers: Iterable[str] = (),
               ttl: int | None = None) -> Op:
        with self._lock:
            op = Op(len(self.ops), process, f, key, value, frozenset(covers), time.monotonic() - self.started,
                    ttl=ttl, invoke_wall=time.time())
            self.ops.append(op)
            return op

    def complete(self, op: Op, type_: str, result: Any = None, error: str = "") -> None:
        assert type_ in (OK, FAIL, UNKNOWN), type_
        assert not op.completed, f"op {op.index} completed twice"
        op.type, op.result, op.error = type_, result, error
        op.complete_t = time.monotonic() - self.started
        op.complete_wall = time.time()

    def fail_or_unknown(self, op: Op, exc: BaseException) -> None:
        """Complete ``op`` from an exception, classified by :func:`classify`."""
        self.complete(op, classify(exc), error=f"{type(exc).__name__}: {exc}"[:300])

    def dump(self, path: Path) -> None:
        """One JSON line per operation (for reading a failed run's history)."""
        with path.open("w") as fh:
            for op in self.ops:
                fh.write(json.dumps({
                    "index": op.index, "process": op.process, "f": op.f, "key": op.key, "value": op.value,
                    "covers": sorted(op.covers), "invoke_t": round(op.invoke_t, 4), "type": op.outcome,
                    "complete_t": None if op.complete_t is None else round(op.complete_t, 4),
                    "result": sorted(op.result) if isinstance(op.result, frozenset) else op.result,
                    "error": op.error, "ttl": op.ttl, "invoke_wall": round(op.invoke_wall, 4),
                }) + "\n")

    def counts(self, fs: Iterable[str] = ("add", "put", "delete")) -> dict[str, int]:
        """Operations of kinds ``fs`` by outcome (reads are not writes: counted apart)."""
        wanted = set(fs)
        out = {"ops": 0, OK: 0, FAIL: 0, UNKNOWN: 0, "reads": 0}
        for op in self.ops:
            if op.f == "read":
                out["reads"] += 1
            elif op.f in wanted:
                out["ops"] += 1
                out[op.outcome] += 1
        return out
