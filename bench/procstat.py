"""CPU time of processes from /proc (no psutil): what a benchmark charges to each process.

``/proc/PID/stat`` fields 14 and 15 (utime, stime, in clock ticks) cover every thread of
the process, including threads that already exited, so libzmq's I/O threads and a node's
checkpointer are counted too. Resolution is one tick (10 ms at the usual 100 Hz): phases
measured with it should last a second or more.
"""

from __future__ import annotations

import os

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by process ``pid`` (this process if None)."""
    with open(f"/proc/{pid or os.getpid()}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()  # the name may hold spaces: split after it
    return (int(fields[11]) + int(fields[12])) / _TICK


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    """CPU seconds of each named process now."""
    return {name: cpu_seconds(pid) for name, pid in pids.items()}


def us_per_op(before: dict[str, float], after: dict[str, float], ops: int) -> dict[str, float]:
    """CPU microseconds per operation of each process between two snapshots."""
    return {name: round((after[name] - before[name]) * 1e6 / ops, 1) if ops else 0.0 for name in before}
