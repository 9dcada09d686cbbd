"""The `dynq` command: run nodes, a local cluster, and talk to a cluster. A thin layer over
library calls; every command that talks to a cluster takes ``--seed`` (env ``DYNQ_SEEDS``,
comma-separated)."""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from dynq_client.client import Client
from dynq_client.errors import DynqError

from .config import ConfigError, load_config

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
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
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
        for key, value in sorted(values.items()):
            click.echo(f"  {key:<20} {value}")


if __name__ == "__main__":
    main()
