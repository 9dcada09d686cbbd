"""CurveZMQ: authentication by key, roles, revocation without restart, encryption on the wire."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dynq.localcluster import LocalCluster
from dynq.security import generate_keys
from dynq_client import Client, CurveKeys, Forbidden, HandshakeFailed, Unavailable
from dynq_client.errors import Timeout


@pytest.fixture
def curve3(cluster_factory: Any) -> LocalCluster:
    return cluster_factory(3, security="curve")  # type: ignore[no-any-return]


def test_curve_cluster_serves_clients_with_allowed_keys(curve3: LocalCluster) -> None:
    with curve3.client(keys="app") as app:
        app.put(b"k", b"v")
        assert app.get(b"k", r=3).values == [b"v"]
        app.delete(b"k")
        assert not app.get(b"k").found


def test_unknown_key_and_no_key_are_refused_saying_why(curve3: LocalCluster, tmp_path: Path) -> None:
    """A key nobody allowed (even one that knows the server key), plain text, or the wrong
    cluster key gets nothing, and an error naming the address and the cause, at once
    (not after retrying until the timeout)."""
    generate_keys(tmp_path, "stranger")
    stranger = CurveKeys.from_files(tmp_path / "stranger.key_secret", curve3.keys_dir / "cluster.key")
    app = curve3.client_keys("app")
    assert app is not None
    wrong_cluster = CurveKeys(app.public, app.secret, stranger.public)
    seed = curve3.seeds[0]
    for curve, cause in ((stranger, "refused this party's CURVE key"), (None, "requires CURVE keys")):
        started = time.monotonic()
        with pytest.raises(HandshakeFailed) as raised:
            Client(curve3.seeds[:1], timeout=30.0, curve=curve, keys=None).connect()
        assert seed in str(raised.value) and cause in str(raised.value), str(raised.value)
        assert time.monotonic() - started < 25, "a handshake failure must not be retried until the timeout"
    # The server cannot decrypt the hello: it hangs up with no detail. The client keeps
    # trying (a node restarting mid-handshake looks the same), and names the likely cause.
    with pytest.raises(Unavailable, match=re.escape("is the server key (cluster.key) the cluster's?")) as raised:
        Client(curve3.seeds[:1], timeout=2.0, curve=wrong_cluster, keys=None).connect()
    assert seed in str(raised.value)
    with curve3.client() as admin:
        assert admin.call("n1", "ping")["name"] == "n1"


def test_curve_client_reaching_a_plaintext_node_is_told(cluster3: LocalCluster) -> None:
    """CURVE keys against a node that runs without security: HandshakeFailed naming it."""
    import zmq

    public, secret = zmq.curve_keypair()
    server, _ = zmq.curve_keypair()
    with pytest.raises(Unavailable, match="runs without security") as raised:
        Client(cluster3.seeds[:1], timeout=5.0, curve=CurveKeys(public, secret, server)).connect()
    assert cluster3.seeds[0] in str(raised.value)


def test_plaintext_node_joining_a_curve_cluster_is_told_why(curve3: LocalCluster, cluster_factory: Any) -> None:
    """A node without [security] asked to join a CURVE cluster fails with the handshake
    cause in the reply, not "not connected"; the cluster is unchanged."""
    lone = cluster_factory(1)
    with lone.client() as client:
        with pytest.raises(Unavailable, match="requires CURVE keys"):
            client.call_address(lone.seeds[0], "cluster_join", {"cluster": curve3.seeds[0]})
    with curve3.client() as admin:
        assert len(admin.table.ring.members) == 3  # type: ignore[union-attr]


def test_client_key_cannot_act_as_a_peer(curve3: LocalCluster) -> None:
    with curve3.client(keys="app") as app:
        app.put(b"x", b"1")
        for op, body in (("replica_put", {"k": b"x", "ob": b"\x00"}), ("inspect", {"k": b"x"}),
                         ("cluster_commit", {}), ("replica_get", {"k": b"x"})):
            with pytest.raises(Forbidden, match="needs a peer key"):
                app.call("n1", op, body)
        assert app.get(b"x").values == [b"1"]  # nothing changed
    with curve3.client(keys="admin") as admin:
        assert admin.call("n1", "inspect", {"k": b"x"})["ob"] is not None


def test_revoked_key_is_refused_after_reload_without_restart(curve3: LocalCluster) -> None:
    with curve3.client(keys="app") as app:
        app.put(b"r", b"1")
        pids = {name: node.process.pid for name, node in curve3.nodes.items() if node.process}
        (curve3.keys_dir / "clients" / "app.key").unlink()
        for name in curve3.nodes:
            curve3.signal(name, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:  # bounded: the signal is handled on each node's loop
            try:
                app.get(b"r")
            except Forbidden:
                break
            assert time.monotonic() < deadline, "revoked key still served"
            time.sleep(0.1)
        with pytest.raises(Forbidden, match="not allowed"):
            app.put(b"r", b"2")
        shutil.copy(curve3.keys_dir / "app.key", curve3.keys_dir / "clients" / "app.key")
        for name in curve3.nodes:
            curve3.signal(name, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while True:
            try:
                assert app.get(b"r").values == [b"1"]
                break
            except Forbidden:
                assert time.monotonic() < deadline, "restored key still refused"
                time.sleep(0.1)
    assert pids == {name: node.process.pid for name, node in curve3.nodes.items() if node.process}


def _capture_loopback(stop: threading.Event, out: list[bytes]) -> None:
    """Every frame on the loopback interface until ``stop`` (a raw AF_PACKET socket)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
    sock.bind(("lo", 0))
    sock.settimeout(0.2)
    try:
        while not stop.is_set() and len(out) < 200_000:
            try:
                out.append(sock.recv(65535))
            except socket.timeout:
                continue
    finally:
        sock.close()


