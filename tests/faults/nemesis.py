"""Nemeses: the faults a scenario injects, each with a matching heal.

A :class:`Nemesis` has ``begin`` (inject one fault, chosen with the schedule's random
generator) and ``end`` (undo it). :class:`Schedule` alternates quiet and faulty periods
from one seeded ``random.Random`` in a thread, and records every change as an ``info``
line with its time, so a failing run's log shows what happened when, and the same seed
repeats the same schedule. ``heal_all`` at the end undoes whatever is still in effect.
"""

from __future__ import annotations

import errno
import logging
import random
import threading
import time
from pathlib import Path

from .cluster import FaultCluster

log = logging.getLogger(__name__)


class Nemesis:
    name = "none"

    def __init__(self, cluster: FaultCluster) -> None:
        self.cluster = cluster
        self.faults = 0  # faults injected

    def begin(self, rng: random.Random) -> str:
        return "nothing"

    def end(self) -> str:
        return "nothing"

    def heal_all(self) -> None:
        self.end()


class Partition(Nemesis):
    """nftables DROP rules inside the namespaces. Modes: ``isolate`` (one node alone),
    ``majority`` (a random 3/2 split), ``bridge`` (two halves that only one node sees
    both of: non-transitive), ``flap`` (short random partitions of any kind)."""

    def __init__(self, cluster: FaultCluster, modes: tuple[str, ...]) -> None:
        super().__init__(cluster)
        self.modes = modes
        self.name = "partition-" + "+".join(modes)

    def begin(self, rng: random.Random) -> str:
        hosts = self.cluster.hosts
        order = list(range(hosts.count))
        rng.shuffle(order)
        mode = rng.choice(self.modes)
        if mode == "flap":
            mode = rng.choice(["isolate", "majority", "bridge"])
        names = list(self.cluster.nodes)
        self.faults += 1
        if mode == "isolate":
            hosts.partition([order[:1], order[1:]])
            return f"isolate {names[order[0]]}"
        if mode == "majority":
            cut = hosts.count // 2
            hosts.partition([order[:cut], order[cut:]])
            return f"split {[names[i] for i in order[:cut]]} | {[names[i] for i in order[cut:]]}"
        bridge, rest = order[0], order[1:]
        half = len(rest) // 2
        left, right = rest[:half], rest[half:]
        hosts.cut([(a, b) for a in left for b in right])
        return f"bridge {names[bridge]} between {[names[i] for i in left]} and {[names[i] for i in right]}"

    def end(self) -> str:
        self.cluster.hosts.heal()
        return "healed"


class Either(Nemesis):
    """Each fault one of ``nemeses``, chosen at random (e.g. partitions and kills)."""

    def __init__(self, cluster: FaultCluster, nemeses: list[Nemesis]) -> None:
        super().__init__(cluster)
        self.nemeses = nemeses
        self.name = "+".join(n.name for n in nemeses)
        self.current: Nemesis | None = None

    def begin(self, rng: random.Random) -> str:
        self.current = rng.choice(self.nemeses)
        self.faults += 1
        return self.current.begin(rng)

    def end(self) -> str:
        current, self.current = self.current, None
        return current.end() if current is not None else "nothing"

    def heal_all(self) -> None:
        for nemesis in self.nemeses:
            nemesis.heal_all()


class Crash(Nemesis):
    """SIGKILL up to ``max_down`` random nodes; ``end`` restarts them with the same command."""

    name = "kill"

    def __init__(self, cluster: FaultCluster, max_down: int = 2) -> None:
        super().__init__(cluster)
        self.max_down = max_down
        self.down: list[str] = []

    def begin(self, rng: random.Random) -> str:
        names = sorted(self.cluster.nodes)
        self.down = rng.sample(names, rng.randint(1, self.max_down))
        for name in self.down:
            self.cluster.kill(name)
        self.faults += 1
        return f"kill -9 {self.down}"

    def end(self) -> str:
        for name in self.down:
            self.cluster.start(name)
        restarted, self.down = self.down, []
        return f"restarted {restarted}"


