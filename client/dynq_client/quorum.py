"""Pure quorum bookkeeping for one request, after riak_kv's get/put "core" modules.

A :class:`QuorumTally` knows the replicas a request went to and how many must succeed.
It decides as early as it can: success at ``required`` successes, failure as soon as
``n - required + 1`` replicas have failed (success is then impossible), and otherwise
waits. The I/O layer feeds it replies and the deadline; it never touches a socket.

:class:`ReadQuorum` adds what a read needs on top: the objects each replica returned,
merged into one, and which replicas are behind the merge (for read repair).
"""

from __future__ import annotations

import enum
from typing import Sequence

from .errors import QuorumError, QuorumTimeout
from .versions import VersionedObject, merge


class QuorumState(enum.Enum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class QuorumTally:
    """Counts successes and failures of the replicas of one request."""

    __slots__ = ("replicas", "required", "succeeded", "errors", "state")

    def __init__(self, replicas: Sequence[str], required: int) -> None:
        if not 1 <= required:
            raise ValueError("required must be at least 1")
        self.replicas: tuple[str, ...] = tuple(replicas)  # every replica the request went to
        self.required = required  # successes needed (R or W)
        self.succeeded: list[str] = []  # replicas that succeeded, in reply order
        self.errors: dict[str, str] = {}  # replica -> why it failed
        self.state = QuorumState.PENDING  # decided once, never changes afterwards
        self._decide()

    @property
    def decided(self) -> bool:
        return self.state is not QuorumState.PENDING

    @property
    def all_answered(self) -> bool:
        """No replica is still to answer (cheaper than ``not pending``: counts only; a
        replica is in at most one of succeeded and errors, and only while it is a replica)."""
        return len(self.succeeded) + len(self.errors) >= len(self.replicas)

    @property
    def pending(self) -> list[str]:
        """Replicas that have not answered yet."""
        done = set(self.succeeded) | self.errors.keys()
        return [r for r in self.replicas if r not in done]

    def success(self, replica: str) -> QuorumState:
        if replica in self.replicas and replica not in self.succeeded and replica not in self.errors:
            self.succeeded.append(replica)
            self._decide()
        return self.state

    def failure(self, replica: str, error: str) -> QuorumState:
        if replica in self.replicas and replica not in self.succeeded and replica not in self.errors:
            self.errors[replica] = error
            self._decide()
        return self.state

    def substitute(self, replica: str, other: str) -> bool:
        """Replace an undecided or failed ``replica`` by ``other`` (sloppy quorum: a fallback
        standing in for a node the request could not reach). False if that is not possible."""
        if self.decided or replica not in self.replicas or replica in self.succeeded or other in self.replicas:
            return False
        self.errors.pop(replica, None)
        self.replicas = tuple(other if r == replica else r for r in self.replicas)
        return True

    def add(self, replica: str) -> bool:
        """Ask one more replica (a hedge); the quorum stays the same. False once decided."""
        if self.decided or replica in self.replicas:
            return False
        self.replicas = self.replicas + (replica,)
        return True

    def _decide(self) -> None:
        if self.state is not QuorumState.PENDING:
            return
        if len(self.succeeded) >= self.required:
            self.state = QuorumState.SUCCEEDED
        elif len(self.errors) > len(self.replicas) - self.required:
            self.state = QuorumState.FAILED

    def error(self, what: str, *, timed_out: bool = False) -> QuorumError:
        """The exception describing why this request failed (or is failing at its deadline)."""
        errors = dict(self.errors)
        if timed_out:
            for replica in self.pending:
                errors[replica] = "no reply before the deadline"
        cls = QuorumTimeout if timed_out else QuorumError
        return cls(
            f"{what} failed: {len(self.succeeded)} of {self.required} required replicas succeeded",
            required=self.required,
            succeeded=len(self.succeeded),
            errors=errors,
        )


class ReadQuorum(QuorumTally):
    """A read's tally plus the merge of what the replicas returned."""

    __slots__ = ("objects", "merged")

    def __init__(self, replicas: Sequence[str], required: int) -> None:
        super().__init__(replicas, required)
        self.objects: dict[str, VersionedObject | None] = {}  # replica -> what it holds (None: nothing)
        self.merged: VersionedObject | None = None  # merge of every object received so far

    def reply(self, replica: str, obj: VersionedObject | None) -> QuorumState:
        if replica in self.replicas and replica not in self.objects and replica not in self.errors:
            self.objects[replica] = obj
            if obj is not None:
                self.merged = obj if self.merged is None else merge(self.merged, obj)
        return self.success(replica)

    def stale_replicas(self) -> list[str]:
        """Replicas whose answer lacks something the merged object has (read-repair targets)."""
        if self.merged is None:
            return []
        return [r for r, obj in self.objects.items() if obj != self.merged]
