"""Deterministic simulation of dynq's real code (issue 14, part 2): the substrate.

- :mod:`dynq.sim.loop`: :class:`SimLoop`, a seeded virtual-time asyncio loop with hosts
  that can be killed, paused and restarted, fake fds and a trace hash.
- :mod:`dynq.sim.net`: :class:`SimNetwork` and per-host :class:`SimContext` /
  :class:`SimSocket`, the ZeroMQ surface dynq uses, with latency, partitions and clogs.
- :mod:`dynq.sim.disk`: :class:`SimDisk`, an apsw VFS over the real files that can lose
  unsynced writes on power loss, tear sectors, fill up and fail fsync.
- :mod:`dynq.sim.harness`: real nodes and clients on those, a seeded nemesis, the phases
  (safety, heal, liveness) and the run's :class:`~dynq.sim.harness.Result`; ``dynq sim``.
- :mod:`dynq.sim.history`, :mod:`dynq.sim.checker`: what the clients did, and the verdicts.
- :mod:`dynq.sim.buckets`: the buckets workload (which buckets a seed creates, key names).
- :mod:`dynq.sim.mutations`: planted bugs the checkers must catch.

The node takes its clocks, randomness, zmq context and VFS from :mod:`dynq.env`.
"""

from __future__ import annotations

from dynq.sim.loop import SimDeadlock, SimError, SimHost, SimLivelock, SimLoop, SimViolation, current_host

__all__ = ["SimDeadlock", "SimError", "SimHost", "SimLivelock", "SimLoop", "SimViolation", "current_host"]
