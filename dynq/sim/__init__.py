"""Deterministic simulation of dynq's real code (issue 14, part 2): the substrate.

- :mod:`dynq.sim.loop`: :class:`SimLoop`, a seeded virtual-time asyncio loop with hosts
  that can be killed, paused and restarted, fake fds and a trace hash.
- :mod:`dynq.sim.net`: :class:`SimNetwork` and per-host :class:`SimContext` /
  :class:`SimSocket`, the ZeroMQ surface dynq uses, with latency, partitions and clogs.
- :mod:`dynq.sim.disk`: :class:`SimDisk`, an apsw VFS over the real files that can lose
  unsynced writes on power loss, tear sectors, fill up and fail fsync.
- :mod:`dynq.sim.env`: the injected environment (clocks, randomness, zmq context, VFS).
"""

from __future__ import annotations

from dynq.sim.loop import SimDeadlock, SimError, SimHost, SimLivelock, SimLoop, SimViolation, current_host

__all__ = ["SimDeadlock", "SimError", "SimHost", "SimLivelock", "SimLoop", "SimViolation", "current_host"]
