"""Anti-entropy with real processes: Merkle exchange repairs lost disks, altered rows and
siblings; tombstones are reaped only when safe and deleted keys stay deleted."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import apsw
import pytest

from dynq.localcluster import LocalCluster
from dynq.ops.metrics import Latencies, render_prometheus
from dynq_client import Client
from dynq_client.versions import encode_object, update
from tests.conftest import wait_known_down
from tests.integration.test_failures import primaries, replica, restart, running, wait_until

pytestmark = pytest.mark.integration

QUIET = "[anti_entropy]\nenabled = false\n"  # only explicit repairs: counts are exact


def roots(client: Client, node: str) -> dict[int, tuple[bytes, int]]:
    """Partition -> (root hash, leaf rows) on one node."""
    return {int(p): (bytes(h), int(n)) for p, h, n, _ in client.call(node, "ae_tree")["partitions"]}


def roots_agree(client: Client, nodes: list[str]) -> bool:
    """Every partition has the same root on each of its primaries among ``nodes``."""
    assert client.table is not None
    by_node = {n: roots(client, n) for n in nodes}
    for p in range(client.table.ring.q):
        seen = {by_node[n][p][0] for n in nodes if n in client.table.ring.preference_list(p).primaries}
        if len(seen) > 1:
            return False
    return True


def repair_all(client: Client, node: str | None = None, rebuild: bool = False) -> list[dict[str, Any]]:
    """One repair pass of every partition, run on ``node`` or the partition's first primary."""
    assert client.table is not None
    ring = client.table.ring
    out = []
    for p in range(ring.q):
        name = node if node is not None else ring.preference_list(p).primaries[0]
        out.append(client.call(name, "ae_repair", {"p": p, "rebuild": rebuild}))
    return out


def test_lost_disk_comes_back_as_new_actor_and_repair_restores_everything(cluster_factory: Any) -> None:
    """Delete one node's database and restart it: it has a new actor id, the background
    loop brings every acknowledged key back with identical roots on all replicas, and a
    write it coordinates after the restart is not dominated by its old clocks."""
    cluster: LocalCluster = cluster_factory(3, extra_config="[anti_entropy]\ninterval_ms = 20\n")
    victim = "n3"
    with Client(cluster.seeds, timeout=10.0) as client:
        keys = [f"lost{i}".encode() for i in range(300)]
        for key in keys:
            client.put(key, b"v-" + key)
        own = keys[:20]  # written through the victim: its old actor is in their clocks
        for key in own:
            client.call(victim, "put", {"k": key, "v": b"w-" + key, "ctx": client.get(key).context})
        old_actor = client.call(victim, "ping")["actor"]
        cluster.stop(victim)
        for suffix in ("", "-wal", "-shm"):
            Path(str(cluster.nodes[victim].config_path.parent / "dynq.db") + suffix).unlink(missing_ok=True)
        restart(cluster, victim)
        new_actor = client.call(victim, "ping")["actor"]
        assert new_actor != old_actor and new_actor.startswith(victim + ".")
        for key in own[:10]:  # no context: concurrent with what the others hold
            client.call(victim, "put", {"k": key, "v": b"after-" + key})
        wait_until(lambda: roots_agree(client, list(cluster.nodes)), what="roots agree after the lost disk")
        assert sum(n for _, n in roots(client, victim).values()) == len(keys)
        for key in keys:
            for node in cluster.nodes:
                obj = replica(client, node, key)
                assert obj is not None, (node, key)
                if key in own[:10]:
                    assert set(obj.values) == {b"w-" + key, b"after-" + key}, (node, key, obj.values)
                elif key in own:
                    assert obj.values == [b"w-" + key]
                else:
                    assert obj.values == [b"v-" + key]
        stats = client.call(victim, "stats")["anti_entropy"]
        assert stats["exchanges"] > 0 and stats["horizon_s"] >= 0
        assert sum(client.call(n, "stats")["anti_entropy"]["keys_repaired"] for n in cluster.nodes) >= len(keys)


