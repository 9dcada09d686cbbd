"""Conditional puts: what a condition means, and their serialisation per key.

``if_none_match``: write only if the key holds no live value (never written, deleted,
or every value expired). ``if_match=context``: write only if the key's current version
is the one the context names: the version vector of what the key holds now is covered
by the context (nothing was written since that read; an expiry is not a write).

A conditional put is checked on the key's *first reachable primary* against the merge
of its own copy and a quorum read (R replicas), and the conditional puts of one key on
that node run one at a time (:class:`KeyQueue`): the next one's check sees the previous
one's write (staged locally before it is acknowledged). So while every node agrees on
which primary is first, at most one of two racing ``if_none_match`` puts succeeds.

When they do not agree (that primary is down, or partitioned from some nodes but not
others), two coordinators can check concurrently, or one can check against a read that
cannot see the other's write (R + W <= N, or a partition): both writes then succeed.
Neither is lost: each minted its own dot and neither context covers the other, so they
become siblings, which the next read returns (see docs/design.md, "Conditional writes").

Pure apart from the callbacks :class:`KeyQueue` runs; no I/O.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

from dynq_client.errors import PreconditionFailed
from dynq_client.versions import Clock, VersionedObject, descends, encode_context


@dataclass(frozen=True, slots=True)
class Condition:
    """The condition of one put: ``none_match`` or ``match`` (the context's clock)."""

    none_match: bool = False
    match: dict[str, int] | None = None


def check(condition: Condition, current: VersionedObject | None, now_ms: int) -> dict[str, int]:
    """The context the put must be written with if ``condition`` holds for ``current``
    (the key's merged state, expired siblings included); raises PreconditionFailed with
    what was found otherwise."""
    live = current.live(now_ms) if current is not None else None
    clock: Clock = live.clock if live is not None else {}
    values = live.values if live is not None else []
    if condition.none_match and values:
        raise PreconditionFailed(
            f"if_none_match: the key has {len(values)} live value(s)", values=values,
            context=encode_context(clock))
    if condition.match is not None:
        if current is None and condition.match:
            raise PreconditionFailed("if_match: the key no longer exists (deleted and reclaimed, or never written)",
                                     context=encode_context({}))
        if not descends(condition.match, clock):
            raise PreconditionFailed(
                "if_match: the key was written since the context was read", values=values,
                context=encode_context(clock))
        return dict(condition.match)
    return dict(clock)  # if_none_match: supersede the tombstones and expired values it saw


Release = Callable[[], None]


class KeyQueue:
    """Runs the conditional puts of one key one at a time, in arrival order: ``run(key,
    step)`` calls ``step(release)`` now if no other step of the key is running, else
    after the ones before it have called their ``release``."""

    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        self._waiting: dict[bytes, deque[Callable[[Release], None]]] = {}  # key -> steps; the first runs

    def run(self, key: bytes, step: Callable[[Release], None]) -> None:
        queue = self._waiting.get(key)
        if queue is not None:
            queue.append(step)
            return
        self._waiting[key] = deque([step])
        self._start(key, step)

    def _start(self, key: bytes, step: Callable[[Release], None]) -> None:
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            queue = self._waiting[key]
            queue.popleft()
            if queue:
                self._start(key, queue[0])
            else:
                del self._waiting[key]

        try:
            step(release)
        except BaseException:
            release()
            raise

    def __len__(self) -> int:
        """Keys with a conditional put running."""
        return len(self._waiting)
