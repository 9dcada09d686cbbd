"""Hinted handoff (dynq.repair.hinted_handoff) against a real Storage on disk, with the
network played by the test (FakePeers) and the cluster state held in memory."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from dynq.cluster.membership import ClusterState, initial_state
from dynq.config import parse_config
from dynq.repair.hinted_handoff import HintedHandoff
from dynq.store.storage import Storage
from dynq_client.errors import DynqError, Timeout
from dynq_client.ring import Member, Ring
from dynq_client.versions import encode_object, update

MEMBERS = [Member(f"n{i}", f"tcp://127.0.0.1:{7100 + i}") for i in range(1, 5)]


class MemoryCluster:
    """A ClusterView over a ClusterState value."""

    def __init__(self, name: str, state: ClusterState) -> None:
        self.name = name
        self.state = state

    @property
    def ring(self) -> Ring:
        return self.state.ring

    @property
    def is_member(self) -> bool:
        return self.name in self.member_names

    @property
    def member_names(self) -> frozenset[str]:
        return frozenset(m.name for m in self.state.members)


class FakePeers:
    """Records replica writes; the test answers each future (or leaves it pending)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.down: set[str] = set()
        self.sent: list[tuple[str, bytes, asyncio.Future[dict[str, Any]]]] = []

    def is_up(self, peer: str) -> bool:
        return peer not in self.down

    def request(self, peer: str, op: str, body: dict[str, Any], timeout: float, callback: Any) -> int:
        raise AssertionError("handoff sends replica writes only")

    def call(self, peer: str, op: str, body: dict[str, Any],
             timeout_s: float | None = None) -> asyncio.Future[dict[str, Any]]:
        raise AssertionError("handoff sends replica writes only")

    def call_replicate(self, peer: str, key: bytes, blob: bytes, hint: str | None = None,
                       timeout_s: float | None = None) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.sent.append((peer, key, future))
        return future

    def answer(self, peer: str, error: DynqError | None = None) -> None:
        for target, _, future in self.sent:
            if target == peer and not future.done():
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result({})


def setup(tmp_path: Path, name: str = "n4") -> tuple[Storage, FakePeers, MemoryCluster, HintedHandoff]:
    config = parse_config({"node": {"name": name, "listen": "tcp://127.0.0.1:7104", "data_dir": str(tmp_path)},
                           "cluster": {"n": 3, "r": 2, "w": 2, "q": 8}}, base_dir=tmp_path)
    storage = Storage(tmp_path / "db", limits=config.limits)
    cluster = MemoryCluster(name, initial_state(MEMBERS, 8, 3))
    peers = FakePeers(name)
    return storage, peers, cluster, HintedHandoff(storage, peers, cluster, config)


def a_key_not_replicated_by(cluster: MemoryCluster, name: str) -> tuple[bytes, str]:
    """A key whose primaries do not include ``name``, and its first primary."""
    for i in range(1000):
        key = b"k%d" % i
        primaries = cluster.ring.preference_list_for(key).primaries
        if name not in primaries:
            return key, primaries[0]
    raise AssertionError("no such key")


async def store_hint(storage: Storage, cluster: MemoryCluster, key: bytes, target: str) -> bytes:
    obj = update(None, {}, "n9", b"v", 1)
    blob = encode_object(obj)
    done: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    storage.stage(key, cluster.ring.partition_for(key), obj, blob, done.set_result, asyncio.get_running_loop(), target)
    assert await done is None
    return blob


