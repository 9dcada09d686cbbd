"""Always writable: sloppy quorum, durable hinted handoff, read repair, strict quorum (real processes)."""

from __future__ import annotations

import signal
import time
from typing import Any, Callable

import pytest

from dynq.localcluster import LocalCluster
from dynq_client import Client, DynqError, QuorumError
from dynq_client.versions import VersionedObject, decode_reply_object
from tests.conftest import wait_known_down, wait_unreachable

pytestmark = pytest.mark.integration


def primaries(client: Client, key: bytes) -> tuple[str, ...]:
    assert client.table is not None
    return client.table.ring.preference_list_for(key).primaries


def keys_with_primary(client: Client, node: str, count: int, prefix: str) -> list[bytes]:
    keys = [k for k in (f"{prefix}{i}".encode() for i in range(50 * count)) if node in primaries(client, k)]
    return keys[:count]


def replica(client: Client, node: str, key: bytes) -> VersionedObject | None:
    """What one node holds for ``key``, read from it directly (no quorum, no merge)."""
    return decode_reply_object(client.call(node, "replica_get", {"k": key}))


def hints_pending(client: Client, nodes: list[str]) -> int:
    return sum(int(client.call(name, "stats")["hints_pending_total"]) for name in nodes)


def write_while_down(
    client: Client, cluster: LocalCluster, victim: str, count: int, prefix: str
) -> list[bytes]:
    """Kill ``victim``, wait until every live node knows, then write ``count`` of its keys
    with W=3 (each through a hinted fallback). Returns the keys; each value is b"v-" + key."""
    keys = keys_with_primary(client, victim, count, prefix)
    cluster.kill(victim)
    wait_known_down(client, running(cluster), victim)
    for key in keys:
        client.put(key, b"v-" + key, w=3)
    return keys


