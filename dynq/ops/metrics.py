"""Request metrics and the Prometheus text endpoint.

Latencies go into fixed log-spaced buckets (Prometheus histogram style: cumulative on
output), cheap enough for the request path: one ``bisect`` and two additions. The
endpoint is a minimal HTTP/1.0 responder on the node's own event loop, off by default
(``[metrics] port``); it serves ``GET /metrics`` in the Prometheus text format 0.0.4.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import logging
from typing import Any, Callable

log = logging.getLogger(__name__)

# Upper bounds in seconds: 100 us .. 10 s.
BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """Counts per bucket, plus sum and count, for one series."""

    __slots__ = ("counts", "total", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.total += seconds
        self.count += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (an estimate, in seconds)."""
        if not self.count:
            return 0.0
        rank, seen = q * self.count, 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= rank:
                return BUCKETS[i] if i < len(BUCKETS) else float("inf")
        return float("inf")

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean_ms": round(1000 * self.total / self.count, 3) if self.count else 0.0,
            "p50_ms_le": 1000 * self.quantile(0.5),
            "p99_ms_le": 1000 * self.quantile(0.99),
        }


class Latencies:
    """One histogram per op."""

    def __init__(self) -> None:
        self.by_op: dict[str, Histogram] = collections.defaultdict(Histogram)

    def observe(self, op: str, seconds: float) -> None:
        self.by_op[op].observe(seconds)


