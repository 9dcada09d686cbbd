"""Rows a node no longer replicates after a handoff cut short (found by ``dynq sim``'s
placement check): seed 4, the source reported its transfers done, was killed within the
cleanup grace, and came back owning the partitions' rows with no transfer left to drop
them; seed 133, the cleanup drop hit a full disk and the transfer was forgotten anyway.
Real Storage and LocalReplica on disk; the network is the test's (FakePeers)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from dynq.cluster.membership import Transfer, initial_state
from dynq.cluster.transfers import PartitionTransfers, Progress
from dynq.config import NodeConfig, parse_config
from dynq.kv.local import LocalReplica
from dynq.repair.hinted_handoff import HintedHandoff
from dynq.server.stats import Stats
from dynq.store.storage import Storage
from dynq_client import crdt
from dynq_client.versions import encode_object, update

from .test_hinted_handoff import MEMBERS, FakePeers, MemoryCluster, a_key_not_replicated_by


class NoClaimant:
    """The sweep reports nothing: a claimant call is a bug here."""

    async def transfer_done(self, transfer: Transfer) -> dict[str, Any]:
        raise AssertionError("the sweep reports no transfer")


def a_key_replicated_by(cluster: MemoryCluster, name: str) -> bytes:
    for i in range(1000):
        key = b"mine%d" % i
        if name in cluster.ring.preference_list_for(key).primaries:
            return key
    raise AssertionError("no such key")


def idle_n4(tmp_path: Path) -> tuple[NodeConfig, Storage, MemoryCluster]:
    """n4 of an idle 4-node cluster (q=8, n=3), its transfers' cleanup grace zero."""
    config = parse_config({"node": {"name": "n4", "listen": "tcp://127.0.0.1:7104", "data_dir": str(tmp_path)},
                           "cluster": {"n": 3, "r": 2, "w": 2, "q": 8}}, base_dir=tmp_path)
    config = dataclasses.replace(config, transfer_cleanup_delay_ms=0)
    return config, Storage(tmp_path / "db", limits=config.limits), MemoryCluster("n4", initial_state(MEMBERS, 8, 3))


def test_a_restarted_source_hands_on_rows_it_no_longer_replicates_then_drops_them(tmp_path: Path) -> None:
    """Idle cluster, a row of a partition this node does not replicate and no hint for it:
    the first transfers step after the grace makes it a hint for the key's first primary
    (its own rows untouched); once the handoff is acknowledged the copy is gone."""
    config, storage, cluster = idle_n4(tmp_path)
    peers = FakePeers("n4")
    orphan, primary = a_key_not_replicated_by(cluster, "n4")
    mine = a_key_replicated_by(cluster, "n4")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        local = LocalReplica(loop, storage, cluster, Stats(), max_hints=100)
        for key in (orphan, mine):  # committed without a hint: what the killed source left behind
            obj = update(None, {}, "n9", b"v", 1)
            done: asyncio.Future[object] = loop.create_future()
            storage.stage(key, cluster.ring.partition_for(key), obj, encode_object(obj), done.set_result, loop)
            assert await done is None
        transfers = PartitionTransfers(storage, peers, cluster, NoClaimant(), local, config)
        await transfers._step()
        await asyncio.sleep(0.01)  # the group commit of the hint
        assert storage.hints_for_key(orphan) == [primary] and storage.hints_for_key(mine) == []
        assert transfers.orphans_handed_on == 1
        await transfers._step()  # once per life
        assert transfers.orphans_handed_on == 1
        handoff = HintedHandoff(storage, peers, cluster, config)
        replay = loop.create_task(handoff.replay_batch(primary))
        await asyncio.sleep(0.01)
        assert [(peer, key) for peer, key, _ in peers.sent] == [(primary, orphan)]
        peers.answer(primary)
        assert await replay == 1
        assert storage.get_blob(orphan) is None and storage.get_blob(mine) is not None

    try:
        asyncio.run(scenario())
    finally:
        storage.close()


def test_no_sweep_while_a_transition_runs(tmp_path: Path) -> None:
    """During a transition the transfers themselves move the rows: the sweep waits."""
    config, storage, cluster = idle_n4(tmp_path)
    cluster.state = dataclasses.replace(cluster.state, next_ring=cluster.state.ring)

    async def scenario() -> None:
        local = LocalReplica(asyncio.get_running_loop(), storage, cluster, Stats(), max_hints=100)
        transfers = PartitionTransfers(storage, FakePeers("n4"), cluster, NoClaimant(), local, config)
        await transfers._sweep_when_idle()
        assert not transfers._swept

    try:
        asyncio.run(scenario())
    finally:
        storage.close()


