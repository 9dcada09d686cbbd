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
from dynq_client.errors import DynqError, Unavailable
from dynq_client.security import CurveKeys

from .config import ConfigError, load_config
from .ops.logs import setup_logging

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


_CURVE: list[CurveKeys] = []  # set by the group options: the keys every command connects with


def _client(seed: tuple[str, ...], timeout: float) -> Client:
    return Client(_seeds(seed), timeout=timeout, curve=_CURVE[0] if _CURVE else None)


def _load_curve(key: str | None, server_key: str | None, keys: str | None) -> CurveKeys | None:
    """Keys from --key/--server-key, or --keys DIR (DIR/admin.key_secret and DIR/cluster.key),
    or ./dynq-data/keys when it exists (what `dynq up` writes); None: no CURVE."""
    if keys is None and key is None and Path("dynq-data/keys/admin.key_secret").exists():
        keys = "dynq-data/keys"
    if keys is not None:
        key = key or str(Path(keys) / "admin.key_secret")
        server_key = server_key or str(Path(keys) / "cluster.key")
    if key is None and server_key is None:
        return None
    if key is None or server_key is None:
        raise click.UsageError("CURVE needs both --key (your .key_secret) and --server-key (the cluster's .key)")
    try:
        return CurveKeys.from_files(key, server_key)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc


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
@click.option("--key", envvar="DYNQ_KEY", default=None, help="Your keypair (.key_secret) for a CURVE cluster.")
@click.option("--server-key", envvar="DYNQ_SERVER_KEY", default=None, help="The cluster's public key (.key).")
@click.option("--keys", envvar="DYNQ_KEYS", default=None, type=click.Path(file_okay=False),
              help="A keys directory as `dynq up` writes it (admin.key_secret, cluster.key); "
                   "default ./dynq-data/keys if it exists.")
def main(key: str | None, server_key: str | None, keys: str | None) -> None:
    """dynq: a Dynamo-style distributed key-value store."""
    _CURVE.clear()
    curve = _load_curve(key, server_key, keys)
    if curve is not None:
        _CURVE.append(curve)


@main.group("keys")
def keys_group() -> None:
    """CurveZMQ keys."""


@keys_group.command("generate")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option("--name", required=True, help="Key name: NAME.key (public) and NAME.key_secret (mode 0600).")
def keys_generate(out: str, name: str) -> None:
    """Generate a CURVE keypair. Put NAME.key in the nodes' peer_keys (nodes, operators) or
    client_keys (applications) directory and send the nodes SIGHUP (systemctl reload)."""
    from .security import generate_keys

    target = Path(out) / f"{name}.key_secret"
    if target.exists():
        click.echo(f"error: {target} exists; not overwriting a key", err=True)
        sys.exit(1)
    public, secret = generate_keys(Path(out), name)
    click.echo(f"public: {public}\nsecret: {secret} (mode 0600)")


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


@config_group.command("init")
@click.option("--name", required=True, help="Node name (letters, digits, - _ .).")
@click.option("--data-dir", required=True, type=click.Path(file_okay=False), help="Where the node keeps its database.")
@click.option("--base-port", required=True, type=click.IntRange(1024, 65534),
              help="Request port; the gossip port is the next one.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the node listens on and advertises.")
@click.option("--seed", "seeds", multiple=True, help="Address of a node of the cluster to join (repeatable).")
@click.option("--zone", default="", help="Failure domain (rack, room).")
@click.option("--weight", default=1, show_default=True, type=click.IntRange(1, 1000))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
def config_init(name: str, data_dir: str, base_port: int, host: str, seeds: tuple[str, ...], zone: str,
                weight: int, out: str, force: bool) -> None:
    """Write a commented config for a new node; then `dynq node start --config OUT` and
    `dynq cluster join`."""
    from .config import parse_config, render_config

    listen = f"tcp://{host}:{base_port}"
    text = render_config(name=name, listen=listen, data_dir=str(Path(data_dir).resolve()), members=[],
                         zone=zone, weight=weight, seeds=list(seeds))
    import tomllib

    try:
        parse_config(tomllib.loads(text), out)
    except ConfigError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(1)
    path = Path(out)
    if path.exists() and not force:
        click.echo(f"error: {out} exists (use --force to overwrite)", err=True)
        sys.exit(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    click.echo(f"wrote {out}: node {name} on {listen} (gossip on port {base_port + 1})")
    click.echo(f"next: dynq node start --config {out}")
    if seeds:
        click.echo(f"then: dynq cluster join {seeds[0]} --seed {listen}")


@main.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 32), help="Number of nodes.")
@click.option("--data-dir", default="./dynq-data", show_default=True, type=click.Path(file_okay=False))
@click.option("--base-port", default=7100, show_default=True, type=click.IntRange(1024, 65000),
              help="Port of the first node; node i listens on base-port + 10*i.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--security", type=click.Choice(["curve", "none"]), default="curve", show_default=True,
              help="curve: keys generated into DATA_DIR/keys; the CLI finds them there.")
