"""Shared fixtures: real node processes on random loopback ports, cleaned up by PID."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from dynq.localcluster import LocalCluster, free_ports
from dynq_client import Client, DynqError

FAST_EXPIRY = """
[membership]
gossip_interval_ms = 200

[anti_entropy]
interval_ms = 100
expiry_grace_s = 0
expiry_interval_ms = 200
"""
"""Node settings for ttl tests: expired values reclaimed within a second (no grace)."""

GOSSIP_FAST_NO_AE = """
[membership]
gossip_interval_ms = 200

[anti_entropy]
enabled = false
"""
"""Node settings: fast gossip, anti-entropy off (only the write path and hints move data)."""


def run_dynq(*args: str, seed: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """The dynq command (``python -m dynq``) against the cluster at ``seed``, output captured."""
    return subprocess.run([sys.executable, "-m", "dynq", *args, "--seed", seed],
                          capture_output=True, text=True, timeout=timeout)


def make_cluster(tmp_path: Path, nodes: int = 3, **kw: object) -> LocalCluster:
    span = 3 if kw.get("http") else 2  # [http] takes each node's port + 2
    addresses = [f"tcp://127.0.0.1:{port}" for port in free_ports(nodes, span)]
    return LocalCluster(tmp_path / "cluster", addresses, **kw)  # type: ignore[arg-type]


@contextmanager
def running_cluster(tmp_path: Path, nodes: int = 3, **kw: object) -> Iterator[LocalCluster]:
    """A started cluster for a module-scoped fixture; stopped (by PID) on exit."""
    cluster = make_cluster(tmp_path, nodes, **kw)
    cluster.start_all()
    try:
        cluster.wait_ready()
        yield cluster
    finally:
        cluster.stop_all()


@pytest.fixture
def cluster_factory(tmp_path: Path) -> Iterator[object]:
    """Start clusters of real node processes; every process is stopped at teardown."""
    started: list[LocalCluster] = []

    def start(nodes: int = 3, **kw: object) -> LocalCluster:
        cluster = make_cluster(tmp_path / f"c{len(started)}", nodes, **kw)
        started.append(cluster)
        cluster.start_all()
        cluster.wait_ready()
        return cluster

    yield start
    for cluster in started:
        cluster.stop_all(timeout=10)
        for node in cluster.nodes.values():
            if node.process is not None and node.process.poll() is None:  # pragma: no cover
                node.process.kill()
                node.process.wait()


@pytest.fixture
def cluster3(cluster_factory: object) -> LocalCluster:
    """Three nodes, N=3 R=2 W=2, Q=64."""
    return cluster_factory(3)  # type: ignore[operator, no-any-return]


@pytest.fixture
def client3(cluster3: LocalCluster) -> Iterator[Client]:
    with cluster3.client(timeout=5.0) as client:
        yield client


def wait_unreachable(client: Client, name: str, timeout: float = 10.0) -> None:
    """Block until ``client``'s own connection has noticed that node ``name`` is gone.

    A request sent in the instant between a kill and the socket noticing it is lost in
    flight and can only time out (its outcome is unknown, as on any network); tests that
    are about failing *over* wait for the death to be visible first. Bounded in time.
    """
    import time

    from dynq_client import Timeout, Unavailable

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.call(name, "ping", retry=False)
        except Unavailable:
            return
        except Timeout:
            continue
        time.sleep(0.05)
    raise AssertionError(f"{name} still answers after {timeout}s")


def wait_known_down(client: Client, observers: list[str], name: str, timeout: float = 15.0) -> None:
    """Block until every node in ``observers`` has marked ``name`` down (each is asked to
    ping its peers, which is how a node learns). A write sent in the instant of a node's
    death has an unknown outcome; tests about what happens *after* a death wait for it."""
    import time

    from dynq_client import DynqError

    deadline = time.monotonic() + timeout
    pending = list(observers)
    while pending:
        for observer in list(pending):
            try:
                client.call(observer, "ping", {"peers": True})
                if client.call(observer, "stats")["peers"].get(name) == "down":
                    pending.remove(observer)
            except DynqError:
                pass
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"{pending} still consider {name} up after {timeout}s")
        if pending:
            time.sleep(0.05)


def free_base_port(nodes: int = 4) -> int:
    """A base port whose ``nodes`` nodes' ports (+0, +10, +20, ...), gossip and console
    ports (the next two) are all free right now, as `dynq up --base-port` lays them out."""
    offsets = [10 * i + g for i in range(nodes) for g in (0, 1, 2)]
    for port in free_ports(20):
        socks: list[socket.socket] = []
        try:
            for offset in offsets:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port + offset))
            return port
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


@dataclass
class UpCluster:
    """A `dynq up` process and what it printed."""

    process: subprocess.Popen[str]
    port: int  # base port: n1's request port
    cwd: Path  # the directory it runs in (its data is in cwd/dynq-data)
    banner: list[str] = field(default_factory=list)  # lines up to its "try:" line
    survivors: list[int] = field(default_factory=list)  # node PIDs that outlived `dynq up` (then killed)

    @property
    def node_pids(self) -> list[int]:
        return [int(line.split("pid ")[1].split()[0]) for line in self.banner if " pid " in line]

    @property
    def seed(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"


def stop_pid(pid: int, sig: int = signal.SIGTERM, timeout: float = 20.0) -> bool:
    """Signal a process we started and wait (bounded) until it is gone; SIGKILL after the
    timeout. True if it went by itself."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return False


@contextmanager
def running_up(cwd: Path, nodes: int = 3, extra: tuple[str, ...] = (),
               stop_signal: int = signal.SIGINT) -> Iterator[UpCluster]:
    """`dynq up` on its defaults (CURVE on), run in ``cwd`` on free ports; stopped with
    ``stop_signal`` (SIGINT: as Ctrl-C does) at exit, and every node it started is checked
    gone (by PID): those that outlived it are killed and listed in ``survivors``."""
    port = free_base_port(nodes + 1)
    process = subprocess.Popen(
        [sys.executable, "-m", "dynq", "up", "--nodes", str(nodes), "--base-port", str(port), *extra],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    up = UpCluster(process, port, cwd)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # bounded: wait for the banner
            line = process.stdout.readline()
            if not line:
                break
            up.banner.append(line)
            if line.startswith("try:"):
                break
        assert any(f"{nodes} nodes up" in line for line in up.banner), "".join(up.banner)
        yield up
    finally:
        process.send_signal(stop_signal)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        # signal 0: only wait; SIGKILL if it outlived `dynq up`
        up.survivors = [pid for pid in up.node_pids if not stop_pid(pid, 0, timeout=10)]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0, interval: float = 0.2,
             ignore: tuple[type[BaseException], ...] = (DynqError,)) -> Any:
    """Poll ``check`` until it returns something truthy and return that; an exception in
    ``ignore`` counts as "not yet" (a node still restarting). Bounded in time."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except ignore:
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)
