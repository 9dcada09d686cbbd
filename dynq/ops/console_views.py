"""What the admin API answers, built from the replies of the node's own ops (pure).

The API part (:mod:`dynq.ops.admin_api`) asks the ops - this node's in-process, the other
members' over ZeroMQ - and these functions turn the replies into the JSON views: the
ring with its pending moves, the members as the serving node sees them, transfers with
progress and last error, hints per target, anti-entropy lag, alarms. A member that did
not answer is an ``Exception`` in the inputs and shows as down with the reason, never as
a missing row: the console must say *which* node is down.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from dynq_client import crdt
from dynq_client.protocol import show_bytes

from ..cluster.membership import ClusterState

Answer = dict[str, Any] | Exception
"""A member's reply body, or why there is none."""

AE_LAG_WARN_S = 3600.0  # anti-entropy horizon older than this: a warning (riak_kv#1656: AAE silently off)
TRANSFER_RETRY_WARN = 3  # a transfer retried this often: a warning (riak#1135: handoffs stuck for days)


def error_text(answer: Answer) -> str | None:
    if isinstance(answer, Exception):
        return f"{type(answer).__name__}: {answer}"
    return None


def ring_view(state: ClusterState) -> dict[str, Any]:
    """Every partition: owner and replicas now, and after the running transition."""
    ring, next_ring = state.ring, state.next_ring
    moving: dict[int, list[list[str]]] = {}
    for t in state.transfers:
        moving.setdefault(t.partition, []).append([t.source, t.target])
    partitions = []
    for p in range(ring.q):
        row: dict[str, Any] = {"p": p, "owner": ring.owners[p], "replicas": list(ring.preference_list(p).primaries)}
        if next_ring is not None:
            row["next_owner"] = next_ring.owners[p]
            row["next_replicas"] = list(next_ring.preference_list(p).primaries)
        row["transfers"] = moving.get(p, [])
        partitions.append(row)
    counts = ring.owned_counts()
    after = next_ring.owned_counts() if next_ring is not None else counts
    return {
        "epoch": ring.epoch, "version": state.version, "q": ring.q, "n": ring.n,
        "members": [{"name": m.name, "address": m.address, "zone": m.zone, "weight": m.weight}
                    for m in state.members],
        "owned": {m.name: counts.get(m.name, 0) for m in state.members},
        "owned_after": {m.name: after.get(m.name, 0) for m in state.members},
        "transition": next_ring is not None,
        "transfers_pending": len(state.transfers), "transfers_planned": state.planned,
        "partitions": partitions,
    }


def members_view(state: ClusterState, stats: Mapping[str, Answer], observer: str) -> list[dict[str, Any]]:
    """One row per member: membership, partitions now -> after, and its health as the
    ``observer`` node sees it (failure detector) and as its own stats answer says."""
    counts = state.ring.owned_counts()
    after = state.next_ring.owned_counts() if state.next_ring else counts
    view = stats.get(observer)
    seen: dict[str, str] = view.get("peers", {}) if isinstance(view, dict) else {}
    rows = []
    for m in state.members:
        answer = stats.get(m.name, RuntimeError("not asked"))
        row: dict[str, Any] = {
            "name": m.name, "address": m.address, "zone": m.zone, "weight": m.weight,
            "membership": state.status_of(m.name),
            "partitions": counts.get(m.name, 0), "partitions_after": after.get(m.name, 0),
            "transfers": sum(1 for t in state.transfers if m.name in (t.source, t.target)),
            "self": m.name == observer,
            "health": "self" if m.name == observer else seen.get(m.name, "unknown"),
        }
        if isinstance(answer, dict):
            ae = answer.get("anti_entropy") or {}
            row.update(status="up", keys=answer.get("keys"), epoch=answer.get("epoch"),
                       uptime_s=answer.get("uptime_s"), hints_pending=answer.get("hints_pending_total", 0),
                       peers_down=answer.get("peers_down", []), ae_horizon_s=ae.get("horizon_s"),
                       storage_bytes=answer.get("storage_bytes"), in_flight=answer.get("in_flight"))
        else:
            row.update(status="down", error=error_text(answer))
        rows.append(row)
    return rows


