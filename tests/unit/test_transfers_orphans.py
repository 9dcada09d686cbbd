"""Rows a node no longer replicates after a handoff cut short by a restart (found by
``dynq sim --seed 4``): the source reported its transfers done, was killed within the
cleanup grace, and came back owning the partitions' rows with no transfer left to drop
them. Real Storage and LocalReplica on disk; the network is the test's (FakePeers)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

from dynq.cluster.membership import initial_state
from dynq.cluster.transfers import PartitionTransfers
from dynq.config import parse_config
from dynq.kv.local import LocalReplica
from dynq.repair.hinted_handoff import HintedHandoff
from dynq.server.stats import Stats
from dynq.store.storage import Storage
from dynq_client.versions import encode_object, update

from .test_hinted_handoff import MEMBERS, FakePeers, MemoryCluster, a_key_not_replicated_by


class NoClaimant:
    """The sweep reports nothing: a claimant call is a bug here."""

    async def transfer_done(self, transfer: Any) -> None:
        raise AssertionError("the sweep reports no transfer")


def a_key_replicated_by(cluster: MemoryCluster, name: str) -> bytes:
    for i in range(1000):
        key = b"mine%d" % i
        if name in cluster.ring.preference_list_for(key).primaries:
            return key
    raise AssertionError("no such key")


def test_a_restarted_source_hands_on_rows_it_no_longer_replicates_then_drops_them(tmp_path: Path) -> None:
    """Idle cluster, a row of a partition this node does not replicate and no hint for it:
    the first transfers step after the grace makes it a hint for the key's first primary
    (its own rows untouched); once the handoff is acknowledged the copy is gone."""
    config = parse_config({"node": {"name": "n4", "listen": "tcp://127.0.0.1:7104", "data_dir": str(tmp_path)},
                           "cluster": {"n": 3, "r": 2, "w": 2, "q": 8}}, base_dir=tmp_path)
    config = dataclasses.replace(config, transfer_cleanup_delay_ms=0)
    storage = Storage(tmp_path / "db", limits=config.limits)
    cluster = MemoryCluster("n4", initial_state(MEMBERS, 8, 3))
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
        transfers = PartitionTransfers(storage, peers, cluster, NoClaimant(), local, config)  # type: ignore[arg-type]
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
    config = parse_config({"node": {"name": "n4", "listen": "tcp://127.0.0.1:7104", "data_dir": str(tmp_path)},
                           "cluster": {"n": 3, "r": 2, "w": 2, "q": 8}}, base_dir=tmp_path)
    config = dataclasses.replace(config, transfer_cleanup_delay_ms=0)
    storage = Storage(tmp_path / "db", limits=config.limits)
    cluster = MemoryCluster("n4", initial_state(MEMBERS, 8, 3))
    cluster.state = dataclasses.replace(cluster.state, next_ring=cluster.state.ring)

    async def scenario() -> None:
        local = LocalReplica(asyncio.get_running_loop(), storage, cluster, Stats(), max_hints=100)
        transfers = PartitionTransfers(storage, FakePeers("n4"), cluster, NoClaimant(), local, config)  # type: ignore[arg-type]
        await transfers._sweep_when_idle()
        assert not transfers._swept

    try:
        asyncio.run(scenario())
    finally:
        storage.close()
