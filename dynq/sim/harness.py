"""The simulation harness: real :class:`~dynq.node.Node`\\ s and real
:class:`~dynq_client.AsyncClient`\\ s on one :class:`SimLoop`, :class:`SimNetwork` and one
:class:`SimDisk` per node, under a seeded fault schedule (VOPR's swarm testing, FDB's
simulation workloads).

One seed expands into :class:`Options` (cluster size, N/R/W, knobs, which faults and how
often), printed with every outcome, so a seed is its own reproduction. A run has three
phases (after TigerBeetle's VOPR):

1. **safety**: clients write and read a small key set with contexts while the nemesis
   crashes (kill -9), cuts the power (unsynced writes lost), pauses, partitions, cuts one
   direction, clogs, slows links, fills disks and fails fsyncs;
2. **heal**: every fault ends, every node comes back, clients finish;
3. **liveness**: within ``settle_s`` virtual seconds, hints drain and every primary of
   every key holds the same object (anti-entropy, hints and read repair have converged).

Then the checkers of :mod:`dynq.sim.checker` judge the history and the final state, and
the in-process invariants (no unhandled exception in any task or callback, no error
logged with a traceback, every node's serve task alive) are added.

The harness owns the host lives: a kill freezes the node's disk, closes its SQLite
connections (which then write nothing, as a dead process would not) and drops its
pending tasks without running them; power loss does the same and then rolls the disk back
to what was synced. See ``docs/design.md`` ("Simulation") for what is modelled and what not.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import gc
import hashlib
import logging
import os
import random
import shutil
import tempfile
import time
import traceback
import weakref
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import apsw
from dynq_client import AsyncClient
from dynq_client import buckets as b
from dynq_client import crdt
from dynq_client.errors import DynqError, ProtocolError
from dynq_client.ring import Member, Ring
from dynq_client.versions import (
    VersionedObject,
    decode_object,
    encode_object,
    merge_all,
)

from ..cluster.membership import ClusterState
from ..config import NodeConfig
from ..env import Env
from ..node import Node
from .checker import (
    check_datatypes,
    Verdict,
    check_convergence,
    check_dots,
    check_hints_drained,
    check_invariants,
    check_lww,
    check_placement,
    check_siblings,
)
from .buckets import BucketSpec, draw_buckets, history_key, history_key_of, storage_key_of
from .disk import SimDisk
from .history import OK, History, Op
from .loop import _CURRENT, SimError, SimHost, SimLoop
from .net import SimNetwork

log = logging.getLogger(__name__)

EPOCH = 1_700_000_000.0  # the virtual wall clock starts here (plus the loop's time and a node's skew)
FAULTS = ("kill", "power", "wipe", "pause", "partition", "cut", "clog", "latency", "disk_full", "fsync_eio", "blackout")
"""Every fault kind; a seed enables a subset (swarm testing: fewer kinds, more of each)."""

DEFAULT_FAULTS = tuple(f for f in FAULTS if f != "blackout")
DT_BUCKETS = (("dtc", "counter"), ("dts", "set"))  # the data-type workload's buckets (n=3)
DT_BUCKET_NAMES = frozenset(name for name, _ in DT_BUCKETS)
DT_KEYS = 3  # keys per data-type bucket
DT_MUTATIONS = ("dt-join-drops-theirs",)  # mutations that imply the data-type workload
WIPES_PER_SEED = 1
"""A wipe (the disk replaced: the node comes back empty, under a new actor) is survivable
when W >= 2 and no other copy is lost meanwhile: one per seed keeps it inside the fault atlas."""
"""Blackout (every node loses power at once) is survivable under synchronous=full too, but it
makes most seeds spend their time restarting; the ``sync-normal`` mutation and the soak
profile enable it."""


@dataclass(frozen=True)
class Options:
    """What one seed expands to (printed with every outcome)."""

    seed: int
    profile: str
    nodes: int
    n: int
    r: int
    w: int
    q: int
    clients: int
    keys: int
    duration_s: float  # the safety phase
    settle_s: float  # the liveness phase's bound
    fault_gap_s: float  # mean virtual time between faults
    faults: tuple[str, ...]
    skew_s: float  # wall clocks of nodes differ by up to this much
    client_timeout_s: float
    think_s: float  # a client's mean pause between operations
    knobs: tuple[tuple[str, Any], ...]  # NodeConfig fields changed from their defaults
    membership: str = "none"  # none | join | leave | join+leave: changes staged and committed mid-run
    read_fanout: str = "quorum"  # the clients' reads: quorum (R of N, hedged) or all N
    coordination: str = "client"  # who coordinates reads: the client or a replica
    buckets: tuple[BucketSpec, ...] = ()  # named buckets: (name, n, r, w, conflict)
    bucket_workload: bool = True  # False: none drawn (--no-buckets: seeds found before the buckets workload)
    ttl_workload: bool = False  # --ttl: some puts carry a ttl of 1-5 s, expired objects reclaimed quickly
    dt_workload: bool = False  # --dt: a counter bucket and a set bucket, incremented, added to, removed from
    mutation: str | None = None

    @classmethod
    def expand(cls, seed: int, profile: str = "ci", mutation: str | None = None, buckets: bool = True,
               ttl: bool = False, dt: bool = False) -> Options:
        import random

        rng = random.Random(hashlib.blake2b(f"options:{seed}".encode(), digest_size=8).digest())
        nodes = rng.choice((3, 3, 4, 5))
        n = 3
        w = rng.choice((1, 2, 2, 3)) if nodes > 3 else rng.choice((2, 2, 3))
        r = rng.choice((1, 2, 2, 3))
        soak = profile == "soak"
        kinds = [f for f in DEFAULT_FAULTS if rng.random() < 0.6] or ["kill"]
        if soak and rng.random() < 0.3:
            kinds.append("blackout")
        knobs: dict[str, Any] = {
            "gossip_interval_ms": rng.choice((100, 250, 500, 1000)),
            "request_timeout_ms": rng.choice((300, 1000, 2000, 5000)),
            "ae_interval_ms": rng.choice((100, 250, 1000)),
            # Reaping is safe only if no replica write is older than the grace when it lands
            # (seed 1496997001: a write held 2 s by a clog arrived after a 1 s grace and brought
            # a reaped key back). Holds here last at most ~12 s (partition 8 s + retransmit 1 s,
            # clogs 3 s); TCP gives up within ~15 minutes and the default grace is a day.
            "ae_tombstone_grace_s": rng.choice((30, 30, 60, 86400)),
            "replay_interval_ms": rng.choice((100, 500)),
            "probe_interval_ms": rng.choice((200, 1000)),
            "checkpoint_interval_ms": rng.choice((0, 50, 100)),
        }
        if rng.random() < 0.2:
            knobs["max_hints"] = rng.choice((5, 50))
        if rng.random() < 0.2:
            knobs["max_in_flight_per_connection"] = rng.choice((2, 8))
        if rng.random() < 0.2:
            knobs["socket_hwm"] = rng.choice((4, 16))
        opts = cls(
            seed=seed, profile=profile, nodes=nodes, n=n, r=r, w=w, q=rng.choice((8, 16)),
            clients=rng.choice((2, 3, 4)), keys=rng.choice((3, 6, 12)),
            duration_s=rng.uniform(60, 240) if soak else rng.uniform(15, 30),
            settle_s=240.0 if soak else 120.0,
            fault_gap_s=rng.uniform(1.0, 6.0), faults=tuple(sorted(kinds)),
            skew_s=rng.choice((0.0, 0.0, 2.0, 60.0)), client_timeout_s=rng.choice((1.0, 2.0, 3.0)),
            think_s=rng.choice((0.02, 0.1, 0.3)), knobs=tuple(sorted(knobs.items())), mutation=mutation,
            membership=rng.choice(("none", "none", "join", "leave" if nodes > n else "join", "join+leave"))
            if nodes < 5 else "none",  # a leave needs a member more than N
            read_fanout=rng.choice(("quorum", "quorum", "all")),
            coordination=rng.choice(("client", "client", "server")),
        )
        members = opts.nodes - (1 if "leave" in opts.membership else 0)  # a bucket's n fits after a leave
        opts = dataclasses.replace(opts, buckets=draw_buckets(seed, members) if buckets else (),
                                   bucket_workload=buckets)
        if ttl:  # its own stream: the options drawn above are those of the seed without it
            trng = random.Random(hashlib.blake2b(f"ttl:{seed}".encode(), digest_size=8).digest())
            opts = dataclasses.replace(opts, ttl_workload=True, knobs=tuple(sorted({
                **dict(opts.knobs), "ae_expiry_grace_s": trng.choice((0, 1, 5)),
                "ae_expiry_interval_ms": trng.choice((100, 500))}.items())))
        if dt:  # drawn from nothing: the options above are those of the seed without it
            opts = dataclasses.replace(opts, dt_workload=True)
        if mutation is not None:
            from .mutations import MUTATIONS
            opts = MUTATIONS[mutation].adjust(opts)
        return opts

    def describe(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["knobs"] = dict(self.knobs)
        out["faults"] = list(self.faults)
        return out


@dataclass
class Result:
    """One seed's outcome."""

    seed: int
    options: Options
    verdicts: list[Verdict]
    trace_hash: str
    virtual_s: float
    wall_s: float
    events: int  # trace events (deliveries, connections, faults, clock jumps)
    faults: dict[str, int]  # fault kind -> times injected
    coverage: dict[str, int]  # node counters summed over lives: which repair and failure paths ran
    error: str | None = None  # the run itself broke (SimError, a crash of the harness)

    @property
    def ok(self) -> bool:
        return self.error is None and all(v.ok for v in self.verdicts)

    def replay_command(self) -> str:
        cmd = f"dynq sim --seed {self.seed} --profile {self.options.profile}"
        if self.options.mutation:
            cmd += f" --mutation {self.options.mutation}"
        if not self.options.bucket_workload:
            cmd += " --no-buckets"
        if self.options.ttl_workload and self.options.mutation != "expiry-ignored":  # (that one implies it)
            cmd += " --ttl"
        if self.options.dt_workload and self.options.mutation not in DT_MUTATIONS:
            cmd += " --dt"
        return cmd

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "ok": self.ok, "error": self.error, "trace_hash": self.trace_hash,
            "virtual_s": round(self.virtual_s, 3), "wall_s": round(self.wall_s, 3), "events": self.events,
            "faults": self.faults, "coverage": self.coverage, "verdicts": {v.name: {"ok": v.ok, "counts": v.counts, "problems": v.problems[:20]}
                                                for v in self.verdicts},
            "options": self.options.describe(), "replay": self.replay_command(),
        }


