"""End-to-end behaviour of a real cluster: node processes, ZeroMQ sockets, SQLite files."""

from __future__ import annotations

import signal
import time

import pytest

from dynq.localcluster import LocalCluster
from tests.conftest import wait_unreachable
from dynq_client import (
    Client,
    InvalidRequest,
    KeyTooLarge,
    QuorumError,
    QuorumTimeout,
    TooManySiblings,
    ValueTooLarge,
)

pytestmark = pytest.mark.integration


@pytest.fixture(params=["none", "curve"])
def cluster3(request: pytest.FixtureRequest, cluster_factory: object) -> LocalCluster:
    """The core behaviours, with and without CurveZMQ on every connection."""
    return cluster_factory(3, security=request.param)  # type: ignore[operator, no-any-return]


def primaries(client: Client, key: bytes) -> tuple[str, ...]:
    assert client.table is not None
    return client.table.ring.preference_list_for(key).primaries


def test_round_trip_of_many_keys(client3: Client) -> None:
    """Every key written is read back with its value, from a client-coordinated quorum."""
    keys = [f"key-{i}".encode() for i in range(300)]
    for key in keys:
        client3.put(key, b"value-" + key)
    for key in keys:
        result = client3.get(key)
        assert result.found
        assert result.values == [b"value-" + key]
    assert not client3.get(b"never-written").found


def test_every_primary_holds_the_write(cluster3: LocalCluster, client3: Client) -> None:
    """A put with W=3 is on every primary's disk when it returns (read each replica directly)."""
    client3.put(b"durable", b"yes", w=3)
    for name in primaries(client3, b"durable"):
        body = client3.call(name, "replica_get", {"k": b"durable"})
        assert body["ob"] is not None


def test_concurrent_blind_writes_become_siblings_and_resolve(cluster3: LocalCluster) -> None:
    """Two writes without context are both kept; a put with the read's context resolves them."""
    with cluster3.client() as a, cluster3.client() as b:
        a.put(b"cart", b"apples")
        b.put(b"cart", b"pears")
        got = a.get(b"cart")
        assert sorted(got.values) == [b"apples", b"pears"]
        a.put(b"cart", b"apples,pears", context=got.context)
        assert b.get(b"cart").values == [b"apples,pears"]


def test_stale_context_writes_are_siblings_not_lost(client3: Client) -> None:
    """Two writers with the same (stale) context both survive; neither replaces the other."""
    client3.put(b"doc", b"v1")
    ctx = client3.get(b"doc").context
    client3.put(b"doc", b"v2-from-alice", context=ctx)
    client3.put(b"doc", b"v2-from-bob", context=ctx)
    assert sorted(client3.get(b"doc").values) == [b"v2-from-alice", b"v2-from-bob"]


def test_delete_with_and_without_context(client3: Client) -> None:
    """Deletes make a key not found; a later put brings it back."""
    client3.put(b"gone", b"x")
    client3.delete(b"gone", context=client3.get(b"gone").context)
    result = client3.get(b"gone", r=3)
    assert not result.found and result.values == []
    client3.put(b"gone", b"again", context=result.context)
    assert client3.get(b"gone").values == [b"again"]
    client3.put(b"blind", b"y")
    client3.delete(b"blind")  # no context: the coordinator reads first
    assert not client3.get(b"blind", r=3).found


def test_quorum_failure_names_the_replicas(cluster3: LocalCluster, client3: Client) -> None:
    """With two of three nodes down, W=2 and R=2 fail naming each failed replica; W=1/R=1 work."""
    client3.put(b"q", b"before")
    down = [name for name in primaries(client3, b"q")[1:]]
    for name in down:
        cluster3.kill(name)
    with pytest.raises(QuorumError) as info:
        client3.put(b"q", b"after", w=2)
    assert info.value.required == 2 and info.value.succeeded == 1
    assert set(info.value.errors) == set(down)
    with pytest.raises(QuorumError) as info_get:
        client3.get(b"q", r=2)
    assert set(info_get.value.errors) == set(down)
    client3.put(b"q", b"after", w=1)
    assert b"after" in client3.get(b"q", r=1).values


def test_one_node_killed_quorums_still_work(cluster3: LocalCluster, client3: Client) -> None:
    """kill -9 one of three: W=2/R=2 still succeed, including keys whose first primary died."""
    for i in range(50):
        client3.put(f"k{i}".encode(), b"v1")
    cluster3.kill("n1")
    wait_unreachable(client3, "n1")
    for i in range(50):
        key = f"k{i}".encode()
        assert client3.get(key).values == [b"v1"]
        client3.put(key, b"v2", context=client3.get(key).context)
        assert client3.get(key).values == [b"v2"]


def test_paused_replica_makes_w3_time_out_with_its_name(cluster3: LocalCluster, client3: Client) -> None:
    """A replica that stops answering mid-request fails the quorum at the deadline, named."""
    key = b"paused"
    victim = primaries(client3, key)[-1]
    cluster3.signal(victim, signal.SIGSTOP)
    try:
        with cluster3.client(timeout=1.0) as short:
            with pytest.raises(QuorumTimeout) as info:
                short.put(key, b"v", w=3)
            assert victim in info.value.errors
            assert short.get(key, r=2).values == [b"v"]  # W was 3 but two replicas have it
    finally:
        cluster3.signal(victim, signal.SIGCONT)


