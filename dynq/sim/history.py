"""What the simulated clients did: every operation as invocation and completion, on the
virtual clock (the simulator's counterpart of ``tests/faults/history.py``).

Outcomes, as :func:`classify` decides them from the client's exception:

* ``ok``: the cluster acknowledged it;
* ``fail``: it certainly took effect nowhere (the client or the coordinator guarantee it);
* ``unknown``: it may or may not have taken effect (a timeout, a quorum missed after some
  replica may already have written it). An operation never completed is unknown.

Every written value is unique, so the checkers (:mod:`dynq.sim.checker`) can tell writes
apart; ``covers`` holds the values of the read whose context a write carried.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from dynq_client.errors import (
    DynqError,
    InvalidRequest,
    NotEnoughReplicas,
    QuorumError,
    StorageError,
    Timeout,
    TooManySiblings,
    Unavailable,
)

OK, FAIL, UNKNOWN = "ok", "fail", "unknown"


def classify(exc: BaseException) -> str:
    """``fail`` only when the error guarantees the write was executed nowhere, else ``unknown``."""
    if isinstance(exc, Timeout):  # includes QuorumTimeout
        return UNKNOWN
    if isinstance(exc, (Unavailable, InvalidRequest, TooManySiblings, StorageError, NotEnoughReplicas)):
        return FAIL
    if isinstance(exc, (QuorumError, DynqError)):
        return UNKNOWN
    return UNKNOWN


@dataclass
class Op:
    index: int
    process: str  # the client that ran it
    f: str  # "put", "delete", "read"
    key: str
    value: str | None = None  # put: the unique value
    covers: frozenset[str] = frozenset()  # put/delete: the values of the read whose context it carries
    invoke_t: float = 0.0
    type: str = "invoke"  # then ok / fail / unknown
    complete_t: float | None = None
    result: frozenset[str] | None = None  # read: the live values it returned
    error: str = ""
    ttl: int | None = None  # put: the time to live it asked for (the ttl workload)

    @property
    def outcome(self) -> str:
        return self.type if self.type != "invoke" else UNKNOWN

    def to_json(self) -> dict[str, Any]:
        return {"index": self.index, "process": self.process, "f": self.f, "key": self.key, "value": self.value,
                "covers": sorted(self.covers), "invoke_t": round(self.invoke_t, 6), "type": self.outcome,
                "complete_t": None if self.complete_t is None else round(self.complete_t, 6),
                "result": None if self.result is None else sorted(self.result), "error": self.error,
                **({"ttl": self.ttl} if self.ttl is not None else {})}


@dataclass
class History:
    clock: Callable[[], float]  # the loop's virtual time
    ops: list[Op] = field(default_factory=list)

    def invoke(self, process: str, f: str, key: str, value: str | None = None, covers: Iterable[str] = (),
               ttl: int | None = None) -> Op:
        op = Op(len(self.ops), process, f, key, value, frozenset(covers), self.clock(), ttl=ttl)
        self.ops.append(op)
        return op

    def complete(self, op: Op, type_: str, result: frozenset[str] | None = None, error: str = "") -> None:
        assert type_ in (OK, FAIL, UNKNOWN) and op.type == "invoke", (type_, op)
        op.type, op.result, op.error, op.complete_t = type_, result, error, self.clock()

    def fail_or_unknown(self, op: Op, exc: BaseException) -> None:
        self.complete(op, classify(exc), error=f"{type(exc).__name__}: {exc}"[:200])

    def counts(self) -> dict[str, int]:
        out = {"ops": 0, OK: 0, FAIL: 0, UNKNOWN: 0, "reads": 0}
        for op in self.ops:
            if op.f == "read":
                out["reads"] += 1
            else:
                out["ops"] += 1
                out[op.outcome] += 1
        return out


__all__ = ["FAIL", "OK", "UNKNOWN", "History", "Op", "classify"]
