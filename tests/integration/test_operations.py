"""What an operator relies on: systemd units, the notify protocol, graceful SIGTERM."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from dynq.localcluster import LocalCluster, node_command
from dynq_client import Client, DynqError

pytestmark = pytest.mark.integration

UNITS = Path(__file__).resolve().parents[2] / "systemd"


def test_systemd_units_verify(tmp_path: Path) -> None:
    """dynq@.service and dynq.target pass `systemd-analyze verify` with no warning at all."""
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is required (.ci/run installs the systemd package)"
    dynq = node_command(Path("x.toml"))[0]  # the installed `dynq` script (what ExecStart runs)
    text = (UNITS / "dynq@.service").read_text()
    assert "Type=notify" in text and "StateDirectory=dynq/%i" in text and "--config /etc/dynq/%i.toml" in text
    (tmp_path / "dynq@.service").write_text(text.replace("/usr/local/bin/dynq", dynq))
    shutil.copy(UNITS / "dynq.target", tmp_path / "dynq.target")
    result = subprocess.run(
        [analyze, "verify", "./dynq@n1.service", "./dynq.target"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0 and result.stderr.strip() == "" and result.stdout.strip() == "", result


def test_notify_protocol_ready_watchdog_stopping(cluster_factory: Any, tmp_path: Path) -> None:
    """Under a fake NOTIFY_SOCKET a node says READY=1 once it serves, WATCHDOG=1 while it
    runs, and STOPPING=1 on SIGTERM before it exits cleanly."""
    cluster: LocalCluster = cluster_factory(3)
    cluster.stop("n3")
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        cluster.start("n3", env={"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
        messages: list[str] = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
        with Client([cluster.nodes["n3"].address]) as client:  # READY means it already serves
            assert client.call("n3", "ping")["name"] == "n3"
        while sum("WATCHDOG=1" in m for m in messages) < 2:
            messages.append(sock.recv(4096).decode())
        cluster.signal("n3", signal.SIGTERM)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    assert cluster.stop("n3") == 0
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=serving on" in ready


def test_sigterm_under_load_loses_no_acknowledged_write(cluster_factory: Any) -> None:
    """SIGTERM a node while clients write: it exits cleanly, and after a restart every
    acknowledged write is readable at R=N."""
    cluster: LocalCluster = cluster_factory(3)
    acked: dict[bytes, bytes] = {}
    stop = threading.Event()

    def writer(worker: int) -> None:
        with Client(cluster.seeds, timeout=5.0) as client:
            for i in range(5000):  # bounded in count ...
                if stop.is_set():
                    return
                key, value = f"w{worker}-{i}".encode(), f"v{i}".encode()
                try:
                    client.put(key, value)
                except DynqError:
                    continue  # not acknowledged: no promise to keep
                acked[key] = value

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30  # ... and in time
        while len(acked) < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cluster.stop("n1") == 0  # SIGTERM: graceful, exit code 0
        count_at_stop = len(acked)
        while len(acked) < count_at_stop + 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        cluster.start("n1")
        cluster.wait_ready(["n1"])
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert len(acked) >= 500
    with Client(cluster.seeds) as client:
        for key, value in acked.items():
            assert client.get(key, r=3).values == [value], key


def dynq_cli(*args: str, seed: str) -> subprocess.CompletedProcess[str]:
    import sys

    return subprocess.run([sys.executable, "-m", "dynq", *args, "--seed", seed],
                          capture_output=True, text=True, timeout=60)


def test_inspect_shows_divergence_then_agreement(cluster3: LocalCluster) -> None:
    """`dynq inspect` shows a stale replica (exit 1) and, after a read repaired it,
    agreement (exit 0)."""
    import json

    from tests.conftest import wait_unreachable

    seed = cluster3.seeds[0]
    with Client(cluster3.seeds) as client:
        cluster3.kill("n3")
        wait_unreachable(client, "n3")
        client.put(b"insp", b"value", w=2)
        cluster3.start("n3")
        cluster3.wait_ready(["n3"])
    before = dynq_cli("inspect", "insp", "--json", seed=seed)
    assert before.returncode == 1, before.stderr
    report = json.loads(before.stdout)
    held = {r["node"]: r["object"] for r in report["replicas"]}
    assert held["n3"] is None and held["n1"] is not None and report["agree"] is False
    with Client(cluster3.seeds) as fresh:
        assert fresh.get(b"insp", r=3).values == [b"value"]  # read repair
    deadline = time.monotonic() + 30
    while (after := dynq_cli("inspect", "insp", seed=seed)).returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert after.returncode == 0 and "primaries agree" in after.stdout, after.stdout


def test_cluster_status_exits_nonzero_when_degraded(cluster3: LocalCluster) -> None:
    """`dynq cluster status` says healthy (exit 0) with every node up, DEGRADED (exit 1)
    with one down."""
    seed = cluster3.seeds[0]
    healthy = dynq_cli("cluster", "status", seed=seed)
    assert healthy.returncode == 0 and "healthy" in healthy.stdout, healthy.stdout + healthy.stderr
    assert "repaired" in healthy.stdout and "horizon" in healthy.stdout
    import json

    report = json.loads(dynq_cli("cluster", "status", "--json", seed=seed).stdout)
    for row in report["nodes"]:  # ownership share, membership, last repair for every node
        assert row["membership"] == "valid" and row["partitions"] > 0 and row["hints_pending"] == 0
        assert "last_repair_ms" in row and row["repair_horizon_s"] is not None
    assert sum(row["partitions"] for row in report["nodes"]) == 64
    cluster3.kill("n2")
    degraded = dynq_cli("cluster", "status", seed=seed)
    assert degraded.returncode == 1 and "DEGRADED" in degraded.stdout
    assert any(line.startswith("n2") and " down " in line for line in degraded.stdout.splitlines())


def test_backup_is_equal_to_the_database_and_restores(cluster3: LocalCluster, tmp_path: Path) -> None:
    """`dynq backup` makes an online copy equal to the node's database; a node restored
    from it serves that data."""
    import apsw

    with Client(cluster3.seeds) as client:
        for i in range(200):
            client.put(f"b{i}".encode(), f"{i}".encode(), w=3)
    target = tmp_path / "n1-backup.db"
    result = dynq_cli("backup", "--node", "n1", "--to", str(target), seed=cluster3.seeds[0])
    assert result.returncode == 0, result.stderr

    def rows(path: Path) -> list[tuple[bytes, bytes]]:
        conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            return [(bytes(k), bytes(o)) for k, o in conn.execute("SELECT key, obj FROM objects ORDER BY key")]
        finally:
            conn.close()

    live = cluster3.nodes["n1"].config_path.parent / "dynq.db"
    assert rows(target) == rows(live) and len(rows(target)) == 200
    assert cluster3.stop("n1") == 0
    for suffix in ("", "-wal", "-shm"):
        Path(str(live) + suffix).unlink(missing_ok=True)
    shutil.copy(target, live)
    cluster3.start("n1")
    cluster3.wait_ready(["n1"])
    with Client(cluster3.seeds) as client:
        from dynq_client.versions import decode_reply_object

        for i in range(200):
            obj = decode_reply_object(client.call("n1", "replica_get", {"k": f"b{i}".encode()}))
            assert obj is not None and obj.values == [f"{i}".encode()]


def test_prometheus_endpoint_and_json_logs(cluster_factory: Any) -> None:
    """With [metrics] port set the node serves Prometheus text (request counters, latency
    histograms, hints, peers); with [log] format = "json" every log line is a JSON object."""
    import json
    import urllib.request

    from tests.conftest import free_ports

    port = free_ports(1)[0]
    cluster: LocalCluster = cluster_factory(
        1, extra_config=f'[metrics]\nport = {port}\n[log]\nformat = "json"\n')
    with Client(cluster.seeds) as client:
        for i in range(20):
            client.put(f"m{i}".encode(), b"v")
            client.get(f"m{i}".encode())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    assert 'dynq_requests_total{node="n1",op="put"} 20' in text
    assert 'dynq_request_duration_seconds_bucket{node="n1",op="put",le="+Inf"} 20' in text
    assert 'dynq_request_duration_seconds_count{node="n1",op="get"} 20' in text
    assert "# TYPE dynq_hints_pending gauge" in text and 'dynq_keys{node="n1"} 20' in text
    assert "# TYPE dynq_wal_bytes gauge" in text and "# TYPE dynq_checkpoints_total counter" in text
    with Client(cluster.seeds) as client:  # the checkpointer thread runs (bounded wait: 60 s)
        deadline = time.monotonic() + 60
        while (stats := client.call("n1", "stats"))["checkpoints"] == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
    assert stats["checkpoints"] > 0 and stats["checkpoint_errors"] == 0
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=10)
    lines = [line for line in cluster.nodes["n1"].log_path.read_text().splitlines() if line.strip()]
    assert lines
    for line in lines:
        entry = json.loads(line)
        assert {"ts", "level", "node", "logger", "msg"} <= entry.keys() and entry["node"] == "n1"