def test_a_hint_is_deleted_with_the_fallbacks_copy_only_after_the_ack(tmp_path: Path) -> None:
    """Replay sends the current object; until the target acknowledges, hint and copy stay;
    after, both go (this node is not a replica of the key)."""
    storage, peers, cluster, handoff = setup(tmp_path)
    key, target = a_key_not_replicated_by(cluster, "n4")

    async def scenario() -> None:
        blob = await store_hint(storage, cluster, key, target)
        replay = asyncio.get_running_loop().create_task(handoff.replay_batch(target))
        await asyncio.sleep(0.01)
        assert [(peer, k) for peer, k, _ in peers.sent] == [(target, key)]
        assert storage.hints_pending == {target: 1} and storage.get_blob(key) == blob
        peers.answer(target)
        assert await replay == 1
        assert storage.hints_pending == {} and storage.get_blob(key) is None and handoff.replayed == 1

    try:
        asyncio.run(scenario())
    finally:
        storage.close()


def test_a_failed_replay_keeps_the_hint(tmp_path: Path) -> None:
    storage, peers, cluster, handoff = setup(tmp_path)
    key, target = a_key_not_replicated_by(cluster, "n4")

    async def scenario() -> None:
        blob = await store_hint(storage, cluster, key, target)
        replay = asyncio.get_running_loop().create_task(handoff.replay_batch(target))
        await asyncio.sleep(0.01)
        peers.answer(target, Timeout(f"{target}: no answer"))
        assert await replay == 0
        assert storage.hints_pending == {target: 1} and storage.get_blob(key) == blob
        assert handoff.failures == 1 and handoff.replayed == 0

    try:
        asyncio.run(scenario())
    finally:
        storage.close()


def test_a_hint_for_a_node_that_left_goes_to_the_keys_replicas_now(tmp_path: Path) -> None:
    """Once the ring moved on, the write is not stranded here: every current replica gets
    it, and the hint goes only when all of them acknowledged."""
    storage, peers, cluster, handoff = setup(tmp_path)
    key, target = a_key_not_replicated_by(cluster, "n4")

    async def scenario() -> None:
        await store_hint(storage, cluster, key, target)
        remaining = [m for m in MEMBERS if m.name != target]
        cluster.state = initial_state(remaining, 8, 3)  # the target has left
        replicas = [x for x in cluster.ring.preference_list_for(key).primaries if x != "n4"]
        assert handoff.recipients(target, key) == replicas
        replay = asyncio.get_running_loop().create_task(handoff.replay_batch(target))
        await asyncio.sleep(0.01)
        assert sorted(peer for peer, _, _ in peers.sent) == sorted(replicas)
        peers.answer(replicas[0])
        await asyncio.sleep(0.01)
        assert storage.hints_pending == {target: 1}  # not yet: one replica has not answered
        for peer in replicas[1:]:
            peers.answer(peer)
        assert await replay == 1 and storage.hints_pending == {}

    try:
        asyncio.run(scenario())
    finally:
        storage.close()


def test_hints_for_a_departed_node_are_replayed_although_it_is_down(tmp_path: Path) -> None:
    """Regression (found by `dynq sim --seed 253`): a node left and exited, so this node
    sees it down forever; its hints must still go to the keys' replicas now, not wait for
    it to come up. Driven through the real loop of ``run`` on the simulator's virtual clock."""
    from dynq.sim.loop import SimLoop

    storage, peers, cluster, handoff = setup(tmp_path)
    key, target = a_key_not_replicated_by(cluster, "n4")

    async def scenario() -> None:
        await store_hint(storage, cluster, key, target)
        cluster.state = initial_state([m for m in MEMBERS if m.name != target], 8, 3)  # it left...
        peers.down.add(target)  # ...and is gone
        task = asyncio.get_running_loop().create_task(handoff.run())
        try:
            await asyncio.sleep(handoff.config.replay_interval_ms / 1000 + 0.01)
            replicas = [x for x in cluster.ring.preference_list_for(key).primaries if x != "n4"]
            assert sorted(peer for peer, _, _ in peers.sent) == sorted(replicas)
            for peer in replicas:
                peers.answer(peer)
            await asyncio.sleep(0.01)
            assert storage.hints_pending == {}
        finally:
            task.cancel()

    sim = SimLoop(1, timer_jitter=0)
    try:
        sim.run(scenario())
    finally:
        sim.close()
        storage.close()
