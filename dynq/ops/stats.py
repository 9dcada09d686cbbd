"""The ``stats`` reply: every part's counters, assembled in one place, in one order.

The CLI, the Prometheus endpoint (:func:`dynq.ops.metrics.render_prometheus`) and
operators' scripts read it by key; ``tests/integration/test_stats_shape.py`` pins its keys.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dynq_client.health import Health

from ..cluster.liveness import Liveness
from ..cluster.manager import ClusterManager
from ..cluster.membership import claimant
from ..cluster.transfers import PartitionTransfers
from ..config import NodeConfig
from ..repair.anti_entropy import AntiEntropy
from ..repair.hinted_handoff import HintedHandoff
from ..server.peers import PeerLink
from ..server.router import RequestServer
from ..server.stats import Stats
from ..store.storage import Storage


@dataclass
class Sources:
    """What the reply is made of (the running node's parts)."""

    config: NodeConfig
    actor: str
    started: float  # wall clock at start
    stats: Stats
    storage: Storage
    cluster: ClusterManager
    server: RequestServer
    peers: PeerLink
    health: Health
    liveness: Liveness
    handoff: HintedHandoff
    transfers: PartitionTransfers
    anti_entropy: AntiEntropy
    wall: Callable[[], float] = time.time  # the environment's wall clock


def stats_reply(src: Sources) -> dict[str, Any]:
    stats, storage, state, ring = src.stats, src.storage, src.cluster.state, src.cluster.ring
    name = src.config.name
    gossip = src.liveness.gossip
    transfers = src.transfers
    return {
        "name": name,
        "actor": src.actor,
        "epoch": ring.epoch,
        "uptime_s": round(src.wall() - src.started, 1),
        "in_flight": src.server.in_flight,
        "requests": dict(stats.requests),
        "errors": dict(stats.errors),
        "dropped_frames": stats.dropped_frames,
        "dropped_replies": stats.dropped_replies,
        "late_replies": src.peers.late_replies,
        "send_retries": src.peers.send_retries,
        "sibling_warnings": stats.sibling_warnings,
        "keys": storage.count(),
        "storage_bytes": storage.size_bytes(),
        "commits": storage.commits,
        "rows_committed": storage.rows_committed,
        "commit_failures": storage.commit_failures,
        "wal_bytes": storage.wal_bytes(),
        **_checkpoint_stats(storage),
        "partitions_owned": len(ring.partitions_of(name)),
        "hinted_writes": stats.hinted_writes,
        "hints_stored": stats.hints_stored,
        "hints_refused": stats.hints_refused,
        "hints_pending": dict(storage.hints_pending),
        "hints_pending_total": storage.hint_count,
        "hints_replayed": src.handoff.replayed,
        "read_repairs": stats.read_repairs,
        "read_repairs_received": stats.read_repairs_received,
        "replica_batches": stats.replica_batches,
        "replica_batch_items": stats.replica_batch_items,
        "latency": {op: hist.summary() for op, hist in sorted(src.server.latencies.by_op.items())},
        "peers": src.health.snapshot(),
        "peers_down": src.health.down(),
        "stray_writes": stats.stray_writes,
        "security": src.config.security,
        "forbidden": stats.forbidden,
        "overloaded": stats.overloaded,
        "cluster": {
            "version": state.version,
            "status": state.status_of(name),
            "claimant": claimant(state),
            "members": len(state.ring.members),
            "transfers_pending": len(state.transfers),
            "transfers_planned": state.planned,
            "staged": bool(src.cluster.staged),
        },
        "transfers": {
            "active": len(transfers.active),
            "keys_sent": transfers.keys_sent,
            "bytes_sent": transfers.bytes_sent,
            "completed": transfers.completed,
            "retries": transfers.failures,
        },
        "gossip": {
            "sent": gossip.sent,
            "received": gossip.received,
            "malformed": gossip.malformed,
            "marked_down": stats.marked_down_by_gossip,
            "state_pulls": stats.state_pulls,
        },
        "anti_entropy": src.anti_entropy.snapshot(),
    }


def _checkpoint_stats(storage: Storage) -> dict[str, int | float]:
    checkpointer = storage.checkpointer
    if checkpointer is None:
        return {}
    cs = checkpointer.stats
    return {"checkpoints": cs.passes, "checkpoint_restarts": cs.restarts, "checkpoint_busy": cs.busy,
            "checkpoint_errors": cs.errors, "checkpoint_last_restart_ms": round(cs.last_restart_ms, 1)}