def test_altered_rows_are_repaired_and_only_they_are_sent(cluster_factory: Any, tmp_path: Path) -> None:
    """Remove three rows and roll three back to an older version on one replica, behind the
    node's back: `dynq repair --rebuild` finds exactly those six keys, sends only them, and
    leaves identical roots everywhere."""
    cluster: LocalCluster = cluster_factory(3, extra_config=QUIET)
    victim = "n2"
    with Client(cluster.seeds, timeout=10.0) as client:
        keys = [f"alt{i}".encode() for i in range(400)]
        for key in keys:
            client.put(key, b"v1", w=3)
        stale = {key: client.call(victim, "replica_get", {"k": key})["ob"] for key in keys[10:13]}
        for key in stale:
            client.put(key, b"v2", context=client.get(key).context, w=3)
        removed = keys[:3]
        assert roots_agree(client, list(cluster.nodes))
        conn = apsw.Connection(str(cluster.nodes[victim].config_path.parent / "dynq.db"))
        conn.setbusytimeout(5000)
        with conn:
            for key in removed:
                conn.execute("DELETE FROM objects WHERE key = ?", (key,))
            for key, blob in stale.items():
                conn.execute("UPDATE objects SET obj = ? WHERE key = ?", (blob, key))
        conn.close()

        out = subprocess.run(
            [sys.executable, "-m", "dynq", "repair", "--rebuild", "--json", "--node", "n1",
             "--seed", cluster.seeds[0]], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        results = json.loads(out.stdout)
        assert len(results) == 64 and all(r["complete"] for r in results)
        sent = {s.encode() for r in results for s in r["sample"]}
        assert sent == set(removed) | set(stale)
        assert sum(r["keys_sent"] for r in results) == 6  # each pushed once, to the victim
        assert sum(r["keys_received"] for r in results) == 0  # n1 was right all along
        assert sum(r["tree_fixes"] for r in results) == 6  # the victim's leaves, rebuilt from its data
        assert roots_agree(client, list(cluster.nodes))
        for key in removed:
            assert replica(client, victim, key).values == [b"v1"]  # type: ignore[union-attr]
        for key in stale:
            assert replica(client, victim, key).values == [b"v2"]  # type: ignore[union-attr]
        again = repair_all(client)  # nothing left to do
        assert sum(r["keys_repaired"] for r in again) == 0

        stats = subprocess.run([sys.executable, "-m", "dynq", "stats", "--json", "--seed", cluster.seeds[0]],
                               capture_output=True, text=True, timeout=60)
        assert stats.returncode == 0, stats.stderr
        every = json.loads(stats.stdout)
        assert 0 <= every["cluster"]["consistency_horizon_s"] < 600  # every partition had a complete pass
        assert every["n2"]["anti_entropy"]["tree_fixes"] == 6  # its own leaves: 3 orphaned, 3 stale
        text = render_prometheus(every["n1"], Latencies())
        assert "dynq_ae_horizon_seconds" in text and 'dynq_ae_partition_tree_build_ms{node="n1",partition="0"}' in text


def test_siblings_on_one_replica_survive_repair(cluster_factory: Any) -> None:
    """One replica holds two siblings, the others a single version: after repair every
    replica holds both siblings (merge, never overwrite)."""
    cluster: LocalCluster = cluster_factory(3, extra_config=QUIET)
    with Client(cluster.seeds, timeout=10.0) as client:
        key = b"sib"
        client.put(key, b"one", w=3)
        base = replica(client, "n1", key)
        concurrent = update(base, {}, "writer.x", b"two", int(time.time() * 1000))  # saw nothing: a sibling
        client.call("n1", "replica_put", {"k": key, "ob": encode_object(concurrent)})
        assert sorted(replica(client, "n1", key).values) == [b"one", b"two"]  # type: ignore[union-attr]
        assert replica(client, "n2", key).values == [b"one"]  # type: ignore[union-attr]
        results = repair_all(client, node="n2")
        assert sum(r["keys_repaired"] for r in results) == 1
        objects = [replica(client, n, key) for n in cluster.nodes]
        assert all(o == objects[0] for o in objects)
        assert sorted(objects[0].values) == [b"one", b"two"]  # type: ignore[union-attr]
        assert roots_agree(client, list(cluster.nodes))


def test_tombstones_are_reaped_only_when_safe_and_deleted_keys_stay_deleted(cluster_factory: Any) -> None:
    """Deletes past the grace period are reaped once every primary holds the tombstone and
    no fallback holds a hint; while a primary is down (its tombstone on a fallback, with a
    hint) nothing is reaped; a key rewritten while its tombstone sat on a fallback keeps
    the rewrite; after reaping, repair and handoff never bring a deleted key back; a
    rewrite after reaping is readable."""
    cluster: LocalCluster = cluster_factory(4, extra_config=QUIET + "tombstone_grace_s = 1\n")
    with Client(cluster.seeds, timeout=10.0) as client:
        assert client.table is not None
        ring = client.table.ring
        gone, rewritten = b"gone", b"rewritten"
        victim = primaries(client, gone)[-1]
        candidates = (f"rw{i}".encode() for i in range(10_000))
        rewritten = next(k for k in candidates if victim in primaries(client, k))
        for key in (gone, rewritten):
            client.put(key, b"v1", w=3)
        plain = b"plain"
        client.put(plain, b"v1", w=3)
        client.delete(plain, w=3)

        stale_context = client.get(gone).context  # a client that read v1 long ago

        cluster.kill(victim)
        wait_known_down(client, running(cluster), victim)
        client.delete(gone, w=3)  # the victim's tombstone goes to a fallback, with a hint
        client.delete(rewritten, w=3)
        client.put(rewritten, b"v2", w=3)  # rewritten while that tombstone sits on a fallback
        time.sleep(1.5)  # past the grace period
        partition = ring.partition_for(gone)
        live = [n for n in primaries(client, gone) if n != victim]
        result = client.call(live[0], "ae_repair", {"p": partition})
        assert not result["complete"] and result["reaped"] == 0
        for node in live:
            assert replica(client, node, gone) is not None  # tombstone kept: a primary is down

        plain_primaries = [n for n in primaries(client, plain) if n != victim]
        result = client.call(plain_primaries[0], "ae_repair", {"p": ring.partition_for(plain)})
        assert result["reaped"] == 0  # a member that does not answer might hold a hint for it
        assert replica(client, plain_primaries[0], plain) is not None

        restart(cluster, victim)
        wait_until(lambda: sum(client.call(n, "stats")["hints_pending_total"] for n in cluster.nodes) == 0,
                   what="hints drained")
        repair_all(client)
        for node in cluster.nodes:  # reaped everywhere: no row on any node
            for key in (gone, plain):
                assert client.call(node, "inspect", {"k": key})["ob"] is None, (node, key)
        assert client.get(rewritten).values == [b"v2"]
        for node in primaries(client, rewritten):
            assert replica(client, node, rewritten).values == [b"v2"]  # type: ignore[union-attr]

        for _ in range(2):  # repair and handoff again: nothing comes back
            repair_all(client)
        for key in (gone, plain):
            assert not client.get(key, r=3).found
            for node in cluster.nodes:
                assert client.call(node, "inspect", {"k": key})["ob"] is None

        client.put(gone, b"again")  # a rewrite after reaping
        repair_all(client)
        assert client.get(gone, r=3).values == [b"again"]
        # The stale reader writes with its old context: it never saw "again", so "again"
        # must survive as a sibling (were its dot minted again under the old counter, the
        # stale context would cover it and silently supersede it).
        client.put(gone, b"stale", context=stale_context)
        assert sorted(client.get(gone, r=3).values) == [b"again", b"stale"]
        reaped = sum(client.call(n, "stats")["anti_entropy"]["tombstones_reaped"] for n in cluster.nodes)
        assert reaped >= 3 * 2  # gone and plain, on three primaries each


def test_repair_cli_reports_unreachable_primaries(cluster_factory: Any) -> None:
    """`dynq repair --partition P` exits 0 when every primary was reached and 1 when one
    is down, naming it."""
    cluster: LocalCluster = cluster_factory(3, extra_config=QUIET)
    with Client(cluster.seeds, timeout=10.0) as client:
        client.put(b"k", b"v")
        partition = client.table.ring.partition_for(b"k")  # type: ignore[union-attr]
        cmd = [sys.executable, "-m", "dynq", "repair", "--partition", str(partition), "--seed", cluster.seeds[0]]
        ok = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert ok.returncode == 0, ok.stderr
        assert "1/1 partitions repaired" in ok.stdout
        cluster.kill("n3")
        wait_known_down(client, ["n1", "n2"], "n3")
        bad = subprocess.run(cmd + ["--node", "n1"], capture_output=True, text=True, timeout=120)
        assert bad.returncode == 1
        assert "n3 unreachable" in bad.stderr
