"""Expiry and conditional puts on real node processes.

Expiry: a value with a ttl reads as not found after it on every replica and at every
R; a rewrite without ttl survives; reclamation empties every replica's storage and
leaves their Merkle trees equal; a replica down through the expiry (holding an older
value the expired one superseded) never brings anything back once it returns, through
hints, read repair and anti-entropy. Conditional puts: racing if_none_match puts with
the coordinator up (at most one wins), the weaker case after the coordinator was down
(both win, as siblings, nothing lost), if_match with a stale context, and the CLI.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Iterator

import pytest
from dynq_client import Client, PreconditionFailed
from dynq_client.versions import VersionedObject, decode_reply_object

from dynq.localcluster import LocalCluster
from tests.conftest import FAST_EXPIRY, GOSSIP_FAST_NO_AE, run_dynq, running_cluster, wait_for, wait_known_down

pytestmark = pytest.mark.integration






def replica_object(db: Client, name: str, key: bytes, bucket: str | None = None) -> VersionedObject | None:
    """What one node's own database holds of ``key`` (nothing merged)."""
    body: dict[str, Any] = {"k": key} if bucket is None else {"k": key, "bk": bucket}
    return decode_reply_object(db.call(name, "inspect", body, retry=False))


def now_ms() -> int:
    return int(time.time() * 1000)


def sleep_until(wall_ms: int) -> None:
    """Wait until the wall clock passes ``wall_ms`` (bounded: the ttls here are seconds)."""
    delay = (wall_ms - now_ms()) / 1000 + 0.05
    assert delay < 30
    if delay > 0:
        time.sleep(delay)


def roots(db: Client, name: str) -> dict[int, bytes]:
    return {p: root for p, root, _, _ in db.call(name, "ae_tree", {}, retry=False)["partitions"]}


def read_clock(result: Any) -> dict[str, int]:
    from dynq_client.versions import decode_context

    return decode_context(result.context)


def stats(db: Client, name: str) -> dict[str, Any]:
    return db.call(name, "stats", {}, retry=False)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    """Three nodes (N=3), expired objects reclaimed at once (expiry grace 0)."""
    with running_cluster(tmp_path_factory.mktemp("ttl3"), 3, extra_config=FAST_EXPIRY) as c:
        yield c


@pytest.fixture
def db(cluster: LocalCluster) -> Iterator[Client]:
    with cluster.client(timeout=5.0) as client:
        yield client


def test_a_value_reads_as_not_found_after_its_ttl_on_every_replica_and_at_every_r(
        cluster: LocalCluster, db: Client) -> None:
    db.put(b"session", b"token", ttl=2)
    for r in (1, 2, 3):
        assert db.get(b"session", r=r).value == b"token"
    held = {name: replica_object(db, name, b"session") for name in cluster.nodes}
    expiries = {obj.siblings[0].expires_ms for obj in held.values() if obj is not None}
    assert len(held) == 3 and None not in held.values()
    assert len(expiries) == 1, "every replica holds the same expiry"
    expires = expiries.pop()
    assert 1500 <= expires - now_ms() <= 2500
    sleep_until(expires)
    for r in (1, 2, 3):
        result = db.get(b"session", r=r)
        assert not result.found and result.values == []
    for name in cluster.nodes:  # each replica on its own (read straight from its database)
        obj = replica_object(db, name, b"session")
        assert obj is None or not obj.live(now_ms()).found


def test_a_rewrite_without_ttl_before_expiry_survives(db: Client) -> None:
    db.put(b"cart", b"short-lived", ttl=2)
    first = db.get(b"cart")
    db.put(b"cart", b"kept", context=first.context)
    obj = db.get_object(b"cart")
    assert obj is not None
    sleep_until(now_ms() + 2200)
    assert db.get(b"cart", r=3).values == [b"kept"]


def test_reclamation_empties_every_replica_and_their_trees_end_equal(cluster: LocalCluster, db: Client) -> None:
    names = sorted(cluster.nodes)
    before = {name: stats(db, name)["anti_entropy"]["expired_reclaimed"] for name in names}
    keys = [f"reclaim-{i}".encode() for i in range(60)]
    for key in keys:
        db.put(key, b"x" * 100, ttl=1)
    sleep_until(now_ms() + 1100)
    assert not any(db.get(key).found for key in keys[:5])

    def reclaimed() -> bool:
        return all(replica_object(db, name, key) is None for name in names for key in keys)

    wait_for("every replica to reclaim the expired keys", reclaimed, timeout=60)
    after = {name: stats(db, name)["anti_entropy"]["expired_reclaimed"] for name in names}
    assert sum(after.values()) - sum(before.values()) == 3 * len(keys)  # each key on each replica, once
    # Prometheus shows it too
    assert all(stats(db, name)["anti_entropy"]["expired_reclaimed"] >= 0 for name in names)
    wait_for("equal Merkle trees", lambda: roots(db, names[0]) == roots(db, names[1]) == roots(db, names[2]),
             timeout=30)