def _escape(value: str) -> str:
    """Label values per the text format: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
    return "{" + inner + "}"


def render_prometheus(stats: dict[str, Any], latencies: Latencies) -> str:
    """The node's stats snapshot and latency histograms in Prometheus text format."""
    node = str(stats.get("name", ""))
    out: list[str] = []

    def metric(name: str, kind: str, help_: str, samples: list[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{_labels(node=node, **labels)} {value}")

    metric("dynq_requests_total", "counter", "Requests received, per op.",
           [({"op": op}, n) for op, n in sorted(stats.get("requests", {}).items())])
    metric("dynq_request_errors_total", "counter", "Error replies, per error code (quorum failures are code quorum / quorum_timeout).",
           [({"code": code}, n) for code, n in sorted(stats.get("errors", {}).items())])
    out.append("# HELP dynq_request_duration_seconds Time from a request's arrival to its reply, per op.")
    out.append("# TYPE dynq_request_duration_seconds histogram")
    for op, hist in sorted(latencies.by_op.items()):
        cumulative = 0
        for bound, n in zip(BUCKETS + (float("inf"),), hist.counts):
            cumulative += n
            le = "+Inf" if bound == float("inf") else repr(bound)
            out.append(f"dynq_request_duration_seconds_bucket{_labels(node=node, op=op, le=le)} {cumulative}")
        out.append(f"dynq_request_duration_seconds_sum{_labels(node=node, op=op)} {hist.total}")
        out.append(f"dynq_request_duration_seconds_count{_labels(node=node, op=op)} {hist.count}")
    metric("dynq_hints_pending", "gauge", "Hinted writes this node holds for another, per target.",
           [({"target": t}, n) for t, n in sorted(stats.get("hints_pending", {}).items())])
    for key, kind, help_ in (
        ("hinted_writes", "counter", "Puts coordinated here that used a fallback."),
        ("hints_replayed", "counter", "Hints handed back to their primary."),
        ("hints_refused", "counter", "Hinted writes refused because the hint store was full."),
        ("read_repairs", "counter", "Stale replicas repaired after reads coordinated here."),
        ("keys", "gauge", "Objects stored (including tombstones and fallback copies)."),
        ("storage_bytes", "gauge", "Size of the database files."),
        ("in_flight", "gauge", "Requests received and not yet answered."),
        ("overloaded", "counter", "Requests refused unexecuted: their connection had max_in_flight_per_connection."),
        ("commits", "counter", "Group-commit transactions."),
        ("commit_failures", "counter", "Transactions that failed (disk full, I/O error)."),
        ("wal_bytes", "gauge", "Size of the write-ahead log file."),
        ("checkpoints", "counter", "Background WAL checkpoints run."),
        ("checkpoint_restarts", "counter", "Checkpoints that made writers wait because the WAL passed wal_limit_mb."),
        ("checkpoint_errors", "counter", "Background WAL checkpoints that failed."),
        ("epoch", "gauge", "Ring epoch this node holds."),
    ):
        metric(f"dynq_{key}" + ("_total" if kind == "counter" and not key.endswith("total") else ""), kind, help_,
               [({}, float(stats.get(key, 0)))])
    ae = stats.get("anti_entropy") or {}
    for key, kind, help_ in (
        ("exchanges", "counter", "Anti-entropy exchanges finished."),
        ("exchange_failures", "counter", "Anti-entropy exchanges that failed."),
        ("keys_repaired", "counter", "Keys found different by anti-entropy."),
        ("bytes_sent", "counter", "Anti-entropy request bytes sent."),
        ("tombstones_reaped", "counter", "Tombstones deleted after every primary held them."),
        ("expired_reclaimed", "counter", "Objects whose values had all expired, deleted after every primary held them."),
        ("horizon_s", "gauge", "Age of the oldest partition this node has not completed a pass of."),
    ):
        name = "dynq_ae_" + key.replace("_s", "_seconds") if key == "horizon_s" else "dynq_ae_" + key
        metric(name + ("_total" if kind == "counter" else ""), kind, help_, [({}, float(ae.get(key, 0)))])
    parts = ae.get("partitions", {})
    metric("dynq_ae_partition_last_exchange_ms", "gauge", "Wall-clock ms of the last complete pass, per partition.",
           [({"partition": p}, float(v.get("last_exchange_ms", 0))) for p, v in sorted(parts.items())])
    metric("dynq_ae_partition_tree_build_ms", "gauge", "Duration of the last tree build from data, per partition.",
           [({"partition": p}, float(v.get("tree_build_ms", 0))) for p, v in sorted(parts.items())])
    peers = stats.get("peers", {})
    metric("dynq_peer_up", "gauge", "1 if this node considers the peer usable (up or suspect), else 0.",
           [({"peer": p}, 0.0 if s == "down" else 1.0) for p, s in sorted(peers.items())])
    metric("dynq_peers_down", "gauge", "Peers this node considers down.", [({}, float(len(stats.get("peers_down", []))))])
    cluster = stats.get("cluster", {})
    transfers = stats.get("transfers", {})
    gossip = stats.get("gossip", {})
    for name, kind, help_, value in (
        ("dynq_cluster_version", "gauge", "Version of the cluster state this node holds.", cluster.get("version", 0)),
        ("dynq_cluster_members", "gauge", "Members of the serving ring.", cluster.get("members", 0)),
        ("dynq_cluster_transfers_pending", "gauge", "Partition transfers the running membership change still needs.",
         cluster.get("transfers_pending", 0)),
        ("dynq_transfers_active", "gauge", "Outgoing partition transfers running on this node.", transfers.get("active", 0)),
        ("dynq_transfer_objects_sent_total", "counter", "Objects this node streamed to new replicas.",
         transfers.get("keys_sent", 0)),
        ("dynq_transfer_bytes_sent_total", "counter", "Bytes this node streamed to new replicas.",
         transfers.get("bytes_sent", 0)),
        ("dynq_transfers_completed_total", "counter", "Outgoing partition transfers finished.",
         transfers.get("completed", 0)),
        ("dynq_transfer_retries_total", "counter", "Transfer chunks retried (target unreachable or refused).",
         transfers.get("retries", 0)),
        ("dynq_stray_writes_total", "counter", "Replica writes for keys this node no longer replicates (old rings).",
         stats.get("stray_writes", 0)),
        ("dynq_gossip_marked_down_total", "counter", "Peers marked down for missing heartbeats.",
         gossip.get("marked_down", 0)),
    ):
        metric(name, kind, help_, [({}, float(value))])
    return "\n".join(out) + "\n"


async def serve_metrics(host: str, port: int, render: Callable[[], str]) -> asyncio.AbstractServer:
    """Serve ``GET /metrics`` on ``host:port`` from the running loop."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass  # headers: not needed
            parts = request_line.decode("latin-1").split()
            if len(parts) >= 2 and parts[0] == "GET" and parts[1].split("?")[0] == "/metrics":
                body, status = render().encode(), "200 OK"
            else:
                body, status = b"not found: try /metrics\n", "404 Not Found"
            writer.write(
                f"HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (asyncio.TimeoutError, ConnectionError, UnicodeError):
            pass
        except Exception:  # a broken scrape must never hurt the node
            log.exception("metrics request failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
