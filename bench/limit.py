"""The hand-written limit: dynq's put and get shapes on bare pyzmq + msgpack + apsw.

    python bench/limit.py [--keys 10000] [--value-size 1024] [--concurrency 32] [--curve] [--rounds 3]

What dynq could reach on this machine if it did nothing but the work its request shapes
need (shared/PERF.md describes the shapes; this is our own code). No versions, no Merkle
leaves, no metrics, no membership: only the hops, the encoding and the durable write.

* **put, W=2**: the client sends the put to one replica (the key's coordinator, spread by
  a hash of the key), which commits it locally and forwards it to the 2 other replicas;
  it answers the client at the first replica ack (its own write + 1 = W=2). 3 replica
  processes.
* **get, R=2**: the client sends the get straight to 2 of the key's replicas and completes
  at both replies (client-coordinated, as dynq's client does).

How it is written, because that is what the limit measures (PERF.md, "What made the
difference"):

* one asyncio loop per process driving plain zmq sockets through ``loop.add_reader``;
  ZeroMQ's fd is edge-triggered, so every callback drains until a pass finds nothing, and
  after sending we look at ``EVENTS`` in case the send consumed the edge;
* one ``loop.call_later`` timer per request for its deadline, cancelled on completion;
  no task or future per request;
* SQLite in WAL mode with ``synchronous=FULL`` and group commit: every write received in
  one drain of the ROUTER is committed in one transaction before any of it is acked.

Optionally CURVE on every socket (``--curve``), as dynq's default (`dynq up`) runs.

Wire format, msgpack arrays (the limit needs no more): request ``[op, id, key, value]``,
reply ``[id, ok, value]``. Replicas are real processes on 127.0.0.1, stopped by PID
(SIGTERM, then SIGKILL after a bound); every load loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import apsw
import msgpack
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procstat import cpu_snapshot, us_per_op  # noqa: E402
from dynq.localcluster import free_ports  # noqa: E402

OP_PUT = 1  # client -> coordinator
OP_REPLICA_PUT = 2  # coordinator -> replica
OP_GET = 3  # client -> replica
OP_PING = 4
OP_STATS = 5  # (transactions, rows) committed so far: group commit's batch size

_POLLIN = int(zmq.POLLIN)
_AGAIN = zmq.Again
_NOBLOCK = zmq.NOBLOCK
_SNDMORE = zmq.SNDMORE

CurveTriple = tuple[bytes, bytes, bytes]  # (public, secret, server public), Z85


def _packb(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def _unpackb(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False)


def _curve_client(sock: zmq.Socket[Any], keys: CurveTriple | None) -> None:
    if keys is not None:
        sock.curve_publickey, sock.curve_secretkey, sock.curve_serverkey = keys


def _dealer(ctx: zmq.Context[Any], address: str, keys: CurveTriple | None) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 10_000)
    sock.setsockopt(zmq.RCVHWM, 10_000)
    _curve_client(sock, keys)
    sock.connect(address)
    return sock  # type: ignore[no-any-return]


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def home(key: bytes) -> int:
    """The key's first replica (its put coordinator), spread over the 3 replicas."""
    return zlib.crc32(key) % 3


# --- a replica process ---------------------------------------------------------------------