def test_a_cleanup_drop_that_fails_is_retried_not_forgotten(tmp_path: Path) -> None:
    """A reported transfer whose drop fails (a full disk, dynq sim --seed 133) stays
    reported: the next pass drops the rows (before, it was forgotten and the rows stayed)."""
    config, storage, cluster = idle_n4(tmp_path)
    key, primary = a_key_not_replicated_by(cluster, "n4")
    partition = cluster.ring.partition_for(key)
    transfer = Transfer(partition, "n4", primary)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        local = LocalReplica(loop, storage, cluster, Stats(), max_hints=100)
        obj = update(None, {}, "n9", b"v", 1)
        done: asyncio.Future[object] = loop.create_future()
        storage.stage(key, partition, obj, encode_object(obj), done.set_result, loop)
        assert await done is None
        transfers = PartitionTransfers(storage, FakePeers("n4"), cluster, NoClaimant(), local, config)
        transfers.progress[transfer] = Progress(transfer, 1, state="reported")
        transfers._reported[transfer] = 0.0  # the switch was seen long ago
        real = storage.drop_partition_rows
        calls: list[int] = []

        def full_once(p: int, limit: int) -> int:
            calls.append(p)
            if len(calls) == 1:
                raise OSError("database or disk is full")
            return real(p, limit)

        storage.drop_partition_rows = full_once  # type: ignore[method-assign,assignment]
        with pytest.raises(OSError):
            await transfers._finish_reported()
        assert transfer in transfers._reported and storage.get_blob(key) is not None
        await transfers._finish_reported()
        assert transfer not in transfers._reported and storage.get_blob(key) is None
        assert transfers.progress[transfer].state == "done" and transfers.completed == 1

    try:
        asyncio.run(scenario())
    finally:
        storage.close()


def test_an_orphaned_set_is_handed_on_as_its_state_not_as_an_empty_object(tmp_path: Path) -> None:
    """A typed key's row is a state (a set: a header and element rows), not a versioned
    object: the sweep once re-staged it as an empty object, which erased the set here and
    sent its primary a plain value for a typed key (dynq sim --seed 6256972110 --dt)."""
    config, storage, cluster = idle_n4(tmp_path)
    peers = FakePeers("n4")
    orphan, primary = a_key_not_replicated_by(cluster, "n4")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        local = LocalReplica(loop, storage, cluster, Stats(), max_hints=100)
        delta = crdt.apply_op(crdt.bottom(crdt.SET), ["add", [b"x", b"y"]], "n9.a", 0)
        done: asyncio.Future[object] = loop.create_future()
        local.typed.join(orphan, delta, done.set_result)
        assert await done is None
        transfers = PartitionTransfers(storage, peers, cluster, NoClaimant(), local, config)
        await transfers._step()
        await asyncio.sleep(0.01)  # the group commit of the hint
        assert storage.hints_for_key(orphan) == [primary] and transfers.orphans_handed_on == 1
        kept = local.typed.read(orphan, crdt.SET, staged=False)
        assert kept is not None and crdt.value_of(crdt.SET, kept.store) == {b"x", b"y"}
        handoff = HintedHandoff(storage, peers, cluster, config)
        replay = loop.create_task(handoff.replay_batch(primary))
        await asyncio.sleep(0.01)
        assert [(peer, key) for peer, key, _ in peers.sent] == [(primary, orphan)]
        shipped = storage.get_blob(orphan)  # what the replay sends: the set's whole state
        assert shipped is not None and crdt.is_state_blob(shipped)
        assert crdt.value_of(crdt.SET, crdt.decode_state(shipped).store) == {b"x", b"y"}
        peers.answer(primary)
        assert await replay == 1

    try:
        asyncio.run(scenario())
    finally:
        storage.close()


def test_a_sweep_cut_short_by_a_full_hint_store_sweeps_again(tmp_path: Path) -> None:
    """With the hint store full, the sweep stops and looks again after the grace, once
    the hints have drained (it used to count as done for the node's life, and the rows
    stayed: dynq sim --seed 5642729029, max_hints 5)."""
    config, storage, cluster = idle_n4(tmp_path)
    orphan, primary = a_key_not_replicated_by(cluster, "n4")

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        local = LocalReplica(loop, storage, cluster, Stats(), max_hints=0)  # full
        obj = update(None, {}, "n9", b"v", 1)
        done: asyncio.Future[object] = loop.create_future()
        storage.stage(orphan, cluster.ring.partition_for(orphan), obj, encode_object(obj), done.set_result, loop)
        assert await done is None
        transfers = PartitionTransfers(storage, FakePeers("n4"), cluster, NoClaimant(), local, config)
        await transfers._step()
        assert storage.hints_for_key(orphan) == [] and not transfers._swept
        local.max_hints = 100  # the hints drained
        await transfers._step()
        await asyncio.sleep(0.01)  # the group commit of the hint
        assert storage.hints_for_key(orphan) == [primary] and transfers._swept

    try:
        asyncio.run(scenario())
    finally:
        storage.close()