def test_bucket_ttl_is_the_default_and_a_put_may_override_it(cluster: LocalCluster, db: Client) -> None:
    db.call("n1", "bucket_create", {"name": "sessions", "props": {"ttl": 1}})
    wait_for("the bucket", lambda: db.refresh() or db.bucket("sessions").props() is not None)
    sessions = db.bucket("sessions")
    sessions.put(b"a", b"default ttl")
    sessions.put(b"b", b"never", ttl=0)
    sessions.put(b"c", b"longer", ttl=30)
    sleep_until(now_ms() + 1100)
    assert not sessions.get(b"a").found
    assert sessions.get(b"b").value == b"never"
    assert sessions.get(b"c").value == b"longer"
    assert list(sessions.keys()) == [b"b", b"c"] or sorted(sessions.keys()) == [b"b", b"c"]
    out = run_dynq("inspect", "c", "--bucket", "sessions", seed=cluster.addresses[0])
    assert out.returncode == 0, out.stderr
    assert "expires" in out.stdout and "in " in out.stdout


def test_if_none_match_races_have_at_most_one_winner_while_the_coordinator_is_up(
        cluster: LocalCluster) -> None:
    keys = [f"race-{i}".encode() for i in range(25)]
    results: dict[str, dict[bytes, str]] = {"a": {}, "b": {}}
    barrier = threading.Barrier(2)

    def writer(who: str) -> None:
        with cluster.client(timeout=5.0) as own:
            own.connect()
            for key in keys:
                barrier.wait(timeout=30)
                try:
                    own.put(key, who.encode(), if_none_match=True)
                    results[who][key] = "ok"
                except PreconditionFailed as exc:
                    assert exc.values, "a failed if_none_match says what it found"
                    results[who][key] = "failed"

    threads = [threading.Thread(target=writer, args=(who,)) for who in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    with cluster.client() as db:
        for key in keys:
            winners = [who for who in ("a", "b") if results[who].get(key) == "ok"]
            assert len(winners) == 1, f"{key!r}: {results['a'].get(key)} / {results['b'].get(key)}"
            assert db.get(key, r=3).values == [winners[0].encode()]


def test_if_match_with_a_stale_context_fails_and_with_the_current_one_succeeds(db: Client) -> None:
    db.put(b"doc", b"v1")
    read = db.get(b"doc")
    db.put(b"doc", b"v2", context=read.context)
    with pytest.raises(PreconditionFailed) as info:
        db.put(b"doc", b"v3", if_match=read.context)
    assert info.value.values == [b"v2"]
    db.put(b"doc", b"v3", if_match=info.value.context)  # the context the error carried is current
    assert db.get(b"doc", r=3).values == [b"v3"]


def test_cli_put_ttl_and_if_none_match(cluster: LocalCluster, db: Client) -> None:
    seed = cluster.addresses[0]
    assert run_dynq("put", "cli-key", "first", "--if-none-match", seed=seed).returncode == 0
    out = run_dynq("put", "cli-key", "second", "--if-none-match", seed=seed)
    assert out.returncode == 1
    assert "precondition failed" in out.stderr and "first" in out.stderr
    assert db.get(b"cli-key").value == b"first"
    assert run_dynq("put", "cli-ttl", "soon", "--ttl", "1", seed=seed).returncode == 0
    obj = db.get_object(b"cli-ttl")
    assert obj is not None and obj.siblings[0].expires_ms > 0
    out = run_dynq("put", "cli-key", "x", "--ttl", "-1", seed=seed)
    assert out.returncode == 2 and "ttl" in out.stderr.lower()


# --- clusters of their own -----------------------------------------------------------------


def test_a_replica_down_through_the_expiry_never_brings_anything_back(cluster_factory: Any) -> None:
    """Four nodes (N=3): n3 holds the old value when it goes down; the key is rewritten
    with a ttl (a fallback keeps a hint for n3) and expires while n3 is away. Reclamation
    must wait for n3 (it holds an older copy); when n3 returns, hints, read repair and
    anti-entropy converge it, no read ever returns either value, and then every replica
    drops the key."""
    c: LocalCluster = cluster_factory(4, extra_config=FAST_EXPIRY)
    with c.client(timeout=5.0) as db:
        key = next(f"back-{i}".encode() for i in range(1000)
                   if "n4" not in db.table.ring.preference_list_for(f"back-{i}".encode()).primaries)  # type: ignore[union-attr]
        primaries = db.table.ring.preference_list_for(key).primaries  # type: ignore[union-attr]
        down = primaries[-1]
        db.put(key, b"old value", w=3)
        read = db.get(key, r=3)
        c.stop(down)
        wait_known_down(db, [n for n in c.nodes if n != down], down)
        db.put(key, b"expiring", context=read.context, ttl=2)
        assert db.get(key).value == b"expiring"
        obj = db.get_object(key)
        assert obj is not None
        sleep_until(obj.siblings[0].expires_ms)
        time.sleep(1.0)  # several reclamation rounds: none may delete while n3 is away
        assert any(replica_object(db, n, key) is not None for n in primaries if n != down), \
            "reclaimed while a primary holding an older copy was down"
        c.start(down)
        wait_for(f"{down} back", lambda: db.call(down, "ping", {}, retry=False))
        seen: list[tuple[int, list[bytes]]] = []

        def reads() -> None:
            seen.append((2, db.get(key, r=2).values))
            seen.append((1, db.get(key, r=1).values))

        # Until the returning replica is repaired, an R=1 read may reach it alone and see the
        # old value it holds (a stale read of a replica that missed a write, as for any
        # write: R + W > N reads never are); the expired value never, at any R.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            reads()
            mine = replica_object(db, down, key)
            if mine is None or mine.clock != read_clock(read):
                break  # repaired (by handoff, read repair or anti-entropy) or already reclaimed
            time.sleep(0.1)
        # From then on, nothing at any R, until every replica dropped the key.
        repaired_at = len(seen)
        while time.monotonic() < deadline:
            reads()
            if all(replica_object(db, n, key) is None for n in c.nodes):
                break
            time.sleep(0.1)
        assert all(b"expiring" not in values for _, values in seen), f"the expired value came back: {seen}"
        assert all(values == [] for r, values in seen if r == 2), f"a quorum read saw a value: {seen}"
        assert all(values == [] for _, values in seen[repaired_at:]), \
            f"a value came back after the replica was repaired: {seen[repaired_at:]}"
        assert all(replica_object(db, n, key) is None for n in c.nodes), "not reclaimed after the replica returned"
        assert not db.get(key, r=3).found


def test_conditional_puts_after_the_coordinator_was_down_can_both_succeed_as_siblings(
        cluster_factory: Any) -> None:
    """The documented weaker case: the first primary misses conditional puts made while
    it was down (no fallback to keep a hint in a 3-node cluster, anti-entropy off). Back,
    it coordinates again: a check with R=2 still sees such a write (R + W > N) and
    refuses; a check with R=1 sees only its own copy and succeeds, and the two puts are
    then siblings: neither is lost."""
    c: LocalCluster = cluster_factory(3, extra_config=GOSSIP_FAST_NO_AE)
    with c.client(timeout=5.0) as db:
        assert db.table is not None
        ring = db.table.ring
        weak = b"weak"
        first = ring.preference_list_for(weak).primaries[0]
        strong = next(k for k in (b"strong-%d" % i for i in range(1000))
                      if ring.preference_list_for(k).primaries[0] == first)
        c.kill(first)
        wait_known_down(db, [n for n in c.nodes if n != first], first)
        db.put(weak, b"while-down", if_none_match=True)  # coordinated by the next primary
        db.put(strong, b"while-down", if_none_match=True)
        c.start(first)
        wait_for(f"{first} back", lambda: db.call(first, "ping", {}, retry=False))

        def seen_up() -> bool:
            for n in c.nodes:
                if n != first:
                    db.call(n, "ping", {"peers": True})
            return all(db.call(n, "stats")["peers"].get(first) != "down" for n in c.nodes if n != first)

        wait_for(f"{first} seen up", seen_up)
        # (nothing has read either key since: no read repair has given them to the first primary)
        assert replica_object(db, first, weak) is None and replica_object(db, first, strong) is None
        db.put(weak, b"weak-check", if_none_match=True, r=1)  # its check reads its own copy only
        with pytest.raises(PreconditionFailed) as info:
            db.put(strong, b"strong-check", if_none_match=True)  # R=2 reaches a replica holding it
        assert info.value.values == [b"while-down"]
        assert sorted(db.get(weak, r=3).values) == [b"weak-check", b"while-down"]  # siblings, none lost
        assert db.get(strong, r=3).values == [b"while-down"]


def test_bad_ttl_and_condition_fields_get_clear_errors(cluster: LocalCluster, db: Client) -> None:
    """Raw requests (as another client library might send them): each refused with a
    message naming the field, nothing written; the client library refuses them before
    sending."""
    from dynq_client import InvalidRequest
    from dynq_client.errors import InvalidContext

    primary = db.table.ring.preference_list_for(b"bad").primaries[0]  # type: ignore[union-attr]
    for extra, needle in (({"ttl": -1}, "ttl"), ({"ttl": "soon"}, "ttl"), ({"ttl": 10**10}, "ttl"),
                          ({"inm": 1}, "inm"), ({"im": "ctx"}, "im"), ({"inm": True, "im": b""}, "combined")):
        with pytest.raises(InvalidRequest) as info:
            db.call(primary, "put", {"k": b"bad", "v": b"x", **extra}, retry=False)
        assert needle in info.value.message, (extra, info.value.message)
    with pytest.raises(InvalidContext):
        db.call(primary, "put", {"k": b"bad", "v": b"x", "im": b"not a context"}, retry=False)
    assert not db.get(b"bad", r=3).found
    for kwargs in ({"ttl": -5}, {"ttl": True}, {"if_none_match": "yes"}, {"if_match": "ctx"},
                   {"if_none_match": True, "if_match": b""}, {"r": 2}):
        with pytest.raises(InvalidRequest):
            db.put(b"bad", b"x", **kwargs)  # type: ignore[arg-type]