def up(nodes: int, data_dir: str, base_port: int, host: str, security: str) -> None:
    """Start a local cluster, one process per node, until Ctrl-C."""
    from .localcluster import run_up

    sys.exit(run_up(nodes, Path(data_dir), base_port, host, echo=click.echo, security=security))


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


def _seed_call(seed: tuple[str, ...], op: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Send ``op`` to the first seed that answers (it need not be a member yet)."""
    errors: list[str] = []
    for address in _seeds(seed):
        with _client((address,), timeout) as db:
            try:
                return db.call_address(address, op, body)
            except DynqError as exc:
                if not isinstance(exc, Unavailable) or "not connected" not in exc.message:
                    raise
                errors.append(f"{address}: {exc}")
    raise Unavailable("no seed answered: " + "; ".join(errors))


@cluster.command("join")
@click.argument("cluster_address")
@seed_option
@timeout_option
def cluster_join(cluster_address: str, seed: tuple[str, ...], timeout: float) -> None:
    """Stage the node at --seed (a new, empty node) joining the cluster CLUSTER_ADDRESS
    belongs to. Review with `dynq cluster plan`, apply with `dynq cluster commit`."""
    try:
        body = _seed_call(seed, "cluster_join", {"cluster": cluster_address}, timeout)
    except DynqError as exc:
        _fail(exc)
    click.echo(f"staged: join of the node at {_seeds(seed)[0]}; cluster members {', '.join(body['members'])} "
               f"(claimant {body['claimant']})")
    click.echo("next: dynq cluster plan, then dynq cluster commit")


@cluster.command("leave")
@click.argument("node_name", required=False)
@seed_option
@timeout_option
def cluster_leave(node_name: str | None, seed: tuple[str, ...], timeout: float) -> None:
    """Stage NODE (default: the node at --seed) leaving; it hands off every partition
    after `dynq cluster commit`, then exits."""
    try:
        body = _seed_call(seed, "cluster_leave", {"node": node_name} if node_name else {}, timeout)
    except DynqError as exc:
        _fail(exc)
    click.echo(f"staged: leave of {', '.join(body['staged']['leaves'])}")
    click.echo("next: dynq cluster plan, then dynq cluster commit")


@cluster.command("plan")
@click.option("--json", "as_json", is_flag=True)
@click.option("--verbose", "-v", is_flag=True, help="List every partition transfer.")
@seed_option
@timeout_option
def cluster_plan(as_json: bool, verbose: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Show what committing the staged changes would do: which partitions move from whom
    to whom, and the resulting balance."""
    try:
        body = _seed_call(seed, "cluster_plan", {}, timeout)
    except DynqError as exc:
        _fail(exc)
    if as_json:
        click.echo(json.dumps(body, indent=2, default=str))
        return
    if body.get("empty"):
        click.echo("nothing staged" + (f"; a change is in progress ({body['in_progress']} transfers left)"
                                       if body.get("in_progress") else ""))
        return
    staged = body["staged"]
    for raw in staged["joins"]:
        click.echo(f"join   {raw[0]} at {raw[1]}" + (f" zone {raw[2]}" if raw[2] else "") + f" weight {raw[3]}")
    for name in staged["leaves"]:
        click.echo(f"leave  {name}")
    transfers = body["transfers"]
    pairs: dict[tuple[str, str], list[int]] = {}
    for p_, src, dst in transfers:
        pairs.setdefault((src, dst), []).append(p_)
    click.echo(f"\n{len(transfers)} partition transfers (key partitions whose replicas change):")
    for (src, dst), parts in sorted(pairs.items()):
        shown = ", ".join(map(str, parts)) if verbose else f"{len(parts)} partitions"
        click.echo(f"  {src:>10} -> {dst:<10} {shown}")
    click.echo(f"\n{'node':<10} {'owned now':>10} {'after':>6}")
    for name, (before, after) in body["balance"].items():
        click.echo(f"{name:<10} {before:>10} {after:>6}")
    click.echo(f"\nplan {body['id']} (claimant {body['claimant']}): dynq cluster commit --plan {body['id']}")


@cluster.command("clear")
@seed_option
@timeout_option
def cluster_clear(seed: tuple[str, ...], timeout: float) -> None:
    """Drop the staged changes."""
    try:
        body = _seed_call(seed, "cluster_clear", {}, timeout)
    except DynqError as exc:
        _fail(exc)
    cleared = body["cleared"]
    click.echo(f"cleared: {len(cleared['joins'])} joins, {len(cleared['leaves'])} leaves")


@cluster.command("commit")
@click.option("--plan", "plan_id", default=None, help="Refuse unless the staged plan is still this one.")
@seed_option
@timeout_option
def cluster_commit(plan_id: str | None, seed: tuple[str, ...], timeout: float) -> None:
    """Apply the staged changes: partitions start moving (see `dynq cluster transfers`)."""
    try:
        body = _seed_call(seed, "cluster_commit", {"plan": plan_id} if plan_id else {}, timeout)
    except DynqError as exc:
        _fail(exc)
    click.echo(f"committed: cluster state version {body['version']}, {body['transfers']} partition transfers")
    if body["transfers"]:
        click.echo("follow them with: dynq cluster transfers --watch")


def _transfer_report(db: Client, seed: tuple[str, ...], timeout: float) -> dict[str, Any]:
    """The cluster's pending transfers and every member's progress on its own."""
    head = _seed_call(seed, "transfers", {}, timeout)
    state = _seed_call(seed, "cluster_state", {}, timeout)["state"]
    names = {m[0]: m[1] for m in state["ring"]["members"]}
    if state.get("next"):
        names.update({m[0]: m[1] for m in state["next"]["members"]})
    progress: list[dict[str, Any]] = []
    for name, address in sorted(names.items()):
        try:
            progress += db.call_address(address, "transfers", {})["progress"]
        except DynqError:
            pass
    return {"version": head["version"], "planned": head["planned"], "pending": head["pending"],
            "progress": progress}


@cluster.command("transfers")
@click.option("--watch", is_flag=True, help="Follow with a progress bar until the transition ends.")
@click.option("--max-wait", default=3600.0, show_default=True, help="Seconds --watch waits at most.")
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def cluster_transfers(watch: bool, max_wait: float, as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Partition transfers of the running membership change: pending ones, and what each
    running transfer has sent."""
    import time

    try:
        with _client(seed, timeout) as db:
            report = _transfer_report(db, seed, timeout)
            if as_json:
                click.echo(json.dumps(report, indent=2))
                return
            pending = report["pending"]
            running = [pr for pr in report["progress"] if pr["state"] != "done"]
            click.echo(f"cluster state {report['version']}: {len(pending)} of {report['planned']} transfers pending")
            for pr in running:
                p_, src, dst = pr["t"]
                total = max(pr["total"], 1)
                click.echo(f"  partition {p_:>5}: {src} -> {dst}  {pr['state']:<9} "
                           f"{pr['sent']}/{pr['total']} objects ({min(100, 100 * pr['sent'] // total)}%), "
                           f"{pr['bytes'] / 1e6:.1f} MB, {pr['retries']} retries")
            if not watch or not pending:
                return
            planned = max(report["planned"], len(pending))
            deadline = time.monotonic() + max_wait
            with click.progressbar(length=planned, label="transfers", show_pos=True) as bar:
                done = planned - len(pending)
                bar.update(done)
                while pending and time.monotonic() < deadline:
                    time.sleep(1.0)
                    pending = _seed_call(seed, "transfers", {}, timeout)["pending"]
                    now_done = planned - len(pending)
                    if now_done > done:
                        bar.update(now_done - done)
                        done = now_done
            if pending:
                click.echo(f"still {len(pending)} transfers pending after {max_wait:.0f}s", err=True)
                sys.exit(1)
            click.echo("transition complete")
    except DynqError as exc:
        _fail(exc)


@cluster.command("status")
@click.option("--json", "as_json", is_flag=True)
@seed_option
@timeout_option
def cluster_status(as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Every node at a glance (membership status, partitions owned, pending transfers,
    hints); exits 1 when the cluster is degraded (a node unreachable, or a node that cannot
    reach a peer), for scripts."""
    import time

    from .cluster.membership import ClusterState

    rows: list[dict[str, Any]] = []
    try:
        state = ClusterState.from_wire(_seed_call(seed, "cluster_state", {}, timeout)["state"])
        counts = state.ring.owned_counts()
        after = state.next_ring.owned_counts() if state.next_ring else counts
        with _client(seed, timeout) as db:
            for m in state.members:
                row: dict[str, Any] = {
                    "node": m.name, "address": m.address, "zone": m.zone, "weight": m.weight,
                    "membership": state.status_of(m.name), "partitions": counts.get(m.name, 0),
                    "partitions_after": after.get(m.name, 0),
                    "transfers": sum(1 for t in state.transfers if m.name in (t.source, t.target)),
                }
                try:
                    ping = db.call_address(m.address, "ping", {"peers": True})
                    stats_ = db.call_address(m.address, "stats", {})
                    others = {o.name for o in state.ring.members if o.name != m.name}
                    ae = stats_.get("anti_entropy", {})
                    exchanged = [v["last_exchange_ms"] for v in ae.get("partitions", {}).values()
                                 if v.get("last_exchange_ms")]
                    row.update(status="up", unreachable_peers=sorted(others - set(ping["reachable"])),
                               hints_pending=stats_["hints_pending_total"], keys=stats_["keys"],
                               epoch=stats_["epoch"], repair_horizon_s=ae.get("horizon_s"),
                               last_repair_ms=max(exchanged) if exchanged else None)
                except DynqError as exc:
                    row.update(status="down", error=str(exc))
                rows.append(row)
    except DynqError as exc:
        _fail(exc)
    degraded = any(r["status"] != "up" or r.get("unreachable_peers") for r in rows)
    if as_json:
        click.echo(json.dumps({"degraded": degraded, "version": state.version, "nodes": rows}, indent=2))
    else:
        click.echo(f"cluster state {state.version}, {len(state.ring.members)} members, Q={state.ring.q} "
                   f"N={state.ring.n}" + (f", {len(state.transfers)} of {state.planned} transfers pending"
                                         if state.transfers else ""))
        click.echo(f"{'node':<10} {'address':<26} {'zone':<6} {'wt':>3} {'member':<8} {'status':<6} "
                   f"{'parts':>9} {'xfers':>5} {'keys':>8} {'hints':>7} {'repaired':>9} {'horizon':>8}  notes")
        for r in rows:
            notes = r.get("error", "")
            if r.get("unreachable_peers"):
                notes = "cannot reach " + ", ".join(r["unreachable_peers"])
            parts = str(r["partitions"]) if r["partitions"] == r["partitions_after"] \
                else f"{r['partitions']}->{r['partitions_after']}"
            last = r.get("last_repair_ms")
            repaired = f"{max(0.0, time.time() - last / 1000):.0f}s ago" if last else "never"
            horizon = f"{r['repair_horizon_s']:.0f}s" if r.get("repair_horizon_s") is not None else "-"
            click.echo(f"{r['node']:<10} {r['address']:<26} {r['zone'] or '-':<6} {r['weight']:>3} "
                       f"{r['membership']:<8} {r['status']:<6} {parts:>9} {r['transfers']:>5} "
                       f"{r.get('keys', '-'):>8} {r.get('hints_pending', '-'):>7} "
                       f"{repaired if r['status'] == 'up' else '-':>9} {horizon:>8}  {notes}")
        click.echo("DEGRADED" if degraded else "healthy")
    sys.exit(1 if degraded else 0)


@main.command()
@click.option("--partition", "partition", type=int, default=None, help="Only this partition (default: all).")
@click.option("--node", "node_name", default=None,
              help="Run the passes on this node (default: the first reachable primary of each partition).")
@click.option("--rebuild", is_flag=True, help="First rebuild the trees of every replica from their data.")
@click.option("--json", "as_json", is_flag=True, help="One result per partition, as JSON.")
@seed_option
@timeout_option
def repair(partition: int | None, node_name: str | None, rebuild: bool, as_json: bool,
           seed: tuple[str, ...], timeout: float) -> None:
    """Run anti-entropy now: for each partition, one node exchanges Merkle trees with every
    other primary and repairs what differs (then reaps tombstones past their grace).
    Exit code 0: every partition reached all its primaries; 1: some did not (a primary
    unreachable or an exchange failed); 2: no cluster or bad arguments."""
    results: list[dict[str, Any]] = []
    try:
        with _client(seed, max(timeout, 600.0)) as db:
            assert db.table is not None
            ring_ = db.table.ring
            if partition is not None and not 0 <= partition < ring_.q:
                raise click.BadParameter(f"must be in 0..{ring_.q - 1}", param_hint="--partition")
            if node_name is not None and node_name not in {m.name for m in ring_.members}:
                raise click.BadParameter(f"{node_name!r} is not a member", param_hint="--node")
            partitions = [partition] if partition is not None else list(range(ring_.q))
            if node_name is not None:
                partitions = [p for p in partitions if node_name in ring_.preference_list(p).primaries]
                if not partitions:
                    raise click.BadParameter(f"{node_name} is not a primary of partition {partition}",
                                             param_hint="--node")
            with click.progressbar(partitions, label="repairing", file=sys.stderr,
                                   item_show_func=lambda p: None if p is None else f"partition {p}") as bar:
                for p in bar:
                    results.append(_repair_partition(db, ring_.preference_list(p).primaries, p, node_name, rebuild))
    except DynqError as exc:
        _fail(exc)
    incomplete = [r for r in results if not r.get("complete")]
    if as_json:
        click.echo(json.dumps([{k: (v if k != "sample" else [_show_value(x) for x in v]) for k, v in r.items()}
                               for r in results], indent=2))
    else:
        total = {k: sum(int(r.get(k, 0)) for r in results)
                 for k in ("keys_repaired", "keys_sent", "keys_received", "bytes", "reaped", "tree_fixes")}
        click.echo(f"{len(results) - len(incomplete)}/{len(results)} partitions repaired: "
                   f"{total['keys_repaired']} keys differed ({total['keys_sent']} sent, {total['keys_received']} "
                   f"received), {total['bytes']} bytes, {total['reaped']} tombstones reaped, "
                   f"{total['tree_fixes']} tree rows fixed")
        for r in incomplete:
            why = r.get("error") or "; ".join([f"{n} unreachable" for n in r.get("skipped", [])]
                                              + [f"{n}: {e}" for n, e in r.get("failed", {}).items()])
            click.echo(f"  partition {r['partition']}: incomplete: {why}", err=True)
    sys.exit(1 if incomplete else 0)


def _repair_partition(db: Client, primaries: tuple[str, ...], partition: int, node_name: str | None,
                      rebuild: bool) -> dict[str, Any]:
    """One partition's pass on ``node_name`` or the first primary that takes it."""
    errors: dict[str, str] = {}
    for name in [node_name] if node_name else list(primaries):
        try:
            result: dict[str, Any] = db.call(name, "ae_repair", {"p": partition, "rebuild": rebuild}, retry=False)
            return result
        except DynqError as exc:
            errors[name] = str(exc)
    return {"partition": partition, "complete": False, "error": f"no primary ran the pass: {errors}"}

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
        result = asyncio.run(run_bench(_seeds(seed), config, progress, curve=_CURVE[0] if _CURVE else None))
    except DynqError as exc:
        _fail(exc)
    if tty:
        click.echo("", err=True)
    click.echo(json.dumps(result.to_json(), indent=2) if as_json else result.text())
    if result.total_ops == 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
