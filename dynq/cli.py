"""The `dynq` command: run nodes, a local cluster, and talk to a cluster. A thin layer over
library calls; every command that talks to a cluster takes ``--seed`` (env ``DYNQ_SEEDS``,
comma-separated)."""

from __future__ import annotations

import base64
import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from dynq_client.client import Client
from dynq_client.errors import DynqError

from .config import ConfigError, load_config
from .logs import setup_logging

DEFAULT_SEED = "tcp://127.0.0.1:7100"


def _seeds(seed: tuple[str, ...]) -> list[str]:
    if seed:
        return list(seed)
    env = os.environ.get("DYNQ_SEEDS", "")
    return [s.strip() for s in env.split(",") if s.strip()] or [DEFAULT_SEED]


seed_option = click.option(
    "--seed", multiple=True, help=f"Address of any node (repeatable; env DYNQ_SEEDS; default {DEFAULT_SEED})."
)
timeout_option = click.option("--timeout", default=5.0, show_default=True, help="Seconds per request.")


def _client(seed: tuple[str, ...], timeout: float) -> Client:
    return Client(_seeds(seed), timeout=timeout)


def _fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


def _show_value(value: bytes) -> str:
    try:
        text = value.decode("utf-8")
        if text.isprintable():
            return text
    except UnicodeDecodeError:
        pass
    return "base64:" + base64.b64encode(value).decode()


@click.group()
@click.version_option(package_name="dynq")
def main() -> None:
    """dynq: a Dynamo-style distributed key-value store."""


# --- nodes ------------------------------------------------------------------------------


@main.group()
def node() -> None:
    """Run a node."""


@node.command("start")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Node TOML file.")
def node_start(config_path: str) -> None:
    """Run one node in the foreground until SIGTERM (what systemd runs)."""
    from .node import run_node

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(78)  # EX_CONFIG: systemd will not restart-loop on a bad config
    setup_logging(config.log_level, config.log_format, config.name)
    try:
        run_node(config)
    except ConfigError as exc:
        click.echo(f"config error: {exc}", err=True)
        sys.exit(78)


@main.group("config")
def config_group() -> None:
    """Node configuration files."""


@config_group.command("check")
@click.argument("path", type=click.Path(dir_okay=False))
def config_check(path: str) -> None:
    """Validate a node config; exit non-zero with the bad key named."""
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(1)
    click.echo(f"ok: node {cfg.name} on {cfg.listen}, {len(cfg.members)} members, N={cfg.n} Q={cfg.q} R={cfg.r} W={cfg.w}")


@main.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 32), help="Number of nodes.")
@click.option("--data-dir", default="./dynq-data", show_default=True, type=click.Path(file_okay=False))
@click.option("--base-port", default=7100, show_default=True, type=click.IntRange(1024, 65000),
              help="Port of the first node; node i listens on base-port + 10*i.")
@click.option("--host", default="127.0.0.1", show_default=True)
def up(nodes: int, data_dir: str, base_port: int, host: str) -> None:
    """Start a local cluster, one process per node, until Ctrl-C."""
    from .localcluster import run_up

    sys.exit(run_up(nodes, Path(data_dir), base_port, host, echo=click.echo))


# --- data -------------------------------------------------------------------------------


