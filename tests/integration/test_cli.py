"""The `dynq` command as an operator uses it: `up`, then get/put/delete/ring/stats against it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dynq.config import load_config
from tests.conftest import running_up

pytestmark = pytest.mark.integration


def dynq(*args: str, seed: str, check: bool = True, keys: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DYNQ_KEYS": str(keys)} if keys is not None else None
    return subprocess.run(
        [sys.executable, "-m", "dynq", *args, "--seed", seed],
        capture_output=True, text=True, timeout=60, check=check, env=env,
    )


def test_up_runs_a_cluster_the_cli_can_use_and_stops_it(tmp_path: Path) -> None:
    """`dynq up` starts one process per node, serves get/put/delete/ring, and stops them all on SIGTERM."""
    with running_up(tmp_path, nodes=3, stop_signal=signal.SIGTERM) as up:
        seed, data = up.seed, tmp_path / "dynq-data"
        assert len(up.node_pids) == 3
        cfg = load_config(data / "n1" / "dynq.toml")
        assert cfg.listen == seed and len(cfg.members) == 3

        # `dynq up` runs with CURVE: without the keys it wrote, the CLI gets nowhere.
        refused = dynq("get", "hello", "--timeout", "1", seed=seed, check=False)
        assert refused.returncode == 2, refused.stdout + refused.stderr
        keys = data / "keys"
        assert dynq("put", "hello", "world", seed=seed, keys=keys).stdout.strip() == "ok"
        got = dynq("get", "hello", seed=seed, keys=keys)
        assert got.stdout.strip() == "world"
        context = got.stderr.split("context: ")[1].split()[0]
        assert dynq("put", "hello", "there", "--context", context, seed=seed, keys=keys).returncode == 0
        assert dynq("get", "hello", seed=seed, keys=keys).stdout.strip() == "there"
        assert dynq("delete", "hello", seed=seed, keys=keys).returncode == 0
        missing = dynq("get", "hello", seed=seed, check=False, keys=keys)
        assert missing.returncode == 1 and "(not found)" in missing.stdout
        ring = dynq("ring", seed=seed, keys=keys).stdout
        assert "ring epoch 1" in ring and "n1" in ring and "n3" in ring
        assert '"keys"' in dynq("stats", "--json", seed=seed, keys=keys).stdout
        bad = dynq("put", "k", "v", "--w", "7", seed=seed, check=False, keys=keys)
        assert bad.returncode == 2 and "w must be" in bad.stderr
    assert up.survivors == [], f"node PIDs {up.survivors} survived `dynq up` stopping"
    assert up.process.returncode == 0


def test_config_check_names_the_bad_key(tmp_path: Path) -> None:
    """`dynq config check` exits non-zero and names the offending key."""
    path = tmp_path / "bad.toml"
    path.write_text('[node]\nname = "n1"\nlisten = "tcp://127.0.0.1:1"\ndata_dir = "."\n[cluster]\nq = 3\n')
    result = subprocess.run([sys.executable, "-m", "dynq", "config", "check", str(path)], capture_output=True, text=True)
    assert result.returncode == 1 and "cluster.q" in result.stderr