@pytest.mark.parametrize("security", ["curve", "none"])
def test_values_are_not_visible_on_the_wire(cluster_factory: Any, security: str) -> None:
    """Capture loopback while writing and reading a known value: under CURVE neither the key
    nor the value appear in any packet; without it (the control) they do."""
    try:
        probe = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(0x0003))
        probe.close()
    except (PermissionError, OSError) as exc:
        pytest.skip(f"no raw sockets here: {exc}")
    cluster: LocalCluster = cluster_factory(3, security=security)
    secret_key, secret_value = b"wire-key-5f1c9a", b"wire-value-9d2e7b-plaintext"
    packets: list[bytes] = []
    stop = threading.Event()
    sniffer = threading.Thread(target=_capture_loopback, args=(stop, packets), daemon=True)
    sniffer.start()
    try:
        time.sleep(0.3)
        with cluster.client(keys="app" if security == "curve" else "admin") as client:
            client.put(secret_key, secret_value)
            assert client.get(secret_key, r=3).values == [secret_value]
        time.sleep(0.3)
    finally:
        stop.set()
        sniffer.join(10)
    wire = b"".join(packets)
    assert len(packets) > 10
    if security == "curve":
        assert secret_value not in wire and secret_key not in wire
    else:
        assert secret_value in wire


def test_curve_cluster_fails_over_and_replicates(curve3: LocalCluster) -> None:
    """Node-to-node traffic (replication, gossip, read repair) works under CURVE: a write made
    with a node down reaches it through read repair once it is back."""
    with curve3.client() as admin:
        curve3.kill("n3")
        deadline = time.monotonic() + 30
        while admin.call("n1", "stats")["peers"].get("n3") != "down":
            assert time.monotonic() < deadline
            admin.call("n1", "ping", {"peers": True})
            time.sleep(0.1)
        admin.put(b"h", b"written while n3 was down")
        assert admin.call("n2", "inspect", {"k": b"h"})["ob"] is not None  # replicated n1 -> n2
        curve3.start("n3")
        curve3.wait_ready(["n3"])
        assert admin.get(b"h", r=3).values == [b"written while n3 was down"]
        deadline = time.monotonic() + 30
        while admin.call("n3", "inspect", {"k": b"h"})["ob"] is None:  # read repair lands
            assert time.monotonic() < deadline, "read repair did not reach n3 under CURVE"
            time.sleep(0.1)
        deadline = time.monotonic() + 30  # gossip (PUB/SUB under CURVE): heartbeats arrive
        while admin.call("n1", "stats")["gossip"]["received"] == 0:
            assert time.monotonic() < deadline, "no heartbeat reached n1 under CURVE"
            time.sleep(0.1)
