"""Membership changes on real node processes: join and leave under write load, a receiver
killed mid-transfer, gossip convergence, failure detection by heartbeats, and the CLI."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import apsw
import pytest

from dynq.localcluster import LocalCluster
from dynq.cluster.membership import ClusterState
from dynq_client import AsyncClient, Client, DynqError, Timeout
from dynq_client.versions import decode_object, merge
from tests.conftest import free_ports, run_dynq
from tests.conftest import wait_for as wait_for_

FAST = """
[membership]
gossip_interval_ms = 200
transfer_cleanup_delay_ms = 1000
"""




def state_of(client: Client, address: str) -> ClusterState:
    return ClusterState.from_wire(client.call_address(address, "cluster_state", {})["state"])


def wait_for(what: str, check: Any, timeout: float = 90.0, interval: float = 0.2) -> Any:
    """The suite's poller, with more patience: joins and handoffs take longer."""
    return wait_for_(what, check, timeout, interval)


def converged(client: Client, cluster: LocalCluster, names: list[str]) -> ClusterState | None:
    """The common state once every named node holds the same one with no transition running."""
    states = [state_of(client, cluster.nodes[name].address) for name in names]
    first = states[0]
    if first.next_ring is None and all(s.key == first.key for s in states):
        return first
    return None


def preload(seeds: list[str], count: int, prefix: str, value_size: int = 100) -> dict[bytes, bytes]:
    """Write ``count`` keys with 64 in flight; returns what was acknowledged."""
    acked: dict[bytes, bytes] = {}

    async def run() -> None:
        sem = asyncio.Semaphore(64)
        async with AsyncClient(seeds, timeout=10.0) as db:
            async def one(i: int) -> None:
                key, value = f"{prefix}{i}".encode(), (f"{prefix}{i}:".encode() * value_size)[:value_size]
                async with sem:
                    await db.put(key, value)
                acked[key] = value

            await asyncio.gather(*(one(i) for i in range(count)))

    asyncio.run(run())
    return acked


class Writer:
    """A client writing new keys in a thread until stopped (bounded in count and time),
    recording which writes were acknowledged and which have an unknown outcome."""

    def __init__(self, seeds: list[str], prefix: str, limit: int = 50_000, max_seconds: float = 240) -> None:
        self.seeds, self.prefix, self.limit, self.max_seconds = seeds, prefix, limit, max_seconds
        self.acked: dict[bytes, bytes] = {}
        self.unknown: set[bytes] = set()
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with Client(self.seeds, timeout=5.0) as client:
            for i in range(self.limit):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                key, value = f"{self.prefix}{i}".encode(), f"v{i}".encode()
                try:
                    client.put(key, value)
                    self.acked[key] = value
                except Timeout:
                    self.unknown.add(key)
                except DynqError as exc:
                    self.failed.append(f"{key!r}: {exc}")

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)


def check_all_readable(seeds: list[str], expected: dict[bytes, bytes]) -> None:
    """Every acknowledged key reads back at R = N (and the read repairs stale replicas)."""
    missing: list[bytes] = []

    async def run() -> None:
        sem = asyncio.Semaphore(64)
        async with AsyncClient(seeds, timeout=10.0) as db:
            async def one(key: bytes, value: bytes) -> None:
                async with sem:
                    result = await db.get(key, r=3)
                if value not in result.values:
                    missing.append(key)

            await asyncio.gather(*(one(k, v) for k, v in expected.items()))

    asyncio.run(run())
    assert not missing, f"{len(missing)} acknowledged writes lost, e.g. {missing[:5]}"


@pytest.fixture
def cluster(cluster_factory: Any) -> LocalCluster:
    return cluster_factory(3, extra_config=FAST)  # type: ignore[no-any-return]


def start_new_node(cluster: LocalCluster, name: str) -> str:
    address = f"tcp://127.0.0.1:{free_ports(1)[0]}"
    cluster.add_node(name, address)
    cluster.start(name)

    def answers() -> bool:  # connecting is part of the wait: a loaded machine starts nodes slowly
        with Client([address], timeout=2.0) as client:
            return bool(client.call_address(address, "ping", {}))

    wait_for(f"{name} to answer", answers, timeout=60)
    return address