@main.command()
@click.argument("key")
@click.option("--r", type=int, default=None, help="Read quorum (default: the cluster's).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@seed_option
@timeout_option
def get(key: str, r: int | None, as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Read KEY: every sibling value, and the context to write back with."""
    try:
        with _client(seed, timeout) as db:
            result = db.get(key, r=r)
    except DynqError as exc:
        _fail(exc)
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
        click.echo(_show_value(value))
    if len(result.values) > 1:
        click.echo(f"({len(result.values)} siblings: write the resolved value back with --context)", err=True)
    click.echo(f"context: {context}", err=True)
    if not result.found:
        sys.exit(1)


def _context(context: str | None) -> bytes | None:
    if context is None:
        return None
    try:
        return base64.b64decode(context, validate=True)
    except ValueError as exc:
        raise click.BadParameter(f"not base64: {exc}", param_hint="--context") from exc


@main.command()
@click.argument("key")
@click.argument("value")
@click.option("--context", default=None, help="Context printed by `dynq get` (base64).")
@click.option("--w", type=int, default=None, help="Write quorum (default: the cluster's).")
@seed_option
@timeout_option
def put(key: str, value: str, context: str | None, w: int | None, seed: tuple[str, ...], timeout: float) -> None:
    """Write VALUE (UTF-8) under KEY."""
    try:
        with _client(seed, timeout) as db:
            db.put(key, value.encode(), context=_context(context), w=w)
    except DynqError as exc:
        _fail(exc)
    click.echo("ok")


@main.command()
@click.argument("key")
@click.option("--context", default=None, help="Context printed by `dynq get` (base64).")
@click.option("--w", type=int, default=None, help="Write quorum (default: the cluster's).")
@seed_option
@timeout_option
def delete(key: str, context: str | None, w: int | None, seed: tuple[str, ...], timeout: float) -> None:
    """Delete KEY (writes a tombstone)."""
    try:
        with _client(seed, timeout) as db:
            db.delete(key, context=_context(context), w=w)
    except DynqError as exc:
        _fail(exc)
    click.echo("ok")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def ring(as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Show the ring: epoch, members and the partitions each owns."""
    try:
        with _client(seed, timeout) as db:
            table = db.table
    except DynqError as exc:
        _fail(exc)
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


@main.command()
@click.option("--node", "node_name", default=None, help="Only this node (default: every member).")
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def stats(node_name: str | None, as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Counters of each node."""
    out: dict[str, Any] = {}
    try:
        with _client(seed, timeout) as db:
            assert db.table is not None
            names = [node_name] if node_name else [m.name for m in db.table.ring.members]
            for name in names:
                try:
                    out[name] = db.call(name, "stats")
                except DynqError as exc:
                    out[name] = {"error": str(exc)}
    except DynqError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(out, indent=2, sort_keys=True))
        return
    for name, values in out.items():
        click.echo(f"[{name}]")
        for key, value in _flatten(values):
            click.echo(f"  {key:<32} {value}")


def _flatten(values: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Nested stats as dotted keys (``latency.put.p99_ms_le``), for the human table."""
    rows: list[tuple[str, Any]] = []
    for key, value in sorted(values.items()):
        if isinstance(value, dict) and value:
            rows += _flatten(value, f"{prefix}{key}.")
        else:
            rows.append((f"{prefix}{key}", value if value != {} else "-"))
    return rows


@main.command()
@click.argument("key")
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def inspect(key: str, as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Show what every node of KEY's preference list holds, its hints, and whether the
    primaries agree. Exit code 0: they agree; 1: they disagree; 3: a primary is unreachable."""
    from dynq_client.versions import decode_reply_object

    rows: list[dict[str, Any]] = []
    try:
        with _client(seed, timeout) as db:
            assert db.table is not None
            plist = db.table.ring.preference_list_for(key.encode())
            for name in plist.primaries + plist.fallbacks:
                row: dict[str, Any] = {"node": name, "role": "primary" if name in plist.primaries else "fallback"}
                try:
                    body = db.call(name, "inspect", {"k": key.encode()}, retry=False)
                    obj = decode_reply_object(body)
                    row["hints"] = body.get("hints", [])
                    row["object"] = None if obj is None else {
                        "clock": obj.clock,
                        "siblings": [{"dot": f"{s.actor}:{s.counter}", "timestamp_ms": s.timestamp_ms,
                                      "tombstone": s.value is None,
                                      "value": None if s.value is None else _show_value(s.value)[:80]}
                                     for s in obj.siblings],
                    }
                except DynqError as exc:
                    row["error"] = str(exc)
                rows.append(row)
    except DynqError as exc:
        _fail(exc)
    reachable = all("error" not in r for r in rows if r["role"] == "primary")
    primary_states = {json.dumps(r.get("object"), sort_keys=True) for r in rows if r["role"] == "primary" and "error" not in r}
    agree = reachable and len(primary_states) == 1
    if as_json:
        click.echo(json.dumps({"key": key, "partition": plist.partition, "agree": agree, "replicas": rows}, indent=2))
    else:
        click.echo(f"key {key!r}  partition {plist.partition}")
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
            clock = ", ".join(f"{a}:{c}" for a, c in sorted(obj["clock"].items()))
            click.echo(f"{head} clock [{clock}]{hints}")
            for sib in obj["siblings"]:
                what = "TOMBSTONE" if sib["tombstone"] else repr(sib["value"])
                click.echo(f"{'':22}{sib['dot']:<24} {what}")
        if agree:
            click.echo("primaries agree")
        elif len(primary_states) > 1:
            click.echo("primaries DISAGREE (read repair or anti-entropy will converge them)")
        else:
            click.echo("agreement UNKNOWN: a primary is unreachable")
    sys.exit(0 if agree else 1 if len(primary_states) > 1 else 3)


@main.command()
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
        with _client(seed, max(timeout, 60.0)) as db:
            body = db.call(node_name, "backup", {"path": path})
    except DynqError as exc:
        _fail(exc)
    click.echo(f"ok: {body['keys']} keys, {body['pages']} pages -> {body['path']} on {node_name}")


@main.group()
def cluster() -> None:
    """The cluster as a whole."""


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def cluster_status(as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Every node at a glance; exits 1 when the cluster is degraded (a node unreachable, or
    a node that cannot reach a peer), for scripts."""
    rows: list[dict[str, Any]] = []
    try:
        with _client(seed, timeout) as db:
            assert db.table is not None
            ring_ = db.table.ring
            counts = ring_.owned_counts()
            for m in ring_.members:
                row: dict[str, Any] = {"node": m.name, "address": m.address, "zone": m.zone, "weight": m.weight,
                                       "share": round(100 * counts[m.name] / ring_.q, 1)}
                try:
                    ping = db.call(m.name, "ping", {"peers": True}, retry=False)
                    stats_ = db.call(m.name, "stats", retry=False)
                    others = {o.name for o in ring_.members if o.name != m.name}
                    row.update(status="up", unreachable_peers=sorted(others - set(ping["reachable"])),
                               hints_pending=stats_["hints_pending_total"], keys=stats_["keys"],
                               epoch=stats_["epoch"])
                except DynqError as exc:
                    row.update(status="down", error=str(exc))
                rows.append(row)
    except DynqError as exc:
        _fail(exc)
    degraded = any(r["status"] != "up" or r.get("unreachable_peers") for r in rows)
    if as_json:
        click.echo(json.dumps({"degraded": degraded, "nodes": rows}, indent=2))
    else:
        click.echo(f"{'node':<10} {'address':<26} {'status':<6} {'share':>6} {'keys':>8} {'hints':>7}  notes")
        for r in rows:
            notes = r.get("error", "")
            if r.get("unreachable_peers"):
                notes = "cannot reach " + ", ".join(r["unreachable_peers"])
            click.echo(f"{r['node']:<10} {r['address']:<26} {r['status']:<6} {r['share']:>5}% "
                       f"{r.get('keys', '-'):>8} {r.get('hints_pending', '-'):>7}  {notes}")
        click.echo("DEGRADED" if degraded else "healthy")
    sys.exit(1 if degraded else 0)



@main.command()
@click.option("--workload", type=click.Choice(["a", "b", "c", "f"], case_sensitive=False), default="a",
              show_default=True, help="YCSB core workload: a 50/50 read/update, b 95/5, c read only, f read-modify-write.")
@click.option("--records", default=100_000, show_default=True, type=click.IntRange(1), help="Keys loaded and used.")
@click.option("--duration", default=30.0, show_default=True, type=click.FloatRange(min=0.1), help="Seconds to run.")
@click.option("--concurrency", default=32, show_default=True, type=click.IntRange(1, 10_000), help="Requests in flight.")
@click.option("--value-size", default=1024, show_default=True, type=click.IntRange(0), help="Bytes per value.")
@click.option("--r", type=int, default=None, help="Read quorum (default: the cluster's).")
@click.option("--w", type=int, default=None, help="Write quorum (default: the cluster's).")
@click.option("--distribution", type=click.Choice(["zipfian", "uniform"]), default="zipfian", show_default=True,
              help="Key popularity: YCSB's scrambled zipfian (theta 0.99) or uniform.")
@click.option("--load/--no-load", default=True, show_default=True, help="Insert every record first.")
@click.option("--operations", type=click.IntRange(1), default=None, help="Stop after this many operations.")
@click.option("--bench-seed", type=int, default=None, help="Random seed of the key choice and op mix.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable result on stdout.")
@seed_option
@timeout_option
def bench(workload: str, records: int, duration: float, concurrency: int, value_size: int, r: int | None,
          w: int | None, distribution: str, load: bool, operations: int | None, bench_seed: int | None,
          as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Run a YCSB core workload against a running cluster: ops/s and latency p50/p99/p99.9
    per operation, with a live progress line on stderr."""
    import asyncio
    import time

    from .bench import BenchConfig, run_bench

    config = BenchConfig(workload=workload.lower(), records=records, duration=duration, concurrency=concurrency,
                         value_size=value_size, r=r, w=w, distribution=distribution, load=load,
                         max_ops=operations, timeout=timeout, seed=bench_seed)
    tty = sys.stderr.isatty()
    last = [0.0]

    def progress(line: str) -> None:  # a live line on a terminal, a line every 5 s in a log
        now = time.monotonic()
        if tty or now - last[0] >= 5.0:
            last[0] = now
            click.echo(("\r\033[K" + line) if tty else line, err=True, nl=not tty)

    try:
        result = asyncio.run(run_bench(_seeds(seed), config, progress))
    except DynqError as exc:
        _fail(exc)
    if tty:
        click.echo("", err=True)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.text())
    if result.total_ops == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