class Pause(Nemesis):
    """SIGSTOP one random node (for longer than failure detection takes), SIGCONT at end."""

    name = "pause"

    def __init__(self, cluster: FaultCluster) -> None:
        super().__init__(cluster)
        self.paused: str | None = None

    def begin(self, rng: random.Random) -> str:
        self.paused = rng.choice(sorted(self.cluster.nodes))
        self.cluster.pause(self.paused)
        self.faults += 1
        return f"SIGSTOP {self.paused}"

    def end(self) -> str:
        if self.paused is None:
            return "nothing paused"
        name, self.paused = self.paused, None
        self.cluster.resume(name)
        return f"SIGCONT {name}"


class DiskFull(Nemesis):
    """Fill the tmpfs under one node's data directory; ``end`` frees it. The node must stay
    up and refuse writes with a storage error meanwhile (checked by the scenario)."""

    name = "disk-full"

    def __init__(self, cluster: FaultCluster, node: str) -> None:
        super().__init__(cluster)
        self.node = node
        self.filler = cluster.nodes[node].config_path.parent / "filler"
        self.filled_bytes = 0

    def begin(self, rng: random.Random) -> str:
        self.filled_bytes = fill(self.filler)
        self.faults += 1
        return f"filled {self.node}'s disk (+{self.filled_bytes >> 20} MiB)"

    def end(self) -> str:
        self.filler.unlink(missing_ok=True)
        return f"freed {self.node}'s disk"


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem says ENOSPC (1 MiB, then 4 KiB, then 1 B)."""
    written = 0
    with path.open("ab", buffering=0) as fh:
        for size in (1 << 20, 4096, 1):
            chunk = b"\0" * size
            while True:
                try:
                    n = fh.write(chunk)
                    written += n or 0
                    if not n:
                        break
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


class Wipe(Nemesis):
    """Kill one node, delete its database, restart it empty (a new actor). Always the same
    node: with one replica lost at a time dynq must lose nothing."""

    name = "wipe-db"

    def __init__(self, cluster: FaultCluster, node: str) -> None:
        super().__init__(cluster)
        self.node = node
        self.wiped = False

    def begin(self, rng: random.Random) -> str:
        self.cluster.kill(self.node)
        self.cluster.wipe(self.node)
        self.wiped = True
        self.faults += 1
        return f"kill -9 {self.node}, deleted its database"

    def end(self) -> str:
        if not self.wiped:
            return "nothing"
        self.wiped = False
        self.cluster.start(self.node)
        return f"restarted {self.node} empty"


class Schedule:
    """Runs a nemesis on a seeded timetable in a background thread (bounded: it stops when
    told or after ``duration``)."""

    def __init__(self, nemesis: Nemesis, rng: random.Random, duration: float,
                 quiet: tuple[float, float] = (2.0, 5.0), faulty: tuple[float, float] = (4.0, 10.0)) -> None:
        self.nemesis = nemesis
        self.rng = rng
        self.duration = duration
        self.quiet = quiet
        self.faulty = faulty
        self.events: list[tuple[float, str]] = []
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"nemesis-{nemesis.name}", daemon=True)
        self._t0 = time.monotonic()

    def _note(self, what: str) -> None:
        self.events.append((round(time.monotonic() - self._t0, 2), what))
        log.info("nemesis %s: %s", self.nemesis.name, what)

    def _run(self) -> None:
        deadline = self._t0 + self.duration
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if self._stop.wait(self.rng.uniform(*self.quiet)):
                    break
                self._note(self.nemesis.begin(self.rng))
                self._stop.wait(min(self.rng.uniform(*self.faulty), max(0.0, deadline - time.monotonic())))
                self._note(self.nemesis.end())
        except BaseException as exc:  # reported by stop(); the test fails with it
            self.error = exc
            self._note(f"nemesis error: {exc!r}")

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def halt(self) -> None:
        """Stop the thread without healing (teardown after an error; idempotent)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=60)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        self.nemesis.heal_all()
        self._note("healed everything")