def test_join_under_write_load(cluster: LocalCluster) -> None:
    """A 4th node joins (join, plan, commit) while clients write: nothing acknowledged is
    lost, every key reads at R=N, ownership is balanced, only the new node's partitions
    moved, every node agrees on the ring, and each node ends up holding exactly the keys
    it replicates."""
    seed = cluster.seeds[0]
    data = preload(cluster.seeds, 20_000, "pre-")
    with Client(cluster.seeds) as client:
        before = state_of(client, seed)
    new_address = start_new_node(cluster, "n4")

    with Writer(cluster.seeds, "live-") as writer:
        joined = run_dynq("cluster", "join", seed, seed=new_address)
        assert joined.returncode == 0, joined.stderr
        plan = run_dynq("cluster", "plan", "--json", seed=seed)
        assert plan.returncode == 0, plan.stderr
        planned = json.loads(plan.stdout)
        assert [j[0] for j in planned["staged"]["joins"]] == ["n4"]
        assert planned["transfers"] and all(t[2] == "n4" for t in planned["transfers"])
        committed = run_dynq("cluster", "commit", "--plan", planned["id"], seed=seed)
        assert committed.returncode == 0, committed.stderr
        watched = run_dynq("cluster", "transfers", "--watch", "--max-wait", "120", seed=seed, timeout=180)
        assert watched.returncode == 0, watched.stdout + watched.stderr
        with Client(cluster.seeds) as client:
            final = wait_for("every node on one state", lambda: converged(client, cluster, ["n1", "n2", "n3", "n4"]))
        time.sleep(1.0)  # the writer keeps going on the new ring a little
    assert len(writer.acked) > 100 and not writer.failed, writer.failed[:5]

    counts = final.ring.owned_counts()
    assert set(counts) == {"n1", "n2", "n3", "n4"}
    ideal = final.ring.q / 4
    assert all(abs(c - ideal) <= 0.1 * ideal for c in counts.values()), counts
    moved = [p for p in range(final.ring.q) if final.ring.owners[p] != before.ring.owners[p]]
    assert moved and all(final.ring.owners[p] == "n4" for p in moved)

    expected = {**data, **writer.acked}
    check_all_readable(cluster.seeds, expected)

    def exact_copies() -> bool:
        """N copies of each key, and none left behind on a node that gave its partition up
        (writes with an unknown outcome may or may not have landed)."""
        with Client(cluster.seeds) as client:
            stats = [client.call(name, "stats") for name in ("n1", "n2", "n3", "n4")]
        held = sum(s["keys"] for s in stats)
        idle = not any(s["hints_pending_total"] or s["transfers"]["active"] for s in stats)
        return idle and 3 * len(expected) <= held <= 3 * (len(expected) + len(writer.unknown))

    wait_for("3 copies of every key and no leftovers", exact_copies, timeout=60, interval=0.5)
    with Client(cluster.seeds) as client:
        assert client.call("n4", "stats")["transfers"]["keys_sent"] == 0
        sent = sum(client.call(n, "stats")["transfers"]["keys_sent"] for n in ("n1", "n2", "n3"))
        assert sent >= len(data) * 3 // 4 * 0.9  # n4 replicates about 3/4 of the keys


