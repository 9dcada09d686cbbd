"""Every `dynq` command that talks to a cluster, against `dynq up`'s CURVE default: each
finds the keys the way the README says (./dynq-data/keys, --keys DIR, DYNQ_KEYS,
--key/--server-key), and without keys each fails saying the cluster wants them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import UpCluster, running_up

pytestmark = pytest.mark.integration


def run(up: UpCluster, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DYNQ_")}
    return subprocess.run([sys.executable, "-m", "dynq", *args], cwd=cwd or up.cwd,
                          env={**base, "DYNQ_SEEDS": up.seed, **(env or {})},
                          capture_output=True, text=True, timeout=timeout)


def commands(backup_to: Path) -> list[tuple[str, ...]]:
    """One invocation of every command that talks to a cluster (in an order that works)."""
    return [
        ("put", "k1", "v1"),
        ("get", "k1"),
        ("delete", "k1"),
        ("ring",),
        ("stats", "--json"),
        ("inspect", "k1"),
        ("backup", "--node", "n1", "--to", str(backup_to)),
        ("cluster", "status"),
        ("cluster", "plan"),
        ("cluster", "leave", "n4"),
        ("cluster", "clear"),
        ("cluster", "transfers"),
        ("repair", "--partition", "0"),
        ("bench", "--workload", "a", "--records", "20", "--operations", "100", "--duration", "20",
         "--concurrency", "2", "--json"),
    ]


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> object:
    work = tmp_path_factory.mktemp("up")
    with running_up(work, nodes=4) as cluster:  # four: one may stage leaving (then cleared)
        yield cluster


def test_every_cluster_command_works_under_curve_from_the_up_directory(up: UpCluster) -> None:
    """In the directory `dynq up` ran in, every command finds ./dynq-data/keys by itself."""
    for args in commands(up.cwd / "backup.db"):
        result = run(up, *args)
        assert result.returncode == 0, f"dynq {' '.join(args)}: {result.returncode}\n{result.stdout}{result.stderr}"
    assert (up.cwd / "backup.db").exists()
    bench = json.loads(run(up, *commands(up.cwd / "b2.db")[-1]).stdout)
    assert bench["total"]["ops"] >= 100 and bench["total"]["errors"] == 0, bench


@pytest.mark.parametrize("how", ["--keys", "DYNQ_KEYS", "--key/--server-key", "DYNQ_KEY/DYNQ_SERVER_KEY"])
def test_every_key_option_works_from_elsewhere(up: UpCluster, tmp_path: Path, how: str) -> None:
    """From another directory, each documented way of naming the keys works for every command."""
    keys = up.cwd / "dynq-data" / "keys"
    secret, server = str(keys / "admin.key_secret"), str(keys / "cluster.key")
    options: tuple[str, ...] = ()
    env: dict[str, str] = {}
    if how == "--keys":
        options = ("--keys", str(keys))
    elif how == "DYNQ_KEYS":
        env = {"DYNQ_KEYS": str(keys)}
    elif how == "--key/--server-key":
        options = ("--key", secret, "--server-key", server)
    else:
        env = {"DYNQ_KEY": secret, "DYNQ_SERVER_KEY": server}
    for args in commands(tmp_path / "backup.db"):
        result = run(up, *options, *args, cwd=tmp_path, env=env)
        assert result.returncode == 0, f"dynq {' '.join(args)} ({how}): {result.stdout}{result.stderr}"


def test_without_keys_every_command_says_the_cluster_wants_them(up: UpCluster, tmp_path: Path) -> None:
    """From a directory with no keys, each command fails at once (exit 2), naming the node's
    address and that it requires CURVE keys, instead of "not connected"."""
    for args in commands(tmp_path / "backup.db"):
        result = run(up, *args, "--timeout", "3", cwd=tmp_path, timeout=60)
        assert result.returncode == 2, f"dynq {' '.join(args)}: {result.returncode}\n{result.stdout}{result.stderr}"
        assert "requires CURVE keys" in result.stderr and f"127.0.0.1:{up.port}" in result.stderr, \
            f"dynq {' '.join(args)}:\n{result.stderr}"