def transfers_view(state: ClusterState, replies: Mapping[str, Answer]) -> dict[str, Any]:
    """The pending transfers (the cluster state's), each with its source's progress."""
    progress: dict[tuple[int, str, str, int], dict[str, Any]] = {}  # n: 0 for the ring's, else a bucket's
    unreachable: dict[str, str] = {}
    for name, answer in sorted(replies.items()):
        if isinstance(answer, Exception):
            unreachable[name] = error_text(answer) or ""
            continue
        for pr in answer.get("progress", []):
            t = pr.get("t") or [0, "", ""]
            progress[(int(t[0]), str(t[1]), str(t[2]), int(t[3]) if len(t) > 3 else 0)] = pr
    rows = []
    pending = {(t.partition, t.source, t.target, t.n) for t in state.transfers}
    for key in sorted(pending | set(progress)):
        pr = progress.get(key)
        total = int(pr.get("total", 0)) if pr else 0
        sent = int(pr.get("sent", 0)) if pr else 0
        row: dict[str, Any] = {
            "partition": key[0], "source": key[1], "target": key[2], "pending": key in pending,
            "state": pr.get("state", "streaming") if pr else ("waiting" if key[1] not in unreachable
                                                                 else "source unreachable"),
            "sent": sent, "total": total, "bytes": int(pr.get("bytes", 0)) if pr else 0,
            "percent": 100 if pr and pr.get("state") in ("reported", "done") else
            (min(100, 100 * sent // total) if total else (0 if key in pending else 100)),
            "retries": int(pr.get("retries", 0)) if pr else 0,
            "last_error": pr.get("last_error") if pr else unreachable.get(key[1]),
            "started": pr.get("started") if pr else None, "finished": pr.get("finished") if pr else None,
        }
        if key[3]:  # a transfer of the keys of buckets with another n (see cluster.membership.Transfer)
            row["n"] = key[3]
        if not row["pending"] and row["state"] == "done" and (time.time() - (row["finished"] or 0)) > 600:
            continue  # finished more than 10 minutes ago: history, not news
        rows.append(row)
    return {"version": state.version, "planned": state.planned, "pending": len(state.transfers),
            "done": max(0, state.planned - len(state.transfers)) if state.next_ring is not None else 0,
            "transfers": rows, "unreachable": unreachable}


def hints_view(stats: Mapping[str, Answer]) -> dict[str, Any]:
    """Hints each node holds for each target, and what it handed back so far."""
    nodes: dict[str, Any] = {}
    for name, answer in sorted(stats.items()):
        if isinstance(answer, Exception):
            nodes[name] = {"error": error_text(answer)}
            continue
        nodes[name] = {"pending": answer.get("hints_pending", {}), "total": answer.get("hints_pending_total", 0),
                       "replayed": answer.get("hints_replayed", 0), "stored": answer.get("hints_stored", 0),
                       "refused": answer.get("hints_refused", 0), "hinted_writes": answer.get("hinted_writes", 0)}
    by_target: dict[str, int] = {}
    for info in nodes.values():
        for target, n in (info.get("pending") or {}).items():
            by_target[target] = by_target.get(target, 0) + int(n)
    return {"nodes": nodes, "by_target": by_target, "total": sum(by_target.values())}


def anti_entropy_view(state: ClusterState, stats: Mapping[str, Answer], now: float | None = None) -> dict[str, Any]:
    """Per node its horizon and exchanges; per partition the newest complete pass by any
    node; the cluster's consistency horizon (the oldest of those, None if one never had one)."""
    now = time.time() if now is None else now
    nodes: dict[str, Any] = {}
    newest: dict[int, int] = {p: 0 for p in range(state.ring.q)}
    for name, answer in sorted(stats.items()):
        if isinstance(answer, Exception):
            nodes[name] = {"error": error_text(answer)}
            continue
        ae = answer.get("anti_entropy") or {}
        parts = ae.get("partitions") or {}
        last: list[int] = [int(v.get("last_exchange_ms", 0)) for v in parts.values()]
        latest = max(last, default=0)
        for p, v in parts.items():
            if str(p).isdigit() and int(p) in newest:
                newest[int(p)] = max(newest[int(p)], int(v.get("last_exchange_ms", 0)))
        nodes[name] = {"enabled": ae.get("enabled"), "horizon_s": ae.get("horizon_s"),
                       "exchanges": ae.get("exchanges", 0), "exchange_failures": ae.get("exchange_failures", 0),
                       "keys_repaired": ae.get("keys_repaired", 0), "partitions": len(parts),
                       "never_exchanged": sum(1 for x in last if not x),
                       "last_exchange_ms": latest or None}
    ages: dict[int, float | None] = {p: (round(now - ms / 1000, 1) if ms else None) for p, ms in newest.items()}
    known = [a for a in ages.values() if a is not None]
    horizon = max(known) if known and len(known) == len(ages) else None
    return {"nodes": nodes, "partitions": {str(p): {"last_exchange_ms": ms, "age_s": ages[p]} for p, ms in newest.items()},
            "consistency_horizon_s": horizon}


def alarms_view(members: list[dict[str, Any]], transfers: dict[str, Any], ae: dict[str, Any],
                hints: dict[str, Any], stats: Mapping[str, Answer],
                history: Mapping[str, Answer]) -> list[dict[str, Any]]:
    """What an operator on call must look at, most severe first."""
    out: list[dict[str, Any]] = []

    def alarm(level: str, kind: str, node: str | None, message: str) -> None:
        out.append({"level": level, "kind": kind, "node": node, "message": message})

    for m in members:
        if m["status"] == "down":
            alarm("critical", "node_down", m["name"], f"{m['name']} does not answer: {m.get('error')}")
        elif m.get("peers_down"):
            alarm("warning", "peers_down", m["name"], f"{m['name']} sees {', '.join(m['peers_down'])} down")
    for t in transfers["transfers"]:
        if t["pending"] and (t["retries"] >= TRANSFER_RETRY_WARN or t["state"] == "source unreachable"):
            alarm("warning", "transfer_stuck", t["source"],
                  f"partition {t['partition']} {t['source']} -> {t['target']}: {t['retries']} retries; "
                  f"last error: {t['last_error'] or '-'}")
    for name, info in ae["nodes"].items():
        if "error" in info:
            continue
        if info.get("enabled") is False:
            alarm("warning", "ae_disabled", name, f"anti-entropy is disabled on {name}")
        elif (info.get("horizon_s") or 0) > AE_LAG_WARN_S:
            alarm("warning", "ae_lag", name, f"anti-entropy on {name} has not completed a pass of some partition "
                                             f"for {info['horizon_s']:.0f} s")
    for name, answer in sorted(stats.items()):
        if isinstance(answer, Exception):
            continue
        errors = answer.get("errors") or {}
        recent = history.get(name)
        points = recent.get("history", {}).get("points", []) if isinstance(recent, dict) else []
        recent_warn = sum(int(pt.get("sibling_warnings", 0)) for pt in points)
        recent_sib = sum(int(pt.get("refused_siblings", 0)) for pt in points)
        recent_size = sum(int(pt.get("refused_size", 0)) for pt in points)
        if recent_warn or answer.get("sibling_warnings"):
            alarm("warning" if recent_warn else "info", "siblings", name,
                  f"{answer.get('sibling_warnings', 0)} writes left a key with many siblings "
                  f"({recent_warn} in the last minutes): the application should resolve them")
        if recent_sib or errors.get("siblings"):
            alarm("warning" if recent_sib else "info", "too_many_siblings", name,
                  f"{errors.get('siblings', 0)} writes refused: a key reached limits.max_siblings "
                  f"({recent_sib} in the last minutes)")
        too_large = int(errors.get("value_too_large", 0)) + int(errors.get("key_too_large", 0))
        if recent_size or too_large:
            alarm("warning" if recent_size else "info", "object_size", name,
                  f"{too_large} writes refused for key, value or object size ({recent_size} in the last minutes)")
        if answer.get("hints_refused"):
            alarm("warning", "hints_refused", name, f"{answer['hints_refused']} hinted writes refused: the hint "
                                                     "store is full (handoff.max_hints)")
    if hints["total"]:
        targets = ", ".join(f"{t}: {n}" for t, n in sorted(hints["by_target"].items()))
        alarm("info", "hints_pending", None, f"{hints['total']} hints waiting for their primaries ({targets})")
    order = {"critical": 0, "warning": 1, "info": 2}
    return sorted(out, key=lambda a: order[a["level"]])


def typed_state_view(blob: object, *, whole_cloud: bool = False) -> dict[str, Any] | None:
    """A data type's state as the inspector and `dynq inspect` show it (None: not a typed
    state, so the caller decodes it as an object): type, context, value, dots. The
    context's dot cloud is counted, or listed whole with ``whole_cloud`` (the CLI)."""
    if not isinstance(blob, bytes) or not crdt.is_state_blob(blob):
        return None
    state = crdt.decode_state(blob)

    def plain(v: Any) -> Any:
        if isinstance(v, bytes):
            return show_bytes(v)[:80]
        if isinstance(v, (set, frozenset)):
            return sorted(show_bytes(x)[:80] if isinstance(x, bytes) else str(x) for x in list(v)[:100])
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    view = {"datatype": state.kind,
            "context": {"vv": {str(a): c for a, c in state.ctx.vv.items()},
                        "cloud": sorted(map(list, state.ctx.cloud)) if whole_cloud else len(state.ctx.cloud)},
            "value": plain(crdt.value_of(state.kind, state.store)),
            "dots": sum(1 for _ in crdt.dots_of(state.kind, state.store))}
    if state.expires_ms:  # a key of a ttl bucket: when it expires (as dynq inspect shows it)
        view["expires_ms"] = state.expires_ms
    return view
