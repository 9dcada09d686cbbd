"""A local, per-process view of which peers are usable: up, suspect or down.

Each node (and each client) keeps its own view, fed by the outcome of every request it
sends; there is no global oracle, as in Dynamo. The rules are deliberately simple and
pure (time is passed in), so they are tested without sockets:

* a reply of any kind proves the peer alive: it is up;
* ``unreachable`` (the connection is down: with ``IMMEDIATE`` sockets the send itself
  fails) marks the peer down at once;
* a timeout makes it suspect; ``timeouts_to_down`` consecutive timeouts make it down
  (a paused or overloaded peer);
* a down peer is skipped by sloppy quorum until a probe (the node pings it every
  ``probe_interval``) or, on a client, ``retry_after`` seconds have passed, after which
  one request may try it again.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Callable


class PeerState(enum.Enum):
    UP = "up"
    SUSPECT = "suspect"
    DOWN = "down"


@dataclass(slots=True)
class _Peer:
    state: PeerState = PeerState.UP
    timeouts: int = 0  # consecutive timeouts
    since: float = 0.0  # when the state last changed
    last_ok: float = 0.0  # last time the peer answered


class Health:
    """Up/suspect/down per peer name. ``now`` is any monotonic clock in seconds."""

    def __init__(self, *, timeouts_to_down: int = 2, retry_after: float = 2.0) -> None:
        self.timeouts_to_down = timeouts_to_down
        self.retry_after = retry_after  # seconds a down peer is skipped before it is tried again
        self._peers: dict[str, _Peer] = {}
        self.transitions = 0  # state changes, for stats

    def _peer(self, name: str) -> _Peer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = _Peer()
        return peer

    def _set(self, peer: _Peer, state: PeerState, now: float) -> None:
        if peer.state is not state:
            peer.state = state
            peer.since = now
            self.transitions += 1

    def success(self, name: str, now: float) -> None:
        peer = self._peer(name)
        peer.timeouts = 0
        peer.last_ok = now
        self._set(peer, PeerState.UP, now)

    def unreachable(self, name: str, now: float) -> None:
        self._set(self._peer(name), PeerState.DOWN, now)

    def timeout(self, name: str, now: float) -> None:
        peer = self._peer(name)
        peer.timeouts += 1
        if peer.state is PeerState.DOWN:  # only a reply revives a down peer; re-arm its wait
            peer.since = now
            return
        self._set(peer, PeerState.DOWN if peer.timeouts >= self.timeouts_to_down else PeerState.SUSPECT, now)

    def state(self, name: str) -> PeerState:
        peer = self._peers.get(name)
        return PeerState.UP if peer is None else peer.state

    def usable(self, name: str, now: float) -> bool:
        """Whether to send to ``name`` now: up or suspect, or down long enough to retry."""
        peer = self._peers.get(name)
        if peer is None or peer.state is not PeerState.DOWN:
            return True
        if now - peer.since >= self.retry_after:
            peer.since = now  # one retry per retry_after: the next failure re-arms the wait
            return True
        return False

    def down(self) -> list[str]:
        return sorted(name for name, peer in self._peers.items() if peer.state is PeerState.DOWN)

    def snapshot(self) -> dict[str, str]:
        return {name: peer.state.value for name, peer in sorted(self._peers.items())}


def sloppy_targets(
    primaries: tuple[str, ...], fallbacks: tuple[str, ...], n: int, usable: Callable[[str], bool]
) -> list[tuple[str, str | None]]:
    """The first N usable nodes of a preference list, as (node, hinted_for) pairs.

    Usable primaries come first (``hinted_for`` None); each unusable primary is stood in
    for by the next usable fallback, whose write carries a hint naming that primary.
    """
    targets: list[tuple[str, str | None]] = [(p, None) for p in primaries if usable(p)]
    if len(targets) == len(primaries):  # every primary usable: the common case, nothing to stand in for
        return targets
    missing = [p for p in primaries if (p, None) not in targets]
    for fallback in fallbacks:
        if not missing or len(targets) >= n:
            break
        if usable(fallback):
            targets.append((fallback, missing.pop(0)))
    return targets
