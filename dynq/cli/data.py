"""Talking to the data: `dynq get|put|delete`, and looking at it: `ring`, `stats`, `inspect`, `backup`."""

from __future__ import annotations

import base64
import json
import sys
import time
from datetime import datetime, timezone
from typing import Any

import click

from dynq_client.buckets import MAX_TTL_S
from dynq_client.errors import DynqError, PreconditionFailed

from .common import connect, fail, seed_option, show_value, timeout_option


bucket_option = click.option("--bucket", default=None, metavar="NAME",
                             help="The key's bucket (default: the default bucket).")


@click.command()
@click.argument("key")
@click.option("--r", type=int, default=None, help="Read quorum (default: the bucket's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@bucket_option
@seed_option
@timeout_option
def get(key: str, r: int | None, as_json: bool, bucket: str | None, seed: tuple[str, ...], timeout: float) -> None:
    """Read KEY: every sibling value, and the context to write back with."""
    try:
        with connect(seed, timeout) as db:
            result = db.get(key, r=r, bucket=bucket)
    except DynqError as exc:
        fail(exc)
    context = base64.b64encode(result.context).decode()
    if as_json:
        click.echo(json.dumps({
            "found": result.found,
            "values": [base64.b64encode(v).decode() for v in result.values],
            "context": context,
        }))
        return
    if not result.found:
        click.echo("(not found)")
    for value in result.values:
        click.echo(show_value(value))
    if len(result.values) > 1:
        click.echo(f"({len(result.values)} siblings: write the resolved value back with --context)", err=True)
    click.echo(f"context: {context}", err=True)
    if not result.found:
        sys.exit(1)


def _context(context: str | None, option: str = "--context") -> bytes | None:
    if context is None:
        return None
    try:
        return base64.b64decode(context, validate=True)
    except ValueError as exc:
        raise click.BadParameter(f"not base64: {exc}", param_hint=option) from exc


@click.command()
@click.argument("key")
@click.argument("value")
@click.option("--context", default=None, help="Context printed by `dynq get` (base64).")
@click.option("--w", type=int, default=None, help="Write quorum (default: the bucket's).")
@click.option("--ttl", type=click.IntRange(0, MAX_TTL_S), default=None, metavar="SECONDS",
              help="Expire the value after SECONDS (default: the bucket's ttl; 0: never).")
@click.option("--if-none-match", is_flag=True,
              help="Only if KEY has no live value; exit 1 with what it holds otherwise.")
@click.option("--if-match", default=None, metavar="CONTEXT",
              help="Only if KEY is still the version CONTEXT (from `dynq get`) was read from; exit 1 otherwise.")
@bucket_option
@seed_option
@timeout_option
def put(key: str, value: str, context: str | None, w: int | None, ttl: int | None, if_none_match: bool,
        if_match: str | None, bucket: str | None, seed: tuple[str, ...], timeout: float) -> None:
    """Write VALUE (UTF-8) under KEY."""
    if if_none_match and if_match is not None:
        raise click.UsageError("--if-none-match and --if-match cannot be combined")
    match = _context(if_match, "--if-match")
    try:
        with connect(seed, timeout) as db:
            db.put(key, value.encode(), context=_context(context), w=w, bucket=bucket, ttl=ttl,
                   if_none_match=if_none_match, if_match=match)
    except PreconditionFailed as exc:
        click.echo(f"error: precondition failed: {exc.message}", err=True)
        for found in exc.values:
            click.echo(f"found: {show_value(found)}", err=True)
        if exc.context:
            click.echo(f"context: {base64.b64encode(exc.context).decode()}", err=True)
        sys.exit(1)
    except DynqError as exc:
        fail(exc)
    click.echo("ok")


@click.command()
@click.argument("key")
@click.option("--context", default=None, help="Context printed by `dynq get` (base64).")
@click.option("--w", type=int, default=None, help="Write quorum (default: the bucket's).")
@bucket_option
@seed_option
@timeout_option
def delete(key: str, context: str | None, w: int | None, bucket: str | None, seed: tuple[str, ...],
           timeout: float) -> None:
    """Delete KEY (writes a tombstone)."""
    try:
        with connect(seed, timeout) as db:
            db.delete(key, context=_context(context), w=w, bucket=bucket)
    except DynqError as exc:
        fail(exc)
    click.echo("ok")


@click.command()
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def ring(as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Show the ring: epoch, members and the partitions each owns."""
    try:
        with connect(seed, timeout) as db:
            table = db.table
    except DynqError as exc:
        fail(exc)
    assert table is not None
    r = table.ring
    if as_json:
        click.echo(json.dumps(table.to_wire()))
        return
    counts = r.owned_counts()
    click.echo(f"ring epoch {r.epoch}: Q={r.q} partitions, N={r.n}, default R={table.r} W={table.w}")
    click.echo(f"{'node':<12} {'address':<28} {'zone':<8} {'weight':>6} {'partitions':>10} {'share':>7}")
    for m in r.members:
        click.echo(
            f"{m.name:<12} {m.address:<28} {m.zone or '-':<8} {m.weight:>6} {counts[m.name]:>10} "
            f"{100 * counts[m.name] / r.q:>6.1f}%"
        )
    click.echo("partition owners: " + " ".join(f"{i}:{o}" for i, o in enumerate(r.owners)))


@click.command()
@click.option("--node", "node_name", default=None, help="Only this node (default: every member).")
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def stats(node_name: str | None, as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Counters of each node."""
    out: dict[str, Any] = {}
    try:
        with connect(seed, timeout) as db:
            assert db.table is not None
            names = [node_name] if node_name else [m.name for m in db.table.ring.members]
            for name in names:
                try:
                    out[name] = db.call(name, "stats")
                except DynqError as exc:
                    out[name] = {"error": str(exc)}
    except DynqError as exc:
        fail(exc)
    horizon = _consistency_horizon(out)
    if as_json:
        click.echo(json.dumps(dict(out, cluster={"consistency_horizon_s": horizon}) if not node_name else out,
                              indent=2, sort_keys=True))
        return
    for name, values in out.items():
        click.echo(f"[{name}]")
        ae = values.get("anti_entropy")
        if isinstance(ae, dict):  # per-partition detail only in --json
            values = dict(values, anti_entropy={k: v for k, v in ae.items() if k != "partitions"})
        for key, value in _flatten(values):
            click.echo(f"  {key:<32} {value}")
    if not node_name:
        click.echo("[cluster]")
        click.echo(f"  {'consistency_horizon_s':<32} {'never' if horizon is None else horizon}")


def _consistency_horizon(stats_by_node: dict[str, Any]) -> float | None:
    """Age in seconds of the partition whose last complete anti-entropy pass (by any node)
    is the oldest; None if some partition never had one."""
    import time

    newest: dict[str, int] = {}
    for values in stats_by_node.values():
        parts = (values.get("anti_entropy") or {}).get("partitions") or {}
        for partition, info in parts.items():
            newest[partition] = max(newest.get(partition, 0), int(info.get("last_exchange_ms", 0)))
    if not newest or min(newest.values()) == 0:
        return None
    return round(time.time() - min(newest.values()) / 1000, 1)


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested stats as dotted keys (``latency.put.p99_ms_le``), for the human table."""
    rows: list[tuple[str, Any]] = []
    for key, value in sorted(values.items()):
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value if value != {} else "-"))
    return rows


@click.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
@bucket_option
@seed_option
@timeout_option
def inspect(key: str, as_json: bool, bucket: str | None, seed: tuple[str, ...], timeout: float) -> None:
    """Show what every node of KEY's preference list holds, its hints, and whether the
    primaries agree. Exit code 0: they agree; 1: they disagree; 3: a primary is unreachable."""
    from dynq_client import buckets
    from dynq_client.versions import decode_reply_object

    from .datatypes import describe_state

    rows: list[dict[str, Any]] = []
    try:
        with connect(seed, timeout) as db:
            assert db.table is not None
            props = db.bucket(bucket).props() if bucket else None
            request: dict[str, Any] = {"k": key.encode()}
            if props is not None:
                request["bk"] = props.name
                plist = db.table.ring.preference_list_for(buckets.storage_key(props.name, key.encode()), props.n)
            else:
                plist = db.table.ring.preference_list_for(key.encode())
            for name in plist.primaries + plist.fallbacks:
                row: dict[str, Any] = {"node": name, "role": "primary" if name in plist.primaries else "fallback"}
                try:
                    body = db.call(name, "inspect", request, retry=False)
                    if describe_state(body.get("ob")) is not None:  # a data type's state, not an object
                        row["hints"] = body.get("hints", [])
                        row["object"] = describe_state(body.get("ob"))
                        rows.append(row)
                        continue
                    obj = decode_reply_object(body)
                    row["hints"] = body.get("hints", [])
                    row["object"] = None if obj is None else {
                        "clock": obj.clock,
                        "siblings": [{"dot": f"{s.actor}:{s.counter}", "timestamp_ms": s.timestamp_ms,
                                      "tombstone": s.value is None, "expires_ms": s.expires_ms or None,
                                      "value": None if s.value is None else show_value(s.value)[:80]}
                                     for s in obj.siblings],
                    }
                except DynqError as exc:
                    row["error"] = str(exc)
                rows.append(row)
    except DynqError as exc:
        fail(exc)
    now_ms = int(time.time() * 1000)
    reachable = all("error" not in r for r in rows if r["role"] == "primary")
    primary_states = {json.dumps(r.get("object"), sort_keys=True) for r in rows if r["role"] == "primary" and "error" not in r}
    agree = reachable and len(primary_states) == 1
    if as_json:
        click.echo(json.dumps({"key": key, "bucket": bucket or buckets.DEFAULT, "partition": plist.partition,
                               "n": len(plist.primaries), "agree": agree, "replicas": rows}, indent=2))
    else:
        click.echo(f"key {key!r}  bucket {bucket or buckets.DEFAULT}  partition {plist.partition}  "
                   f"n={len(plist.primaries)}")
        for r in rows:
            head = f"  {r['node']:<10} {r['role']:<8}"
            if "error" in r:
                click.echo(f"{head} unreachable: {r['error']}")
                continue
            hints = f"  hints for: {', '.join(r['hints'])}" if r.get("hints") else ""
            obj = r["object"]
            if obj is None:
                click.echo(f"{head} (nothing){hints}")
                continue
            if "datatype" in obj:  # a data type's state
                vv = ", ".join(f"{a}:{c}" for a, c in sorted(obj["context"]["vv"].items()))
                click.echo(f"{head} {obj['datatype']} context [{vv}] +{len(obj['context']['cloud'])} "
                           f"{obj['dots']} dots{hints}")
                click.echo(f"{'':22}{obj['value']!r:.200}{_expiry(obj.get('expires_ms'), now_ms)}")
                continue
            clock = ", ".join(f"{a}:{c}" for a, c in sorted(obj["clock"].items()))
            click.echo(f"{head} clock [{clock}]{hints}")
            for sib in obj["siblings"]:
                what = "TOMBSTONE" if sib["tombstone"] else repr(sib["value"])
                click.echo(f"{'':22}{sib['dot']:<24} {what}{_expiry(sib.get('expires_ms'), now_ms)}")
        if agree:
            click.echo("primaries agree")
        elif len(primary_states) > 1:
            click.echo("primaries DISAGREE (read repair or anti-entropy will converge them)")
        else:
            click.echo("agreement UNKNOWN: a primary is unreachable")
    sys.exit(0 if agree else 1 if len(primary_states) > 1 else 3)


@click.command()
@click.option("--node", "node_name", required=True, help="Node whose database to back up.")
@click.option("--to", "path", required=True, help="Absolute path of the backup file, on that node's machine.")
@seed_option
@timeout_option
def backup(node_name: str, path: str, seed: tuple[str, ...], timeout: float) -> None:
    """Online, consistent copy of one node's database (SQLite backup API), made in slices
    while the node keeps serving. Under systemd the path must be writable by the unit:
    /var/backups/dynq (ReadWritePaths in dynq@.service) or the node's state directory.

    Restore: stop the node, replace DATA_DIR/dynq.db with the file (delete dynq.db-wal and
    dynq.db-shm), start the node. Writes it missed since the backup come back through hinted
    handoff, read repair and anti-entropy; its actor identity is the one in the backup.
    """
    try:
        with connect(seed, max(timeout, 60.0)) as db:
            body = db.call(node_name, "backup", {"path": path})
    except DynqError as exc:
        fail(exc)
    click.echo(f"ok: {body['keys']} keys, {body['pages']} pages -> {body['path']} on {node_name}")


def _expiry(expires_ms: int | None, now_ms: int) -> str:
    """How `dynq inspect` shows a sibling's expiry: when, and whether it has passed."""
    if not expires_ms:
        return ""
    when = datetime.fromtimestamp(expires_ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    left = (expires_ms - now_ms) / 1000
    return f"  expires {when} UTC ({'in %.1f s' % left if left > 0 else 'EXPIRED %.1f s ago' % -left})"
