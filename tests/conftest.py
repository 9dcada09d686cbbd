"""Shared fixtures: real node processes on random loopback ports, cleaned up by PID."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Iterator

import pytest

from dynq.localcluster import LocalCluster
from dynq_client import Client


def free_ports(count: int) -> list[int]:
    """Ports the kernel says are free on 127.0.0.1 right now (bound all at once, so distinct)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def make_cluster(tmp_path: Path, nodes: int = 3, **kw: object) -> LocalCluster:
    addresses = [f"tcp://127.0.0.1:{port}" for port in free_ports(nodes)]
    return LocalCluster(tmp_path / "cluster", addresses, **kw)  # type: ignore[arg-type]


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
    with Client(cluster3.seeds, timeout=5.0) as client:
        yield client
