"""The shape of the ``stats`` reply: the CLI, the Prometheus endpoint and operators' scripts
read it by key, so a refactoring must not add, drop, rename or reorder its keys."""

from __future__ import annotations

from dynq.localcluster import LocalCluster

TOP = [
    "name", "actor", "epoch", "uptime_s", "in_flight", "requests", "errors", "dropped_frames",
    "dropped_replies", "late_replies", "send_retries", "sibling_warnings", "keys", "storage_bytes",
    "commits", "rows_committed", "commit_failures", "wal_bytes", "checkpoints", "checkpoint_restarts",
    "checkpoint_busy", "checkpoint_errors", "checkpoint_last_restart_ms", "partitions_owned",
    "hinted_writes", "hints_stored", "hints_refused", "hints_pending", "hints_pending_total",
    "hints_replayed", "read_repairs", "read_repairs_received", "replica_batches", "replica_batch_items",
    "latency", "peers", "peers_down", "stray_writes", "security", "forbidden", "overloaded", "cluster",
    "transfers", "gossip", "anti_entropy",
]
NESTED = {
    "cluster": ["version", "status", "claimant", "members", "transfers_pending", "transfers_planned", "staged"],
    "transfers": ["active", "keys_sent", "bytes_sent", "completed", "retries"],
    "gossip": ["sent", "received", "malformed", "marked_down", "state_pulls"],
    "anti_entropy": [
        "enabled", "passes", "exchanges", "exchange_failures", "keys_repaired", "keys_sent", "keys_received",
        "bytes_sent", "bytes_received", "tombstones_reaped", "expired_reclaimed", "reaps_blocked", "tree_fixes",
        "partitions_never_exchanged", "horizon_s", "partitions",
    ],
}


def test_stats_reply_keeps_its_keys_and_their_order(cluster3: LocalCluster) -> None:
    """The top-level keys of ``stats`` and of its fixed-shape sections, in order."""
    with cluster3.client(timeout=5.0) as db:
        db.put(b"k", b"v")
        db.get(b"k")
        stats = db.call("n1", "stats")
    assert list(stats) == TOP
    for section, keys in NESTED.items():
        assert list(stats[section]) == keys, section