def wait_until(predicate: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
    """Poll ``predicate`` (bounded in time); fail the test if it never holds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except DynqError:  # a node that just restarted may not be reconnected yet
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not hold within {timeout}s")
        time.sleep(0.2)


def running(cluster: LocalCluster) -> list[str]:
    return [name for name, node in cluster.nodes.items() if node.running]


def restart(cluster: LocalCluster, name: str) -> None:
    """Start a stopped node again with the same command line, and wait until it is reachable."""
    cluster.start(name)
    cluster.wait_ready([name])


def test_writes_succeed_through_fallbacks_and_hints_drain(cluster_factory: Any) -> None:
    """N=3, W=3, one primary killed: every write succeeds via a hinted fallback; after the
    primary returns the hints drain and every primary holds the newest version, while the
    fallback drops its copy."""
    cluster: LocalCluster = cluster_factory(4)
    victim = "n2"
    with Client(cluster.seeds) as client:
        keys = keys_with_primary(client, victim, 60, "hh")
        for key in keys[:20]:
            client.put(key, b"old")
        cluster.kill(victim)  # no waiting: a write caught in the instant of death is hedged
        for key in keys:
            client.put(key, b"new-" + key, context=client.get(key).context, w=3)
        alive = running(cluster)
        assert hints_pending(client, alive) == len(keys)
        assert sum(client.call(name, "stats")["hinted_writes"] for name in alive) >= 1

        restart(cluster, victim)
        wait_until(lambda: hints_pending(client, running(cluster)) == 0, what="hints drained")
        for key in keys:
            for node in primaries(client, key):
                obj = replica(client, node, key)
                assert obj is not None and obj.values == [b"new-" + key], (node, key)
            fallback = next(n for n in cluster.nodes if n not in primaries(client, key))
            assert replica(client, fallback, key) is None  # handed off, copy dropped
        replayed = sum(client.call(name, "stats")["hints_replayed"] for name in running(cluster))
        assert replayed == len(keys)


def test_fallback_killed_while_holding_hints_loses_nothing(cluster_factory: Any) -> None:
    """kill -9 the fallback that holds hints, restart it: the hints survive and still drain."""
    cluster: LocalCluster = cluster_factory(4)
    victim = "n3"
    with Client(cluster.seeds) as client:
        keys = write_while_down(client, cluster, victim, 40, "fk")
        holders = [n for n in running(cluster) if client.call(n, "stats")["hints_pending_total"] > 0]
        assert holders, "some fallback must hold hints"
        for holder in holders:
            cluster.kill(holder)
        for holder in holders:
            restart(cluster, holder)
        assert hints_pending(client, holders) == len(keys)  # durable: still there after kill -9
        restart(cluster, victim)
        wait_until(lambda: hints_pending(client, running(cluster)) == 0, what="hints drained")
        for key in keys:
            obj = replica(client, victim, key)
            assert obj is not None and obj.values == [b"v-" + key]


def test_read_repair_brings_a_stale_replica_up_to_date(cluster3: LocalCluster) -> None:
    """A replica that missed writes (no fallback, so no hints) is repaired by reads."""
    with Client(cluster3.seeds) as client:
        keys = [f"rr{i}".encode() for i in range(30)]
        cluster3.kill("n3")
        wait_unreachable(client, "n3")
        for key in keys:
            client.put(key, b"while-n3-was-down", w=2)
        restart(cluster3, "n3")
    # A fresh client has no memory of n3 being down; read_fanout="all" asks every replica, so
    # one pass repairs them all (quorum reads ask R of N at random, and repair those).
    with Client(cluster3.seeds, read_fanout="all") as reader:
        assert all(replica(reader, "n3", key) is None for key in keys)  # stale: it missed them
        for key in keys:
            assert reader.get(key, r=2).values == [b"while-n3-was-down"]

        def repaired() -> bool:
            return all(
                (obj := replica(reader, "n3", key)) is not None and obj.values == [b"while-n3-was-down"]
                for key in keys
            )

        wait_until(repaired, timeout=30, what="n3 repaired by reads")


def test_quorum_reads_hedge_a_stalled_replica(cluster3: LocalCluster) -> None:
    """A replica that is up but does not answer (SIGSTOP) costs a quorum read only the hedge
    delay: the client asks the remaining replica and completes at R replies."""
    with Client(cluster3.seeds, timeout=30.0, hedge_after=0.05) as client:
        keys = [f"hedge{i}".encode() for i in range(12)]
        for key in keys:
            client.put(key, b"v")
        cluster3.signal("n2", signal.SIGSTOP)
        try:
            for key in keys:  # about two thirds of them start at n2, so each of those hedges
                assert client.get(key, r=2).values == [b"v"]
            assert client.hedged_reads >= 1
        finally:
            cluster3.signal("n2", signal.SIGCONT)


def test_quorum_reads_replace_an_unreachable_replica_at_once(cluster3: LocalCluster) -> None:
    """A replica that cannot be reached is replaced by the next one without waiting for the
    hedge (hedge_after longer than the whole test's patience would allow)."""
    with Client(cluster3.seeds, timeout=10.0, hedge_after=9.0) as client:
        keys = [f"subst{i}".encode() for i in range(12)]
        for key in keys:
            client.put(key, b"v", w=3)
        cluster3.kill("n3")
        wait_unreachable(client, "n3")
        for key in keys:
            assert client.get(key, r=2).values == [b"v"]


def test_server_coordinated_reads(cluster3: LocalCluster) -> None:
    """coordination="server": a replica coordinates the read; the result is the same, and
    a dead first choice is skipped."""
    with Client(cluster3.seeds) as writer:
        writer.put(b"srv-a", b"one")
        first = primaries(writer, b"srv-a")[0]
    with Client(cluster3.seeds, coordination="server") as client:
        assert client.get(b"srv-a").values == [b"one"]
        assert client.get(b"srv-missing").found is False
        cluster3.kill(first)
        wait_unreachable(client, first)
        assert client.get(b"srv-a", r=2).values == [b"one"]


def test_server_side_read_repairs_too(cluster3: LocalCluster) -> None:
    """A read coordinated by a node (not the client) repairs stale primaries as well."""
    with Client(cluster3.seeds) as client:
        cluster3.kill("n2")
        wait_unreachable(client, "n2")
        client.put(b"srv-rr", b"fresh", w=2)
        restart(cluster3, "n2")
        coordinator = "n1"
        # n1 marked n2 down when the put could not reach it; its probes mark it up again.
        wait_until(lambda: client.call(coordinator, "stats")["peers"].get("n2", "up") == "up",
                   timeout=30, what="n1 sees n2 up again")
        body = client.call(coordinator, "get", {"k": b"srv-rr", "r": 2})
        assert body["ob"] is not None
        wait_until(lambda: replica(client, "n2", b"srv-rr") is not None, timeout=30, what="n2 repaired")
        assert client.call(coordinator, "stats")["read_repairs"] >= 1


def test_strict_quorum_pw_fails_clearly_and_sloppy_succeeds(cluster_factory: Any) -> None:
    """With a primary down, pw=3 is refused naming the shortfall; the same write without pw
    succeeds through a fallback."""
    cluster: LocalCluster = cluster_factory(4)
    with Client(cluster.seeds) as client:
        key = keys_with_primary(client, "n4", 1, "pw")[0]
        cluster.kill("n4")
        wait_unreachable(client, "n4")
        client.put(key, b"warm-up", w=2)  # lets the coordinator notice n4 is gone
        with pytest.raises(QuorumError) as info:
            client.put(key, b"strict", w=3, pw=3)
        assert "pw=3" in str(info.value)
        client.put(key, b"sloppy", context=client.get(key).context, w=3)
        assert client.get(key).values == [b"sloppy"]


def test_concurrent_writes_across_a_failure_end_as_siblings(cluster_factory: Any) -> None:
    """A write taken by fallbacks while a primary was down, and a concurrent write taken by
    that primary alone, both survive as siblings once everything heals."""
    cluster: LocalCluster = cluster_factory(4)
    with Client(cluster.seeds) as client:
        key = b"split-brain"
        first, *_ = primaries(client, key)
        client.put(key, b"v0", w=3)
        context = client.get(key, r=3).context
        cluster.kill(first)
        wait_unreachable(client, first)  # a write sent in the instant of the kill has an unknown outcome
        client.put(key, b"side-A", context=context, w=2)  # the other primaries and a fallback
        others = [n for n in cluster.nodes if n != first]
        for name in others:
            cluster.kill(name)
        restart(cluster, first)
    with Client([cluster.nodes[first].address]) as lonely:
        lonely.put(key, b"side-B", context=context, w=1)  # only `first` is up: it alone takes it
    for name in others:
        cluster.start(name)
    cluster.wait_ready()
    with Client(cluster.seeds) as client:
        wait_until(lambda: hints_pending(client, list(cluster.nodes)) == 0, what="hints drained")
        assert sorted(client.get(key, r=3).values) == [b"side-A", b"side-B"]


def test_full_hint_store_refuses_instead_of_dropping(cluster_factory: Any) -> None:
    """Past max_hints a fallback refuses further hinted writes (counted, logged): a W that
    needs it fails clearly, a W the primaries can meet succeeds, and no hint is lost."""
    cluster: LocalCluster = cluster_factory(4, extra_config="[handoff]\nmax_hints = 2\n")
    with Client(cluster.seeds) as client:
        keys = keys_with_primary(client, "n1", 12, "full")
        cluster.kill("n1")
        wait_known_down(client, running(cluster), "n1")
        accepted: list[bytes] = []
        refused = 0
        for key in keys:
            try:
                client.put(key, b"v", w=3)
                accepted.append(key)
            except QuorumError as exc:
                assert "hint store full" in str(exc)
                refused += 1
        stats = [client.call(n, "stats") for n in running(cluster)]
        assert all(s["hints_pending_total"] <= 2 for s in stats)
        assert refused > 0 and sum(s["hints_refused"] for s in stats) == refused
        assert sum(s["hints_pending_total"] for s in stats) == len(accepted)  # every W=3 ack has its hint
        client.put(keys[-1], b"w2", w=2)  # the two live primaries are enough
        restart(cluster, "n1")
        wait_until(lambda: hints_pending(client, running(cluster)) == 0, what="hints drained")
        for key in accepted:
            assert replica(client, "n1", key) is not None


def test_fallback_killed_mid_replay_loses_no_hint(cluster_factory: Any) -> None:
    """kill -9 a fallback while it is handing hints back (replay slowed down), restart it:
    every hinted write still reaches its primary."""
    cluster: LocalCluster = cluster_factory(4, extra_config="[handoff]\nreplay_rate = 100\nreplay_batch = 10\n")
    victim = "n1"
    with Client(cluster.seeds) as client:
        keys = write_while_down(client, cluster, victim, 300, "mid")
        holders = {n: client.call(n, "stats")["hints_pending_total"] for n in running(cluster)}
        busiest = max(holders, key=lambda n: holders[n])
        restart(cluster, victim)
        wait_until(lambda: 0 < client.call(busiest, "stats")["hints_pending_total"] < holders[busiest],
                   what="replay under way")
        cluster.kill(busiest)
        restart(cluster, busiest)
        wait_until(lambda: hints_pending(client, running(cluster)) == 0, timeout=90, what="hints drained")
        for key in keys:
            obj = replica(client, victim, key)
            assert obj is not None and obj.values == [b"v-" + key], key


def test_blind_delete_that_cannot_meet_w_fails_clearly(cluster3: LocalCluster) -> None:
    """A delete without context reads first; if its write cannot reach W replicas the caller
    gets a QuorumError (not a timeout), and the node that coordinated keeps serving."""
    with Client(cluster3.seeds) as client:
        client.put(b"del-w3", b"x", w=3)
        cluster3.kill("n3")
        wait_unreachable(client, "n3")  # else a write handed to n3 in that instant can only time out
        with pytest.raises(QuorumError):
            client.delete(b"del-w3", w=3)
        client.put(b"after", b"fine")
        assert client.get(b"after").values == [b"fine"]
        assert all(client.call(n, "stats")["in_flight"] == 1 for n in ("n1", "n2"))  # only the stats call itself


def test_a_coordinator_that_dropped_its_copy_never_reuses_a_dot(cluster_factory: Any) -> None:
    """A fallback coordinates a write while every primary is down, hands it off and drops
    its copy; later, with the primaries down again, it coordinates a blind write of the same
    key. Both writes must survive as siblings: minting the first write's dot again would
    make merge silently keep only one of them."""
    cluster: LocalCluster = cluster_factory(4)
    key = b"reused-dot"
    with Client(cluster.seeds) as client:
        owners = primaries(client, key)
    fallback = next(name for name in cluster.nodes if name not in owners)
    address = cluster.nodes[fallback].address

    def write_alone(value: bytes) -> None:
        for name in owners:
            cluster.kill(name)
        with Client([address]) as lonely:
            wait_until(lambda: all(lonely.call(fallback, "stats")["peers"].get(n) == "down"
                                   or not lonely.call(fallback, "ping", {"peers": True}) for n in owners)
                       or set(lonely.call(fallback, "ping", {"peers": True})["reachable"]).isdisjoint(owners),
                       what="primaries unreachable from the fallback")
            lonely.call(fallback, "put", {"k": key, "v": value, "w": 1})  # no context: blind
        for name in owners:
            cluster.start(name)
        cluster.wait_ready()
        with Client(cluster.seeds) as client:
            wait_until(lambda: hints_pending(client, list(cluster.nodes)) == 0, what="hints drained")
            wait_until(lambda: replica(client, fallback, key) is None, what="the fallback dropped its copy")

    write_alone(b"first")
    write_alone(b"second")
    with Client(cluster.seeds) as client:
        assert sorted(client.get(key, r=3).values) == [b"first", b"second"]
