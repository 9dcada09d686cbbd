"""The node's environment: every clock, random number, ZeroMQ context and SQLite VFS the
node uses outside its event loop comes from one :class:`Env` (FoundationDB's ``INetwork``
seam, narrowed to what dynq crosses).

Production uses :data:`SYSTEM` (the real clocks, ``secrets``-grade randomness, a real
``zmq.Context``, SQLite's default VFS, the checkpointer thread), so passing nothing keeps
behaviour unchanged. The simulator (:mod:`dynq.sim.harness`) passes an ``Env`` whose clocks
read the virtual loop (plus a per-node skew), whose randomness is seeded, whose contexts are
:class:`~dynq.sim.net.SimContext` and whose VFS is a :class:`~dynq.sim.disk.SimDisk`.

Time on the event loop (``loop.time()``, ``call_later``, ``asyncio.sleep``) is not here: a
virtual-time loop already simulates it. ``tests/unit/test_env_seams.py`` keeps new clock,
random, thread or context calls from bypassing this module.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any, Literal

import zmq

CheckpointMode = Literal["thread", "task", "off"]
"""How WAL checkpoints run: a thread of their own (production), a loop task (the
simulation: no threads), or off (SQLite checkpoints inside commits)."""


class Env:
    """Clocks, randomness, sockets and files for one node (or client)."""

    def __init__(
        self,
        *,
        wall: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        zmq_context: Callable[[], zmq.Context[Any]] = zmq.Context,
        sqlite_vfs: str | None = None,
        checkpointer: CheckpointMode = "thread",
    ) -> None:
        self.wall = wall  # seconds since the epoch (sibling timestamps, tombstone grace, stats)
        self.monotonic = monotonic  # seconds, never going back (pacing outside the loop)
        self.random = rng if rng is not None else random.SystemRandom()  # actor ids
        self.zmq_context = zmq_context  # a new context for the node's sockets
        self.sqlite_vfs = sqlite_vfs  # None: SQLite's default (unix)
        self.checkpointer = checkpointer

    def wall_ms(self) -> int:
        return int(self.wall() * 1000)

    def token_hex(self, nbytes: int) -> str:
        """Like ``secrets.token_hex``, from this environment's randomness."""
        return self.random.getrandbits(8 * nbytes).to_bytes(nbytes, "big").hex()


SYSTEM = Env()
"""Production: the real clocks, the OS's randomness, real sockets and files."""

__all__ = ["SYSTEM", "CheckpointMode", "Env"]