class _ErrorLog(logging.Handler):
    """Keeps what the node logs at WARNING and above, for the invariants."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class SimNode:
    """One node's machine: its host (lives), disk, data directory and current Node."""

    def __init__(self, sim: Simulation, name: str, config: NodeConfig, skew: float) -> None:
        self.sim = sim
        self.name = name
        self.config = config
        self.host: SimHost = sim.loop.add_host(name)
        loop = sim.loop
        self.disk = SimDisk(f"simdisk-{id(sim)}-{name}", loop.rng(f"disk.{name}").getrandbits(64),
                            clock=lambda: EPOCH + loop.time() + skew)
        self.skew = skew
        self.node: Node | None = None
        self.task: asyncio.Task[None] | None = None
        self.lives = 0

    def env(self) -> Env:
        loop, net, host, skew = self.sim.loop, self.sim.net, self.host, self.skew
        return Env(wall=lambda: EPOCH + loop.time() + skew, monotonic=loop.time,
                   rng=loop.rng(f"env.{self.name}.{self.lives}"), zmq_context=lambda: net.context(host),  # type: ignore[arg-type,return-value]
                   sqlite_vfs=self.disk.name, checkpointer="task")

    @property
    def up(self) -> bool:
        return self.node is not None and self.host.alive

    def start(self) -> None:
        if not self.host.alive:
            self.host.restart()
        self.lives += 1
        try:
            self.node = self.host.run(Node, self.config, self.env())
        except apsw.Error as exc:
            self.node = None
            if self.disk.fail_syncs or self.disk.capacity is not None:  # the disk fault outlived the crash
                self.sim.loop.trace("start failed", self.name, type(exc).__name__)
                self.disk.fail_syncs = 0
                self.host.kill()  # the process exits; its supervisor starts it again
                self.sim.loop.sim_call_later(1.0, self.sim._restart, self)
                return
            self.sim.problems.append(f"{self.name} failed to start (life {self.lives}): {type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - the node cannot even open its files: an invariant breach
            self.sim.problems.append(f"{self.name} failed to start (life {self.lives}): {type(exc).__name__}: {exc}")
            self.node = None
            return
        self.task = self.host.spawn(self.node.serve(), name=f"serve {self.name}")
        self.sim.loop.trace("start", self.name, self.lives)

    def wipe(self) -> None:
        """The disk is replaced by an empty one (the node keeps its name, not its data)."""
        self.crash(power=False)
        shutil.rmtree(self.config.data_dir, ignore_errors=True)
        for path in [p for p in self.disk.files if p.startswith(str(self.config.data_dir))]:
            del self.disk.files[path]

    def crash(self, power: bool) -> None:
        """kill -9 (``power``: and the disk loses what was not synced)."""
        if not self.host.alive:
            return
        self.sim.bury(self.host)
        self.host.kill()
        self.disk.frozen = True  # a dead process writes nothing, not even when its handles close
        node = self.node
        if node is not None:
            self.sim.harvest(node)
            cp = node.storage.checkpointer
            if cp is not None and getattr(cp, "conn", None) is not None:
                cp.conn.close()
            node.storage.conn.close()
        self.disk.frozen = False
        if power:
            self.disk.power_loss()
        self.disk.capacity = None
        self.disk.fail_syncs = 0
        self.node = None
        self.task = None


class Simulation:
    """One seed's run; :meth:`run` returns its :class:`Result`."""

    def __init__(self, options: Options, workdir: Path | None = None) -> None:
        self.options = options
        self.loop = SimLoop(options.seed)
        self.net = SimNetwork(self.loop)
        self.rng = self.loop.rng("harness")
        self.workdir = workdir if workdir is not None else Path(tempfile.mkdtemp(prefix="dynq-sim-", dir=_tmp_root()))
        self.history = History(self.loop.time)
        self.problems: list[str] = []
        self.undecodable: set[str] = set()  # stored blobs that do not decode (an invariant breach)
        self.fault_counts: dict[str, int] = {}
        self.coverage: dict[str, int] = {}  # what the nodes did, summed over their lives
        self.wipes = 0  # disks replaced so far
        self.buckets_created: list[str] = []  # named buckets the claimant acknowledged
        self.dt_history = History(self.loop.time)  # the data-type workload's ops (kept apart: other checkers skip them)
        self.dt_final: dict[str, Any] | None = None  # history key -> final counter value or set, read at R=N
        self.dt_replicas: dict[str, dict[str, Any]] = {}  # history key -> primary -> its value after heal
        self._graveyard: list[asyncio.Task[Any]] = []  # tasks of dead lives: never run, never destroyed mid-run
        self._tasks: weakref.WeakKeyDictionary[asyncio.Task[Any], Any] = weakref.WeakKeyDictionary()
        self.loop.set_task_factory(self._task_factory)
        names = [f"n{i + 1}" for i in range(options.nodes)]
        members = tuple(Member(n, f"tcp://{n}:7000") for n in names)
        self.addresses = [m.address for m in members]
        knobs = dict(options.knobs)
        self.nodes: dict[str, SimNode] = {}
        for name in names:
            config = NodeConfig(name=name, listen=f"tcp://{name}:7000", data_dir=self.workdir / name, n=options.n,
                                q=options.q, r=options.r, w=options.w, members=members, static_members=True,
                                source=f"sim seed {options.seed}")
            config = dataclasses.replace(config, **knobs)
            skew = self.rng.uniform(-options.skew_s, options.skew_s)
            self.nodes[name] = SimNode(self, name, config, skew)
        self.left: set[str] = set()  # nodes that left the cluster (their serve task ends by design)
        self.membership_done: list[str] = []  # the changes committed, in order
        if "join" in options.membership:  # a new, empty node: a cluster of one until it joins
            name = f"n{options.nodes + 1}"
            me = Member(name, f"tcp://{name}:7000")
            config = dataclasses.replace(
                NodeConfig(name=name, listen=me.address, data_dir=self.workdir / name, n=options.n, q=options.q,
                           r=options.r, w=options.w, members=(me,), static_members=True,
                           source=f"sim seed {options.seed}"), **knobs)
            self.nodes[name] = SimNode(self, name, config, self.rng.uniform(-options.skew_s, options.skew_s))

    # --- coverage ---------------------------------------------------------------------------

    def harvest(self, node: Node) -> None:
        """Add what one life of a node did to the run's coverage counters (the fault and
        repair paths that fired: a batch whose counters stay 0 has gone soft)."""
        stats, storage = node.stats, node.storage
        counts = {"hinted_writes": stats.hinted_writes, "hints_stored": stats.hints_stored,
                  "hints_refused": stats.hints_refused, "read_repairs": stats.read_repairs,
                  "read_repairs_received": stats.read_repairs_received, "stray_writes": stats.stray_writes,
                  "overloaded": stats.overloaded, "dropped_replies": stats.dropped_replies,
                  "commit_failures": storage.commit_failures}
        parts = node.parts
        if parts is not None:
            counts.update(hints_replayed=parts.handoff.replayed, ae_exchanges=parts.anti_entropy.exchanges,
                          ae_keys_repaired=parts.anti_entropy.keys_repaired,
                          tombstones_reaped=parts.anti_entropy.reaped + parts.tree_server.reaped,
                          orphans_handed_on=parts.transfers.orphans_handed_on)
            if self.options.ttl_workload:  # (only then: the coverage of other seeds stays as it was)
                counts["expired_reclaimed"] = parts.anti_entropy.trees.expired_reclaimed
        for name, value in counts.items():
            self.coverage[name] = self.coverage.get(name, 0) + int(value)

    # --- tasks of dead lives ------------------------------------------------------------

    def _task_factory(self, loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        ctx = kwargs.get("context") or contextvars.copy_context()
        task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
        self._tasks[task] = ctx.get(_CURRENT)  # the host life it belongs to
        return task

    def bury(self, host: SimHost) -> None:
        """The pending tasks of ``host``'s life die with it: they will never run again (their
        callbacks are no-ops), so keep them from being destroyed (and logged) mid-run."""
        for task, inc in list(self._tasks.items()):
            if inc is not None and inc.host is host and not task.done():
                task._log_destroy_pending = False  # type: ignore[attr-defined]
                self._graveyard.append(task)

    # --- the run ------------------------------------------------------------------------

    def run(self) -> Result:
        started = time.perf_counter()
        error: str | None = None
        verdicts: list[Verdict] = []
        handler = _ErrorLog()
        loggers = [logging.getLogger("dynq"), logging.getLogger("dynq_client")]  # the node's and the client's
        saved = [(lg, lg.level, lg.propagate) for lg in loggers]
        for lg in loggers:
            lg.addHandler(handler)
            lg.setLevel(logging.WARNING)
            lg.propagate = False
        from .mutations import MUTATIONS
        mutation = MUTATIONS[self.options.mutation] if self.options.mutation else None
        try:
            if mutation is not None:
                mutation.apply()
            first = next(iter(self.nodes.values()))
            first.disk.seed_sqlite_prng()
            for sn in self.nodes.values():
                if sn.config.members != (sn.config.self_member,) or len(self.nodes) == 1:
                    sn.start()
            self.loop.run(self._main())
            verdicts = self._check(handler)
        except SimError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - the harness or the code under test broke the run itself
            error = "".join(traceback.format_exception(exc)[-6:])
        finally:
            if mutation is not None:
                mutation.revert()
            for lg, level, propagate in saved:
                lg.removeHandler(handler)
                lg.setLevel(level)
                lg.propagate = propagate
        trace_hash = self.loop.trace_hash()
        result = Result(self.options.seed, self.options, verdicts, trace_hash, self.loop.time() - 1000.0,
                        time.perf_counter() - started, self.loop.trace_events, dict(sorted(self.fault_counts.items())),
                        dict(sorted({**self.coverage, "wipes": self.wipes}.items())), error)
        self._teardown()
        return result

    async def _main(self) -> None:
        opts = self.options
        await asyncio.sleep(0.5)  # connections come up
        end = self.loop.time() + opts.duration_s
        clients = [self.loop.add_host(f"c{i + 1}") for i in range(opts.clients)]
        workers = [host.spawn(self._client(host, end), name=f"workload {host.name}") for host in clients]
        nemesis = self.loop.create_task(self._nemesis(end), context=self.loop.sim_context.copy())
        buckets = None
        if opts.buckets:
            buckets_host = self.loop.add_host("buckets")
            buckets = buckets_host.spawn(self._buckets(buckets_host, end), name="buckets")
        dt = None
        if opts.dt_workload:
            dt_host = self.loop.add_host("dt")
            dt = dt_host.spawn(self._datatypes(dt_host, end), name="datatypes")
        admin = None
        if self.options.membership != "none":
            admin_host = self.loop.add_host("admin")
            admin = admin_host.spawn(self._membership(admin_host, end), name="membership")
        await nemesis
        if admin is not None:
            await admin
        if buckets is not None:
            await buckets
        if dt is not None:
            await dt
        self._heal_all()
        for w in workers:
            try:
                await w
            except Exception as exc:  # noqa: BLE001 - a client's workload crashed: the client library leaked an exception
                self.problems.append(f"workload crashed: {type(exc).__name__}: {exc}")
        await self._settle()
        await self._liveness()
        if opts.dt_workload:
            await self._dt_final_read()
        grace = dict(self.options.knobs).get("ae_tombstone_grace_s", 86400)
        if grace < 3600:  # a quiet spell past the grace: the reaper runs, then the replicas must agree again
            await asyncio.sleep(grace + 5.0)
            await self._settle()

    # --- workload -------------------------------------------------------------------------

    async def _client(self, host: SimHost, end: float) -> None:
        opts = self.options
        rng = self.loop.rng(f"client.{host.name}")
        # Its own stream: a seed without buckets draws exactly what it drew before them.
        pick_bucket = self.loop.rng(f"client.{host.name}.bucket")
        pick_ttl = self.loop.rng(f"client.{host.name}.ttl")  # drawn from only with the ttl workload
        buckets = [b.DEFAULT] + [name for name, *_ in opts.buckets]
        history = self.history
        client = AsyncClient(self.addresses, timeout=opts.client_timeout_s, keys=None,
                             context=self.net.context(host),  # type: ignore[arg-type]
                             wall_ms=self._client_wall_ms, rng=self.loop.rng(f"client.{host.name}.replicas"),
                             read_fanout=opts.read_fanout, coordination=opts.coordination)  # type: ignore[arg-type]
        keys = [f"k{i}" for i in range(opts.keys)]
        counter = 0
        try:
            await client.connect()
        except DynqError as exc:
            history.fail_or_unknown(history.invoke(host.name, "read", "connect"), exc)
            return
        try:
            for _ in range(100_000):
                if self.loop.time() >= end:
                    break
                key = rng.choice(keys)
                roll = rng.random()
                bucket = pick_bucket.choice(buckets) if opts.buckets else b.DEFAULT
                if roll < 0.35:
                    counter += 1
                    await self._put(client, host.name, bucket, key, f"{host.name}-{counter}", None, frozenset(),
                                    self._ttl(pick_ttl))
                else:
                    op = history.invoke(host.name, "read", history_key(bucket, key))
                    try:
                        got = await client.get(key, bucket=None if bucket == b.DEFAULT else bucket)
                    except DynqError as exc:
                        history.fail_or_unknown(op, exc)
                        got = None
                    if got is not None:
                        seen = frozenset(v.decode() for v in got.values)
                        history.complete(op, OK, result=seen)
                        if roll < 0.85:
                            counter += 1
                            await self._put(client, host.name, bucket, key, f"{host.name}-{counter}", got.context, seen,
                                            self._ttl(pick_ttl))
                        elif roll < 0.95:
                            await self._delete(client, host.name, bucket, key, got.context, seen)
                await asyncio.sleep(rng.expovariate(1 / opts.think_s))
        finally:
            await client.close()

    def _ttl(self, rng: random.Random) -> int | None:
        """The ttl of a put: with the ttl workload, half of them get 1-5 s."""
        if not self.options.ttl_workload:
            return None
        return rng.choice((None, None, 1, 2, 5))

    async def _put(self, client: AsyncClient, process: str, bucket: str, key: str, value: str,
                   context: bytes | None, covers: frozenset[str], ttl: int | None = None) -> None:
        op = self.history.invoke(process, "put", history_key(bucket, key), value, covers, ttl=ttl)
        try:
            await client.put(key, value.encode(), context=context, bucket=None if bucket == b.DEFAULT else bucket,
                             ttl=ttl)
        except DynqError as exc:
            self.history.fail_or_unknown(op, exc)
        else:
            self.history.complete(op, OK)
            if bucket != b.DEFAULT:
                self.coverage["bucket_writes"] = self.coverage.get("bucket_writes", 0) + 1

    async def _delete(self, client: AsyncClient, process: str, bucket: str, key: str, context: bytes,
                      covers: frozenset[str]) -> None:
        op = self.history.invoke(process, "delete", history_key(bucket, key), None, covers)
        try:
            await client.delete(key, context=context, bucket=None if bucket == b.DEFAULT else bucket)
        except DynqError as exc:
            self.history.fail_or_unknown(op, exc)
        else:
            self.history.complete(op, OK)

    # --- buckets --------------------------------------------------------------------------

    async def _buckets(self, host: SimHost, end: float) -> None:
        """Create the seed's buckets through the claimant ops (as `dynq bucket create`
        does: any member forwards to the claimant) while the nemesis runs and the clients
        already use them, then change one bucket's read quorum (`bucket set`) mid-run."""
        opts = self.options
        rng = self.loop.rng("buckets")
        client = AsyncClient(self.addresses, timeout=5.0, keys=None, context=self.net.context(host),  # type: ignore[arg-type]
                             wall_ms=self._client_wall_ms, rng=self.loop.rng("buckets.replicas"))

        async def claimant_op(op: str, body: dict[str, Any]) -> bool:
            for attempt in range(20):
                address = self.addresses[attempt % len(self.addresses)]
                try:
                    await client.call_address(address, op, body)
                    return True
                except DynqError as exc:
                    self.loop.trace("buckets", op, body["name"], "failed", type(exc).__name__)
                    await asyncio.sleep(1.0)
            return False

        try:
            for name, n, r, w, conflict in opts.buckets:
                if await claimant_op("bucket_create", {"name": name, "props": {"n": n, "r": r, "w": w,
                                                                               "conflict": conflict}}):
                    self.buckets_created.append(name)
            await asyncio.sleep(rng.uniform(0.2, 0.6) * max(0.0, end - self.loop.time()))
            if self.buckets_created:
                name = rng.choice(self.buckets_created)
                n = next(bn for bn_name, bn, *_ in opts.buckets if bn_name == name)
                if await claimant_op("bucket_set", {"name": name, "props": {"r": rng.randint(1, n)}}):
                    self.coverage["bucket_sets"] = self.coverage.get("bucket_sets", 0) + 1
        finally:
            await client.close()

    # --- data types -----------------------------------------------------------------------

    async def _dt_client(self, host: SimHost) -> AsyncClient:
        return AsyncClient(self.addresses, timeout=self.options.client_timeout_s, keys=None,
                           context=self.net.context(host),  # type: ignore[arg-type]
                           wall_ms=self._client_wall_ms, rng=self.loop.rng(f"{host.name}.replicas"))

    async def _datatypes(self, host: SimHost, end: float) -> None:
        """Create a counter bucket and a set bucket (n=3) through the claimant, then, while
        the faults run, increment counters by -5..5, add unique elements to sets and remove
        elements a prior read saw (with that read's context), through the real client."""
        rng = self.loop.rng("dt")
        client = await self._dt_client(host)
        history = self.dt_history
        made = 0
        try:
            for name, kind in DT_BUCKETS:
                for attempt in range(20):
                    try:
                        await client.call_address(self.addresses[attempt % len(self.addresses)], "bucket_create",
                                                  {"name": name, "props": {"n": 3, "datatype": kind}})
                        made += 1
                        break
                    except DynqError as exc:
                        self.loop.trace("dt", name, "failed", type(exc).__name__)
                        await asyncio.sleep(1.0)
            if made < len(DT_BUCKETS):
                self.problems.append("data-type buckets not created in 20 attempts")
                return
            serial = 0
            while self.loop.time() < end:
                key = f"d{rng.randrange(DT_KEYS)}"
                roll = rng.random()
                if roll < 0.45:
                    n = rng.choice((-5, -3, -1, 1, 1, 2, 4, 5))
                    op = history.invoke(host.name, "incr", history_key(DT_BUCKETS[0][0], key), str(n))
                    await self._dt_record(op, client.counter(DT_BUCKETS[0][0], key).increment(n))
                elif roll < 0.8:
                    serial += 1
                    x = f"e{serial}"
                    op = history.invoke(host.name, "add", history_key(DT_BUCKETS[1][0], key), x)
                    await self._dt_record(op, client.set(DT_BUCKETS[1][0], key).add(x))
                else:
                    handle = client.set(DT_BUCKETS[1][0], key)
                    read = history.invoke(host.name, "read", history_key(DT_BUCKETS[1][0], key))
                    try:
                        seen = await handle.value()
                    except DynqError as exc:
                        history.fail_or_unknown(read, exc)
                        seen = set()
                    else:
                        history.complete(read, OK, result=frozenset(v.decode() for v in seen))
                    if seen:
                        x = rng.choice(sorted(v.decode() for v in seen))
                        op = history.invoke(host.name, "remove", read.key, x, covers=(x,))
                        await self._dt_record(op, handle.remove(x))
                await asyncio.sleep(rng.expovariate(1 / self.options.think_s))
        finally:
            await client.close()

    async def _dt_record(self, op: Op, call: Awaitable[object]) -> None:
        """Await one data-type op of the history: acknowledged, failed or unknown."""
        try:
            await call
        except DynqError as exc:
            self.dt_history.fail_or_unknown(op, exc)
        else:
            self.dt_history.complete(op, OK)

    async def _dt_final_read(self) -> None:
        """After heal and settling: once anti-entropy has brought the data-type keys'
        primaries to one state (bounded by ``settle_s``; the plain keys' settling does
        not wait for them), every data-type key read at R=N (all replicas merged)."""
        deadline = self.loop.time() + self.options.settle_s
        while self.loop.time() < deadline and not self._dt_agree():
            await asyncio.sleep(1.0)
        host = self.loop.add_host("dt-final")
        client = await self._dt_client(host)
        final: dict[str, Any] = {}
        try:
            for hkey in sorted({op.key for op in self.dt_history.ops}):
                bucket, _, key = hkey.partition("/")
                for _ in range(10):
                    try:
                        if bucket == DT_BUCKETS[0][0]:
                            final[hkey] = await client.counter(bucket, key).value(r=3)
                        else:
                            final[hkey] = {v.decode() for v in await client.set(bucket, key).value(r=3)}
                        break
                    except DynqError:
                        await asyncio.sleep(1.0)
                else:
                    self.problems.append(f"data types: {hkey} not readable at R=N after heal")
        finally:
            await client.close()
        self.dt_final = final
        self.dt_replicas = self._dt_replicas()

    def _dt_agree(self) -> bool:
        """Whether every up primary of each data-type key holds the same value."""
        return all(len({repr(sorted(v) if isinstance(v, (set, frozenset)) else v) for v in views.values()}) <= 1
                   for views in self._dt_replicas().values())

    def _dt_replicas(self) -> dict[str, dict[str, Any]]:
        """history key -> primary -> the value its committed typed state holds (None: none)."""
        state = self._state()
        out: dict[str, dict[str, Any]] = {}
        if state is None:
            return out
        kinds = dict(DT_BUCKETS)
        for hkey in sorted({op.key for op in self.dt_history.ops}):
            kind = kinds[hkey.partition("/")[0]]
            views = out[hkey] = {}
            for p in self._placement(state, hkey)[1]:
                sn = self.nodes.get(p)
                if sn is None or not sn.up or sn.node is None or sn.node.parts is None:
                    continue
                got = sn.node.parts.local.typed.read(storage_key_of(hkey), kind, staged=False)
                views[p] = None if got is None else crdt.value_of(kind, got.store)
        return out

    # --- membership -----------------------------------------------------------------------

    async def _membership(self, host: SimHost, end: float) -> None:
        """Join the spare node and/or make a member leave, through the real admin ops (as
        `dynq cluster join/leave/plan/commit` do), while the nemesis keeps going."""
        opts = self.options
        rng = self.loop.rng("membership")
        client = AsyncClient(self.addresses, timeout=5.0, keys=None, context=self.net.context(host),  # type: ignore[arg-type]
                             wall_ms=self._client_wall_ms, rng=self.loop.rng("admin.replicas"))
        try:
            await asyncio.sleep(rng.uniform(0.1, 0.4) * opts.duration_s)
            if "join" in opts.membership:
                spare = self.nodes[f"n{opts.nodes + 1}"]
                spare.start()
                await asyncio.sleep(0.5)
                for _ in range(10):
                    if not spare.up:
                        await asyncio.sleep(1.0)
                        continue
                    try:
                        await client.call_address(spare.config.listen, "cluster_join", {"cluster": self.addresses[0]})
                        await self._commit(client)
                        self.membership_done.append(f"join {spare.name}")
                        break
                    except DynqError as exc:
                        self.loop.trace("membership", "join failed", type(exc).__name__)
                        await asyncio.sleep(1.0)
            if "leave" in opts.membership:
                await asyncio.sleep(rng.uniform(0.1, 0.3) * opts.duration_s)
                leaving = f"n{opts.nodes}"  # never n1, the claimant (the smallest name)
                for _ in range(10):
                    try:
                        await client.call_address(self.addresses[0], "cluster_leave", {"node": leaving})
                        await self._commit(client)
                        self.membership_done.append(f"leave {leaving}")
                        self.left.add(leaving)
                        break
                    except DynqError as exc:
                        self.loop.trace("membership", "leave failed", type(exc).__name__)
                        await asyncio.sleep(1.0)
        finally:
            await client.close()

    async def _commit(self, client: AsyncClient) -> None:
        for attempt in range(10):
            try:
                await client.call_address(self.addresses[0], "cluster_commit", {})
                return
            except DynqError:
                if attempt == 9:
                    raise
                await asyncio.sleep(1.0)

    # --- faults ---------------------------------------------------------------------------

    async def _nemesis(self, end: float) -> None:
        opts = self.options
        rng = self.loop.rng("nemesis")
        names = sorted(self.nodes)
        while True:
            await asyncio.sleep(rng.expovariate(1 / opts.fault_gap_s))
            if self.loop.time() >= end:
                return
            kind = rng.choice(opts.faults)
            self.fault_counts[kind] = self.fault_counts.get(kind, 0) + 1
            target = self.nodes[rng.choice(names)]
            if target.lives == 0 or target.name in self.left:
                continue  # not started yet (the spare before its join), or gone
            back_in = rng.uniform(0.5, 8.0)
            self.loop.trace("fault", kind, target.name, round(back_in, 6))
            if kind in ("kill", "power"):
                if target.host.alive:
                    target.crash(power=kind == "power")
                    self.loop.sim_call_later(rng.uniform(0.1, 6.0), self._restart, target)
            elif kind == "wipe":
                if (target.host.alive and opts.w >= 2 and all(w >= 2 for _, _, _, w, _ in opts.buckets)
                        and self.wipes < WIPES_PER_SEED and opts.membership == "none"):
                    self.wipes += 1
                    target.wipe()
                    self.loop.sim_call_later(rng.uniform(0.1, 6.0), self._restart, target)
            elif kind == "blackout":
                struck = [sn for sn in self.nodes.values() if sn.lives and sn.host.alive]
                for sn in struck:
                    sn.crash(power=True)
                for sn in struck:
                    self.loop.sim_call_later(rng.uniform(0.5, 4.0), self._restart, sn)
            elif kind == "pause":
                target.host.pause(rng.uniform(0.05, 3.0))
            elif kind == "partition":
                shuffled = names[:]
                rng.shuffle(shuffled)
                cut = rng.randint(1, len(shuffled) - 1)
                fault = self.net.partition([shuffled[:cut], shuffled[cut:]])
                self.loop.sim_call_later(back_in, self.net.heal, fault)
            elif kind == "cut":
                other = rng.choice([n for n in names if n != target.name])
                fault = self.net.cut(target.name, other, mode=None)
                self.loop.sim_call_later(back_in, self.net.heal, fault)
            elif kind == "clog":
                other = rng.choice([n for n in names if n != target.name] + [f"c{i + 1}" for i in range(opts.clients)])
                self.net.clog(target.name, other, rng.uniform(0.1, 3.0), both=rng.random() < 0.5)
            elif kind == "latency":
                other = rng.choice([n for n in names if n != target.name])
                self.net.set_latency(target.name, other, rng.choice((0.001, 0.01, 0.1, 0.5)), rng.choice((0.0, 0.01, 0.1)))
                self.loop.sim_call_later(back_in, self.net.set_latency, target.name, other, self.net.latency,
                                         self.net.jitter)
            elif kind == "disk_full" and target.up:
                disk = target.disk
                disk.capacity = disk.used() + rng.choice((0, 4096, 65536))
                self.loop.sim_call_later(back_in, setattr, disk, "capacity", None)
            elif kind == "fsync_eio" and target.up:
                target.disk.fail_syncs = rng.randint(1, 3)

    def _restart(self, sn: SimNode) -> None:
        if not sn.host.alive and not self._gone(sn):
            sn.start()

    def _heal_all(self) -> None:
        self.loop.trace("heal all")
        self.net.heal()
        for a in self.nodes:
            for b in self.nodes:
                if a != b:
                    self.net.set_latency(a, b, self.net.latency, self.net.jitter, both=False)
        for sn in self.nodes.values():
            sn.disk.capacity = None
            sn.disk.fail_syncs = 0
            if sn.host.paused:
                sn.host.resume()
            if sn.lives == 0 or self._gone(sn):
                continue
            if not sn.host.alive or sn.node is None:
                if sn.host.alive:
                    sn.crash(power=False)
                sn.start()

    # --- liveness and the final state -------------------------------------------------------

    def _gone(self, sn: SimNode) -> bool:
        """A node that left and whose serve task ended (it exits once it handed off)."""
        return sn.name in self.left and sn.task is not None and sn.task.done()

    def _serving(self) -> list[SimNode]:
        return [sn for sn in self.nodes.values() if sn.lives and not self._gone(sn)]

    def _settled(self) -> bool:
        serving = self._serving()
        if any(not sn.up for sn in serving):
            return False
        if any(sn.name in self.left for sn in serving):
            return False  # still handing off
        if any(sn.node is not None and (sn.node.storage.hint_count or sn.node.storage.staged_hint_count)
               for sn in serving):
            return False
        states = {sn.node.cluster.state.version for sn in serving if sn.node is not None}
        if len(states) != 1 or any(sn.node is not None and (sn.node.cluster.state.next_ring is not None
                                                             or sn.node.cluster.state.transfers)
                                   for sn in serving):
            return False
        copies = self._copies()
        return check_convergence(self._views(copies)).ok and check_placement(self._placed(copies)).ok

    async def _settle(self) -> None:
        deadline = self.loop.time() + self.options.settle_s
        while self.loop.time() < deadline:
            await asyncio.sleep(1.0)
            if self._settled():
                self.loop.trace("settled")
                return

    def _state(self) -> ClusterState | None:
        """The newest cluster state any serving node holds (its ring and its buckets)."""
        nodes = [sn.node for sn in self._serving() if sn.node is not None]
        if not nodes:
            return None
        return max(nodes, key=lambda n: n.cluster.state.version).cluster.state

    def _client_wall_ms(self) -> int:
        """A client's wall clock: virtual, like the nodes' (without their skew)."""
        return int((EPOCH + self.loop.time()) * 1000)

    def _ring(self) -> Ring | None:
        state = self._state()
        return None if state is None else state.ring

    async def _liveness(self) -> None:
        """After heal, a write to all N replicas and a read of all N succeed (a few tries)."""
        host = self.loop.add_host("liveness")
        ring = self._ring()
        addresses = [m.address for m in ring.members] if ring is not None else self.addresses
        client = AsyncClient(addresses, timeout=5.0, keys=None, context=self.net.context(host),  # type: ignore[arg-type]
                             wall_ms=self._client_wall_ms, rng=self.loop.rng("liveness.replicas"))
        n = self.options.n
        errors: list[str] = []

        async def probe() -> None:
            for attempt in range(3):
                try:
                    await client.put("liveness", b"ok", w=n)
                    got = await client.get("liveness", r=n)
                    if got.values != [b"ok"]:
                        errors.append(f"liveness read returned {got.values!r}")
                    return
                except DynqError as exc:
                    errors.append(f"try {attempt + 1}: {type(exc).__name__}: {exc}"[:200])
                    await asyncio.sleep(2.0)

        try:
            await host.spawn(probe(), name="liveness")
            if len(errors) == 3 or any(e.startswith("liveness read") for e in errors):
                self.problems.append("liveness after heal: " + "; ".join(errors))
        finally:
            await client.close()

    def _copies(self) -> dict[str, dict[str, VersionedObject]]:
        """node -> history key -> the object it stores (committed state)."""
        out: dict[str, dict[str, VersionedObject]] = {}
        for sn in sorted(self._serving(), key=lambda sn: sn.name):
            name = sn.name
            if sn.node is None:
                continue
            objs = out[name] = {}
            for k, o in sn.node.storage.conn.execute("SELECT key, obj FROM objects ORDER BY key"):
                key = history_key_of(bytes(k))
                if key.partition("/")[0] in DT_BUCKET_NAMES:
                    continue  # typed state, not a versioned object: the data-type checker reads it
                try:
                    objs[key] = decode_object(bytes(o))
                except (ValueError, ProtocolError) as exc:
                    self.undecodable.add(f"{key} on {name}: the stored object does not decode: {exc}")
        return out

    def _history_keys(self) -> list[str]:
        return sorted({op.key for op in self.history.ops if op.f != "read" or op.key != "connect"})

    def _placement(self, state: ClusterState, key: str) -> tuple[int, tuple[str, ...]]:
        """(n, primaries) of a history key under ``state``: its bucket's n, the ring's for
        the default bucket (and for a bucket ``state`` does not know)."""
        skey = storage_key_of(key)
        n = state.buckets.n_of(skey, state.ring.n) or state.ring.n
        return n, tuple(state.ring.preference_list_for(skey, n).primaries)

    def _views(self, copies: dict[str, dict[str, VersionedObject]] | None = None) -> dict[str, dict[str, bytes | None]]:
        copies = self._copies() if copies is None else copies
        state = self._state()
        assert state is not None
        views: dict[str, dict[str, bytes | None]] = {}
        for key in self._history_keys():
            _, primaries = self._placement(state, key)
            views[key] = {}
            for p in primaries:
                obj = copies.get(p, {}).get(key)
                views[key][p] = encode_object(obj) if obj is not None else None
        return views

    def _placed(self, copies: dict[str, dict[str, VersionedObject]]) -> dict[str, tuple[int, tuple[str, ...], set[str]]]:
        """Every key stored anywhere (and every key of the history): (n, primaries, holders)."""
        state = self._state()
        assert state is not None
        holders: dict[str, set[str]] = {key: set() for key in self._history_keys()}
        for node, objs in copies.items():
            for key in objs:
                holders.setdefault(key, set()).add(node)
        return {key: (*self._placement(state, key), nodes) for key, nodes in holders.items()}

    def _lww_keys(self, keys: Iterable[str]) -> set[str]:
        state = self._state()
        if state is None:
            return set()
        out = set()
        for key in keys:
            props = state.buckets.props_of(storage_key_of(key))
            if props is not None and props.lww:
                out.add(key)
        return out

    def _check(self, handler: _ErrorLog) -> list[Verdict]:
        copies = self._copies()
        state = self._state()
        final: dict[str, set[str]] = {}
        if state is not None:
            for key in sorted({op.key for op in self.history.ops if op.key != "connect"}):
                _, primaries = self._placement(state, key)
                merged = merge_all(copies.get(p, {}).get(key) for p in primaries)
                final[key] = ({v.decode() for v in merged.live(self._client_wall_ms()).values}
                              if merged is not None else set())
        lww = self._lww_keys({op.key for op in self.history.ops} | {k for objs in copies.values() for k in objs})
        problems = list(self.problems) + sorted(self.undecodable)
        for ctx in self.loop.unhandled:
            exc = ctx.get("exception")
            problems.append(f"unhandled in the loop: {ctx.get('message')}: {type(exc).__name__ if exc else ''} {exc}")
        disk_faults = {"disk_full", "fsync_eio"} & set(self.fault_counts)
        tolerated = 0
        for record in handler.records:
            if str(record.msg).startswith("second reply to request"):  # one reply per request
                problems.append(f"{record.name}: {record.getMessage()}")
            if record.exc_info and record.levelno >= logging.ERROR:
                exc = record.exc_info[1]
                if disk_faults and isinstance(exc, (apsw.FullError, apsw.IOError)):
                    tolerated += 1  # a background service failed on the faulty disk and was restarted
                    continue
                problems.append(f"logged with a traceback: {record.name}: {record.getMessage()[:200]}: "
                                f"{type(exc).__name__}: {exc}")
        for name, sn in sorted(self.nodes.items()):
            if sn.task is not None and sn.task.done() and not (name in self.left and sn.task.exception() is None):
                exc = sn.task.exception() if not sn.task.cancelled() else None
                problems.append(f"{name}'s serve task ended: {exc!r}")
        for sn in self.nodes.values():
            if sn.node is not None:
                self.harvest(sn.node)
        self.coverage["membership_changes"] = len(self.membership_done)
        if self.options.membership != "none" and not self.membership_done:
            self.coverage["membership_not_committed"] = 1
        if self.options.buckets:
            self.coverage["buckets_created"] = len(self.buckets_created)
            self.coverage["lww_keys"] = sum(1 for key in lww if final.get(key))
        self.loop.trace("history", tuple((op.index, op.outcome) for op in self.history.ops))
        dt_verdicts = []
        if self.options.dt_workload:
            self.coverage["dt_ops"] = sum(1 for op in self.dt_history.ops if op.f != "read" and op.outcome == OK)
            dt_verdicts = check_datatypes(self.dt_history, self.dt_final, self.dt_replicas)
        return dt_verdicts + [
            check_siblings(self.history, final, lww, expiry_slack_s=self.options.skew_s + 1.0),
            check_dots((node, key, obj) for node, objs in copies.items() for key, obj in objs.items()),
            check_convergence(self._views(copies)) if state is not None else Verdict("convergence", ["no node up"]),
            check_lww((node, key, obj) for node, objs in copies.items() for key, obj in objs.items() if key in lww),
            check_placement(self._placed(copies)) if state is not None else Verdict("placement", ["no node up"]),
            check_hints_drained({sn.name: sn.node.storage.hint_count for sn in self._serving()
                                 if sn.node is not None}),
            check_invariants(problems, {"warnings_logged": sum(1 for r in handler.records if r.levelno == logging.WARNING),
                                        "errors_logged": sum(1 for r in handler.records if r.levelno >= logging.ERROR),
                                        "disk_errors_tolerated": tolerated}),
        ]

    def _teardown(self) -> None:
        for sn in self.nodes.values():
            if sn.host.alive:
                self.bury(sn.host)
                sn.crash(power=False)
        for task in list(self._tasks):
            if not task.done():
                task._log_destroy_pending = False  # type: ignore[attr-defined]
        graveyard, self._graveyard = self._graveyard, []
        for task in graveyard:
            coro = task.get_coro()
            try:
                coro.close()  # runs its finally blocks now, in the harness
            except BaseException:  # noqa: BLE001, S110 - the dead life's cleanup has nothing left to clean
                pass
        del graveyard
        self.loop.close()
        gc.collect()
        for sn in self.nodes.values():
            sn.disk.unregister()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _tmp_root() -> str | None:
    return "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def run_seed(seed: int, profile: str = "ci", mutation: str | None = None, buckets: bool = True,
             ttl: bool = False, dt: bool = False) -> Result:
    """Expand ``seed`` and run it (``buckets=False``: without the buckets workload; ``ttl``:
    with the ttl workload)."""
    return Simulation(Options.expand(seed, profile, mutation, buckets, ttl, dt)).run()


__all__ = ["DEFAULT_FAULTS", "FAULTS", "Options", "Result", "SimNode", "Simulation", "run_seed"]