class Replica:
    """One replica: a ROUTER for requests, a DEALER to each other replica for forwarding."""

    def __init__(self, index: int, addresses: list[str], db_path: Path, server_secret: bytes | None,
                 peer_keys: CurveTriple | None, timeout: float = 5.0) -> None:
        self.index = index
        self.ctx: zmq.Context[Any] = zmq.Context(1)
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.setsockopt(zmq.LINGER, 0)
        self.router.setsockopt(zmq.SNDHWM, 10_000)
        self.router.setsockopt(zmq.RCVHWM, 10_000)
        if server_secret is not None:
            self.router.curve_server = True
            self.router.curve_secretkey = server_secret
        self.router.bind(addresses[index])
        self.peers = [_dealer(self.ctx, a, peer_keys) for i, a in enumerate(addresses) if i != index]
        self.db = apsw.Connection(str(db_path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID")
        self.timeout = timeout  # seconds a forwarded put may wait for its replica acks
        self.ids = 0  # last forwarded request id
        self.waiting: dict[int, tuple[bytes, int, asyncio.TimerHandle]] = {}  # fwd id -> client ident, id, timer
        self.transactions = 0  # group commits so far
        self.rows = 0  # rows written so far
        self.loop: asyncio.AbstractEventLoop | None = None

    async def serve(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        stop = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, _settle, stop, None)
        loop.add_reader(self.router.fileno(), self.drain_router)
        for peer in self.peers:
            loop.add_reader(peer.fileno(), self.drain_peer, peer)
        print("ready", flush=True)
        await stop
        for sock in (self.router, *self.peers):
            loop.remove_reader(sock.fileno())
            sock.close(0)
        self.ctx.term()
        self.db.close()

    def drain_router(self) -> None:
        """Everything waiting on the ROUTER: gets answered at once, writes group-committed."""
        router, db = self.router, self.db
        writes: list[tuple[bytes, bytes]] = []
        client_puts: list[tuple[bytes, int, bytes, bytes]] = []  # to forward once committed
        acks: list[tuple[bytes, int]] = []
        while True:
            try:
                ident, frame = router.recv_multipart(_NOBLOCK)
            except _AGAIN:
                break
            op, req_id, key, value = _unpackb(frame)
            if op == OP_GET:
                row = None
                for (v,) in db.execute("SELECT v FROM kv WHERE k = ?", (key,)):
                    row = v
                router.send(ident, _NOBLOCK | _SNDMORE)
                router.send(_packb([req_id, True, row]), _NOBLOCK)
            elif op == OP_REPLICA_PUT:
                writes.append((key, value))
                acks.append((ident, req_id))
            elif op == OP_PUT:
                writes.append((key, value))
                client_puts.append((ident, req_id, key, value))
            elif op == OP_PING:
                router.send(ident, _NOBLOCK | _SNDMORE)
                router.send(_packb([req_id, True, None]), _NOBLOCK)
            elif op == OP_STATS:
                router.send(ident, _NOBLOCK | _SNDMORE)
                router.send(_packb([req_id, True, [self.transactions, self.rows]]), _NOBLOCK)
        if writes:
            with db:  # one transaction for the whole drain: group commit
                db.executemany("INSERT INTO kv (k, v) VALUES (?, ?) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
                               writes)
            self.transactions += 1
            self.rows += len(writes)
            ok = _packb  # local alias
            for ident, req_id in acks:
                router.send(ident, _NOBLOCK | _SNDMORE)
                router.send(ok([req_id, True, None]), _NOBLOCK)
            if client_puts:
                self.forward(client_puts)
        if int(router.getsockopt(zmq.EVENTS)) & _POLLIN:  # a send may have eaten the edge
            assert self.loop is not None
            self.loop.call_soon(self.drain_router)

    def forward(self, puts: list[tuple[bytes, int, bytes, bytes]]) -> None:
        """Send each committed client put to the 2 other replicas; one timer per put."""
        assert self.loop is not None
        call_later, waiting = self.loop.call_later, self.waiting
        for ident, req_id, key, value in puts:
            self.ids += 1
            fwd = self.ids
            frame = _packb([OP_REPLICA_PUT, fwd, key, value])
            for peer in self.peers:
                peer.send(frame, _NOBLOCK)
            waiting[fwd] = (ident, req_id, call_later(self.timeout, self.expire, fwd))
        for peer in self.peers:
            if int(peer.getsockopt(zmq.EVENTS)) & _POLLIN:
                self.loop.call_soon(self.drain_peer, peer)

    def expire(self, fwd: int) -> None:
        entry = self.waiting.pop(fwd, None)
        if entry is not None:
            self.reply(entry[0], entry[1], False)

    def reply(self, ident: bytes, req_id: int, ok: bool) -> None:
        self.router.send(ident, _NOBLOCK | _SNDMORE)
        self.router.send(_packb([req_id, ok, None]), _NOBLOCK)

    def drain_peer(self, peer: zmq.Socket[Any]) -> None:
        """Replica acks: the first one completes the put (local write + 1 = W=2)."""
        replied = False
        while True:
            try:
                frame = peer.recv(_NOBLOCK)
            except _AGAIN:
                break
            fwd = _unpackb(frame)[0]
            entry = self.waiting.pop(fwd, None)
            if entry is not None:  # the second ack finds nothing: dropped, like a late reply
                entry[2].cancel()
                self.reply(entry[0], entry[1], True)
                replied = True
        if replied and int(self.router.getsockopt(zmq.EVENTS)) & _POLLIN:
            assert self.loop is not None
            self.loop.call_soon(self.drain_router)


def run_replica(args: argparse.Namespace) -> None:
    server_secret = args.server_secret.encode() if args.server_secret else None
    peer_keys = (args.peer_public.encode(), args.peer_secret.encode(), args.server_public.encode()) \
        if args.server_public else None
    replica = Replica(args.index, args.addresses.split(","), Path(args.db), server_secret, peer_keys)
    asyncio.run(replica.serve())


# --- the client ----------------------------------------------------------------------------

Done = Callable[[bool], None]


class LimitClient:
    """Callbacks over one DEALER per replica; one timer per request; no task per request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, addresses: list[str], keys: CurveTriple | None,
                 timeout: float = 5.0) -> None:
        self.loop = loop
        self.ctx: zmq.Context[Any] = zmq.Context(1)
        self.socks = [_dealer(self.ctx, a, keys) for a in addresses]
        self.timeout = timeout
        self.ids = 0
        # request id -> [done callback, replies still needed, timer, value seen]
        self.pending: dict[int, list[Any]] = {}
        for sock in self.socks:
            loop.add_reader(sock.fileno(), self.drain, sock)

    def close(self) -> None:
        for sock in self.socks:
            self.loop.remove_reader(sock.fileno())
            sock.close(0)
        self.ctx.term()

    def _start(self, need: int, done: Done, targets: list[int], frame_of: Callable[[int], bytes]) -> list[Any]:
        """Send one request to ``targets``; it completes at ``need`` ok replies. Returns its
        pending entry (whose last slot will hold the reply's value)."""
        self.ids += 1
        req_id = self.ids
        entry = self.pending[req_id] = [done, need, self.loop.call_later(self.timeout, self._expire, req_id), None]
        frame = frame_of(req_id)
        for t in targets:
            sock = self.socks[t]
            sock.send(frame, _NOBLOCK)
            if int(sock.getsockopt(zmq.EVENTS)) & _POLLIN:
                self.loop.call_soon(self.drain, sock)
        return entry

    def put(self, key: bytes, value: bytes, done: Done) -> None:
        self._start(1, done, [home(key)], lambda i: _packb([OP_PUT, i, key, value]))

    def get(self, key: bytes, done: Done) -> None:
        h = home(key)
        self._start(2, done, [h, (h + 1) % 3], lambda i: _packb([OP_GET, i, key, None]))

    def call(self, replica: int, op: int, done: Callable[[Any], None]) -> None:
        """One admin request (ping, stats): ``done`` gets the reply's value."""
        holder: list[list[Any]] = []

        def finish(ok: bool) -> None:  # runs from a later drain, after _start returned
            done(holder[0][3] if ok else None)

        holder.append(self._start(1, finish, [replica], lambda i: _packb([op, i, None, None])))

    def _expire(self, req_id: int) -> None:
        entry = self.pending.pop(req_id, None)
        if entry is not None:
            entry[0](False)

    def drain(self, sock: zmq.Socket[Any]) -> None:
        pending = self.pending
        while True:
            try:
                frame = sock.recv(_NOBLOCK)
            except _AGAIN:
                return
            req_id, ok, value = _unpackb(frame)
            entry = pending.get(req_id)
            if entry is None:
                continue
            if value is not None:
                entry[3] = value
            if not ok:
                del pending[req_id]
                entry[2].cancel()
                entry[0](False)
                continue
            entry[1] -= 1
            if entry[1] == 0:
                del pending[req_id]
                entry[2].cancel()
                entry[0](True)


@dataclass
class Phase:
    """One measured phase: throughput and latencies (seconds) of its requests."""

    ops: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    cpu_us: dict[str, float] = field(default_factory=dict)  # CPU µs per op of each process

    @property
    def ops_s(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0


def pct_ms(samples: list[float], q: float) -> float:
    if not samples:
        return 0.0
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def closed_loop(client: LimitClient, op: str, keys: list[bytes], value: bytes, concurrency: int,
                      bound_s: float = 120.0) -> Phase:
    """``concurrency`` requests in flight until every key was done once (or ``bound_s``)."""
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    latencies: list[float] = []
    state = {"next": 0, "in_flight": 0, "failed": 0}
    clock = time.perf_counter

    def issue() -> None:
        i = state["next"]
        state["next"] = i + 1
        state["in_flight"] += 1
        t0 = clock()

        def done(ok: bool) -> None:
            state["in_flight"] -= 1
            if ok:
                latencies.append(clock() - t0)
            else:
                state["failed"] += 1
            if state["next"] < len(keys):
                issue()
            elif state["in_flight"] == 0 and not finished.done():
                finished.set_result(None)

        if op == "put":
            client.put(keys[i], value, done)
        else:
            client.get(keys[i], done)

    start = clock()
    for _ in range(min(concurrency, len(keys))):
        issue()
    await asyncio.wait_for(finished, bound_s)
    return Phase(len(latencies), clock() - start, latencies, state["failed"])


async def wait_ready(client: LimitClient, bound_s: float = 20.0) -> None:
    """Every replica answers a ping and puts go all the way round (peers connected)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + bound_s
    for replica in range(3):
        while True:
            got: asyncio.Future[Any] = loop.create_future()
            client.call(replica, OP_PING, functools.partial(_settle, got))
            try:
                await asyncio.wait_for(got, 1.0)
                break
            except asyncio.TimeoutError:
                if loop.time() > deadline:
                    raise RuntimeError(f"limit replica {replica} does not answer")
    warm = [b"warm-%d" % i for i in range(300)]
    phase = await closed_loop(client, "put", warm, b"x" * 100, 8)
    if phase.failed:
        raise RuntimeError(f"limit warm-up: {phase.failed} puts failed")


async def group_commit_stats(client: LimitClient) -> list[tuple[int, int]]:
    """(transactions, rows) committed so far on each replica."""
    loop = asyncio.get_running_loop()
    out = []
    for replica in range(3):
        got: asyncio.Future[Any] = loop.create_future()
        client.call(replica, OP_STATS, functools.partial(_settle, got))
        value = await asyncio.wait_for(got, 5.0)
        out.append((int(value[0]), int(value[1])) if value else (0, 0))
    return out


# --- the processes -------------------------------------------------------------------------


class LimitCluster:
    """Three replica processes on 127.0.0.1 in ``data_dir``, stopped by PID."""

    def __init__(self, data_dir: Path, curve: bool) -> None:
        self.data_dir = data_dir
        self.addresses = [f"tcp://127.0.0.1:{p}" for p in free_ports(3, span=1)]
        self.processes: list[subprocess.Popen[bytes]] = []
        self.client_keys: CurveTriple | None = None
        self.curve = curve
        if curve:
            server_public, server_secret = zmq.curve_keypair()
            public, secret = zmq.curve_keypair()
            self._server_secret = server_secret
            self.client_keys = (public, secret, server_public)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def start(self, bound_s: float = 20.0) -> None:
        script = str(Path(__file__).resolve())
        for i in range(3):
            cmd = [sys.executable, script, "replica", "--index", str(i), "--addresses", ",".join(self.addresses),
                   "--db", str(self.data_dir / f"limit-{i}.db")]
            if self.client_keys is not None:
                cmd += ["--server-secret", self._server_secret.decode(), "--peer-public",
                        self.client_keys[0].decode(), "--peer-secret", self.client_keys[1].decode(),
                        "--server-public", self.client_keys[2].decode()]
            self.processes.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                                   start_new_session=True))
        deadline = time.monotonic() + bound_s
        for proc in self.processes:
            assert proc.stdout is not None
            while proc.stdout.readline().strip() != b"ready":
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"limit replica pid {proc.pid} did not start")

    def stop(self, bound_s: float = 10.0) -> None:
        for proc in self.processes:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.processes:
            try:
                proc.wait(bound_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        self.processes = []


async def measured(client: LimitClient, pids: dict[str, int], op: str, keys: list[bytes], value: bytes,
                   concurrency: int, bound_s: float) -> Phase:
    """A closed-loop phase with the CPU each process spent on it."""
    before = cpu_snapshot(pids)
    phase = await closed_loop(client, op, keys, value, concurrency, bound_s)
    phase.cpu_us = us_per_op(before, cpu_snapshot(pids), phase.ops)
    return phase


async def measure(cluster: LimitCluster, keys: int, value_size: int, concurrency: int, tag: str,
                  lone: int = 1000, bound_s: float = 120.0) -> dict[str, Phase]:
    """Puts of ``keys`` fresh keys then gets of them at ``concurrency``, and ``lone`` of each
    with one outstanding (the latency of a lone request)."""
    client = LimitClient(asyncio.get_running_loop(), cluster.addresses, cluster.client_keys)
    pids = {f"r{i + 1}": pid for i, pid in enumerate(cluster.pids)} | {"client": os.getpid()}
    try:
        await wait_ready(client)
        value = os.urandom(value_size)
        batch = [f"{tag}-{i}".encode() for i in range(keys)]
        commits = await group_commit_stats(client)
        out = {"put": await measured(client, pids, "put", batch, value, concurrency, bound_s)}
        after = await group_commit_stats(client)
        out["put"].cpu_us["rows/txn"] = round(sum(a[1] - b[1] for a, b in zip(after, commits))
                                              / max(1, sum(a[0] - b[0] for a, b in zip(after, commits))), 1)
        out["get"] = await measured(client, pids, "get", batch, value, concurrency, bound_s)
        few = batch[:lone]
        out["put c=1"] = await closed_loop(client, "put", [k + b"-1" for k in few], value, 1, bound_s)
        out["get c=1"] = await closed_loop(client, "get", few, value, 1, bound_s)
        return out
    finally:
        client.close()


def exit_on_sigterm() -> None:
    """SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the replicas are stopped."""
    def unwind(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the cleanup must not be interrupted
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, unwind)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command")
    rep = sub.add_parser("replica", help="(internal) run one replica process")
    rep.add_argument("--index", type=int, required=True)
    rep.add_argument("--addresses", required=True)
    rep.add_argument("--db", required=True)
    for name in ("--server-secret", "--peer-public", "--peer-secret", "--server-public"):
        rep.add_argument(name, default="")
    parser.add_argument("--keys", type=int, default=10_000)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--curve", action="store_true", help="CURVE on every socket (dynq up's default)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.command == "replica":
        run_replica(args)
        return
    exit_on_sigterm()
    rounds: list[dict[str, Phase]] = []
    with tempfile.TemporaryDirectory(prefix="dynq-limit-") as tmp:
        cluster = LimitCluster(Path(tmp), args.curve)
        cluster.start()
        try:
            for n in range(args.rounds):
                rounds.append(asyncio.run(measure(cluster, args.keys, args.value_size, args.concurrency, f"r{n}")))
        finally:
            cluster.stop()
    summary = {name: {"ops_s": statistics.median(r[name].ops_s for r in rounds),
                      "p50_ms": statistics.median(pct_ms(r[name].latencies, 0.5) for r in rounds),
                      "p99_ms": statistics.median(pct_ms(r[name].latencies, 0.99) for r in rounds),
                      "failed": sum(r[name].failed for r in rounds),
                      "cpu_us": {k: statistics.median(r[name].cpu_us.get(k, 0.0) for r in rounds)
                                 for k in rounds[0][name].cpu_us}} for name in rounds[0]}
    if args.json:
        print(json.dumps({"curve": args.curve, "rounds": args.rounds, "median": summary}, indent=2))
        return
    print(f"hand-written limit, curve={args.curve}, {args.keys} keys, {args.value_size} B, "
          f"median of {args.rounds} rounds:")
    for name, s in summary.items():
        print(f"  {name:<8} {s['ops_s']:>8.0f} ops/s  p50 {s['p50_ms']:.2f} ms  p99 {s['p99_ms']:.2f} ms"
              f"  failed {s['failed']}  CPU µs/op {s['cpu_us']}")


if __name__ == "__main__":
    main()
