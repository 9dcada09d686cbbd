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