def _db_objects(path: Path) -> dict[bytes, bytes]:
    conn = apsw.Connection(str(path), flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return {bytes(k): bytes(o) for k, o in conn.execute("SELECT key, obj FROM objects")}
    finally:
        conn.close()


def test_leave_under_write_load(cluster_factory: Any) -> None:
    """A node leaves while clients write: it hands everything off and exits by itself;
    nothing acknowledged is lost, and it holds nothing the others lack."""
    cluster: LocalCluster = cluster_factory(4, extra_config=FAST)
    seed = cluster.seeds[0]
    data = preload(cluster.seeds, 5_000, "pre-")
    with Writer([s for s in cluster.seeds if s != cluster.nodes["n2"].address], "live-") as writer:
        assert run_dynq("cluster", "leave", "n2", seed=seed).returncode == 0
        plan = run_dynq("cluster", "plan", seed=seed)
        assert plan.returncode == 0 and "leave  n2" in plan.stdout, plan.stdout + plan.stderr
        committed = run_dynq("cluster", "commit", seed=seed)
        assert committed.returncode == 0, committed.stderr
        n2 = cluster.nodes["n2"]
        assert n2.process is not None
        n2.process.wait(120)  # it exits on its own once handed off
        assert n2.process.returncode == 0, n2.log_tail()
        with Client([cluster.nodes[n].address for n in ("n1", "n3", "n4")]) as client:
            final = wait_for("the others on one state", lambda: converged(client, cluster, ["n1", "n3", "n4"]))
        time.sleep(0.5)
    assert not writer.failed, writer.failed[:5]
    assert [m.name for m in final.ring.members] == ["n1", "n3", "n4"]
    remaining = [cluster.nodes[n].address for n in ("n1", "n3", "n4")]
    check_all_readable(remaining, {**data, **writer.acked})
    # Whatever the departed node holds, the cluster holds too (or something newer).
    leftovers = _db_objects(cluster.nodes["n2"].config_path.parent / "dynq.db")
    assert leftovers
    with Client(remaining) as client:
        for key, blob in leftovers.items():
            mine = decode_object(blob)
            theirs = client.get_object(key, r=3)
            assert theirs is not None and merge(theirs, mine) == theirs, key


def test_receiver_killed_mid_transfer(cluster_factory: Any) -> None:
    """SIGKILL the joining node while partitions stream to it, restart it: the transfers
    resume and nothing is lost."""
    # Transfers slowed down (objects/s per source) so that the kill lands mid-stream.
    cluster: LocalCluster = cluster_factory(3, extra_config=FAST + "transfer_rate = 1000\n")
    seed = cluster.seeds[0]
    data = preload(cluster.seeds, 8_000, "pre-", value_size=1000)
    new_address = start_new_node(cluster, "n4")
    assert run_dynq("cluster", "join", seed, seed=new_address).returncode == 0
    assert run_dynq("cluster", "commit", seed=seed).returncode == 0
    with Client(cluster.seeds) as client:
        wait_for("a transfer to start", lambda: sum(
            client.call(n, "stats")["transfers"]["keys_sent"] for n in ("n1", "n2", "n3")) > 0, interval=0.02)
        cluster.kill("n4")
        time.sleep(1.0)
        cluster.start("n4")
        final = wait_for("the transition to end", lambda: converged(client, cluster, ["n1", "n2", "n3", "n4"]),
                         timeout=180)
    assert "n4" in [m.name for m in final.ring.members]
    check_all_readable(cluster.seeds, data)
    with Client(cluster.seeds) as client:
        assert client.call("n4", "stats")["keys"] >= len(data) * 3 // 4 * 0.9


def test_heartbeats_detect_a_paused_node_and_its_return(cluster: LocalCluster) -> None:
    """SIGSTOP a node: the others mark it down from missing heartbeats alone (no request
    needed); SIGCONT: heartbeats mark it up again."""
    with Client(cluster.seeds) as client:
        cluster.signal("n3", signal.SIGSTOP)
        try:
            wait_for("n1 to see n3 down", lambda: client.call("n1", "stats")["peers"].get("n3") == "down", 30)
            assert client.call("n1", "stats")["gossip"]["marked_down"] >= 1
        finally:
            cluster.signal("n3", signal.SIGCONT)
        wait_for("n1 to see n3 up", lambda: client.call("n1", "stats")["peers"].get("n3") == "up", 30)


def test_membership_cli_errors_and_clear(cluster: LocalCluster, tmp_path: Path) -> None:
    """Clear errors: nothing to commit, a stale plan id, a leave below N, a join of a node
    with data; and a staged change can be cleared."""
    seed = cluster.seeds[0]
    nothing = run_dynq("cluster", "commit", seed=seed)
    assert nothing.returncode == 2 and "nothing is staged" in nothing.stderr
    below = run_dynq("cluster", "leave", "n3", seed=seed)
    assert below.returncode == 2 and "fewer than n = 3" in below.stderr
    new_address = start_new_node(cluster, "n4")
    assert run_dynq("cluster", "join", seed, seed=new_address).returncode == 0
    plan = json.loads(run_dynq("cluster", "plan", "--json", seed=seed).stdout)
    stale = run_dynq("cluster", "commit", "--plan", "00000000", seed=seed)
    assert stale.returncode == 2 and "plan changed" in stale.stderr
    cleared = run_dynq("cluster", "clear", seed=seed)
    assert cleared.returncode == 0 and "1 joins" in cleared.stdout
    assert "nothing staged" in run_dynq("cluster", "plan", seed=seed).stdout
    assert plan["id"]
    # A node that holds data cannot join another cluster.
    with Client(cluster.seeds) as client:
        client.put(b"k", b"v")
    other_address = start_new_node(cluster, "n5")
    with Client([other_address]) as lone:
        lone.put(b"mine", b"data")
    refused = run_dynq("cluster", "join", seed, seed=other_address)
    assert refused.returncode == 2 and "only an empty node" in refused.stderr
    # The cluster state never changed.
    with Client(cluster.seeds) as client:
        assert len(state_of(client, seed).ring.members) == 3


def test_config_init_writes_a_config_a_node_starts_from(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    out = tmp_path / "n9.toml"
    made = subprocess.run([sys.executable, "-m", "dynq", "config", "init", "--name", "n9", "--data-dir",
                           str(tmp_path / "data"), "--base-port", str(port), "--seed", "tcp://127.0.0.1:7100",
                           "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    check = subprocess.run([sys.executable, "-m", "dynq", "config", "check", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and f"tcp://127.0.0.1:{port}" in check.stdout, check.stderr
    again = subprocess.run([sys.executable, "-m", "dynq", "config", "init", "--name", "n9", "--data-dir",
                            str(tmp_path / "data"), "--base-port", str(port), "--out", str(out)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "exists" in again.stderr



def test_two_operators_racing_commit_once(cluster: LocalCluster) -> None:
    """Two operators commit the same staged join at the same moment through different nodes:
    exactly one commit takes effect, and every node ends on the same ring."""
    new_address = start_new_node(cluster, "n4")
    assert run_dynq("cluster", "join", cluster.seeds[0], seed=new_address).returncode == 0
    racers = [subprocess.Popen([sys.executable, "-m", "dynq", "cluster", "commit", "--seed", seed],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for seed in (cluster.nodes["n2"].address, cluster.nodes["n3"].address)]
    results = [(r.wait(60), r.communicate()) for r in racers]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(out for code, out in results if code == 2)
    assert "nothing is staged" in loser[1] or "in progress" in loser[1], loser
    with Client(cluster.seeds) as client:
        final = wait_for("one ring everywhere", lambda: converged(client, cluster, ["n1", "n2", "n3", "n4"]))
    assert [m.name for m in final.ring.members] == ["n1", "n2", "n3", "n4"]


def test_malformed_membership_requests_get_clear_errors(cluster: LocalCluster) -> None:
    """Garbage in membership ops is an invalid-request error, never an internal one, and the
    cluster state does not change."""
    from dynq_client import InvalidRequest

    seed = cluster.seeds[0]
    with Client(cluster.seeds) as client:
        before = state_of(client, seed)
        for op, body in (("member_join", {"member": None}), ("member_join", {"member": ["x", 1, "", 1]}),
                         ("cluster_state", {"state": {"ring": "junk"}}), ("transfer_done", {"t": "junk"}),
                         ("cluster_join", {"cluster": "not-an-address"}), ("cluster_leave", {"node": 7})):
            with pytest.raises(InvalidRequest):
                client.call_address(seed, op, body)
        assert state_of(client, seed).key == before.key