def test_data_survives_a_full_restart(cluster3: LocalCluster, client3: Client) -> None:
    """Acknowledged writes are on disk: stop every node, start again, read them back."""
    for i in range(100):
        client3.put(f"p{i}".encode(), f"{i}".encode())
    cluster3.stop_all()
    for name in cluster3.nodes:
        cluster3.start(name)
    cluster3.wait_ready()
    with cluster3.client() as fresh:
        for i in range(100):
            assert fresh.get(f"p{i}".encode(), r=3).values == [f"{i}".encode()]


def test_size_limits_give_clear_errors_and_write_nothing(client3: Client) -> None:
    """Oversized keys and values are refused with typed errors; nothing is stored."""
    with pytest.raises(KeyTooLarge):
        client3.put(b"k" * 1025, b"v")
    with pytest.raises(ValueTooLarge):
        client3.put(b"big", b"v" * (1024 * 1024 + 1))
    assert not client3.get(b"big").found
    client3.put(b"k" * 1024, b"v" * (1024 * 1024))  # exactly at the limits: accepted
    assert client3.get(b"k" * 1024).values == [b"v" * (1024 * 1024)]
    with pytest.raises(InvalidRequest):
        client3.put(b"k", "not bytes")  # type: ignore[arg-type]


def test_server_rejects_oversized_values_from_a_raw_request(cluster3: LocalCluster, client3: Client) -> None:
    """The node checks limits itself, whatever the client library does."""
    key = b"raw-big"
    with pytest.raises(ValueTooLarge):
        client3.call(primaries(client3, key)[0], "put", {"k": key, "v": b"x" * (1024 * 1024 + 1)})
    assert not client3.get(key, r=3).found


def test_sibling_limit_refuses_writes_until_resolved(cluster_factory: object) -> None:
    """Past max_siblings a blind write is refused; resolving with the context works again."""
    cluster = cluster_factory(3, extra_config="[limits]\nmax_siblings = 5\nsibling_warn = 3\n")  # type: ignore[operator]
    with Client(cluster.seeds) as client:
        for i in range(5):
            client.put(b"hot", f"v{i}".encode())
        with pytest.raises(TooManySiblings):
            client.put(b"hot", b"one too many")
        got = client.get(b"hot", r=3)
        assert len(got.values) == 5
        client.put(b"hot", b"merged", context=got.context)
        assert client.get(b"hot").values == [b"merged"]


def test_any_node_coordinates_for_any_key(cluster_factory: object) -> None:
    """Server-side path: a node that is not a replica of the key still serves get/put/delete."""
    cluster = cluster_factory(4, n=2, r=1, w=2)  # type: ignore[operator]
    with Client(cluster.seeds) as client:
        key = b"elsewhere"
        outsider = next(n for n in cluster.nodes if n not in primaries(client, key))
        client.call(outsider, "put", {"k": key, "v": b"via-outsider"})
        body = client.call(outsider, "get", {"k": key, "r": 2})
        assert body["ob"] is not None
        assert client.get(key, r=2).values == [b"via-outsider"]
        client.call(outsider, "delete", {"k": key})
        assert not client.get(key, r=2).found


def test_client_refreshes_routing_table_on_newer_epoch(cluster3: LocalCluster) -> None:
    """A reply carrying a newer ring epoch makes the client fetch the table again."""
    with cluster3.client() as client:
        client.put(b"epoch", b"1")
        assert client.table is not None
        old_epoch = client.table.epoch
        # Restart every node with n1's weight doubled: a new ring with a bigger epoch.
        cluster3.stop_all()
        node1 = cluster3.nodes["n1"]
        for node in cluster3.nodes.values():
            text = node.config_path.read_text()
            marker = f'name = "n1"\naddress = "{node1.address}"\nzone = ""\nweight = 1'
            assert marker in text
            text = text.replace(marker, marker[:-1] + "2")
            if node.name == "n1":  # its [node] section too
                text = text.replace("\nweight = 1 ", "\nweight = 2 ", 1)
            node.config_path.write_text(text)
        for name in cluster3.nodes:
            cluster3.start(name)
        cluster3.wait_ready()
        for _ in range(100):  # bounded: the refresh runs in the background after a reply
            client.get(b"epoch")
            if client.table.epoch > old_epoch:
                break
            time.sleep(0.05)
        assert client.table.epoch == old_epoch + 1
        counts = client.table.ring.owned_counts()
        assert counts["n1"] > counts["n2"]
        client.put(b"epoch", b"2", context=client.get(b"epoch").context)
        assert client.get(b"epoch").values == [b"2"]


def test_client_fails_over_when_first_replica_is_down(cluster3: LocalCluster, client3: Client) -> None:
    """Writes go to the next primary when the first cannot be reached; reads use the others."""
    key = b"failover"
    first = primaries(client3, key)[0]
    cluster3.kill(first)
    wait_unreachable(client3, first)
    client3.put(key, b"written-elsewhere")
    assert client3.get(key).values == [b"written-elsewhere"]
