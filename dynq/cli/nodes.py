"""Running nodes: `dynq node start` (what systemd runs), `dynq config check|init`, `dynq up`."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dynq_client.errors import DynqError
from dynq_client.security import CurveKeys

from ..config import ConfigError, load_config
from ..ops.logs import setup_logging
from .common import CURVE_KEYS, timeout_option
from .keys import register_key


@click.group()
def node() -> None:
    """Run a node."""


@node.command("start")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False), help="Node TOML file.")
def node_start(config_path: str) -> None:
    """Run one node in the foreground until SIGTERM (what systemd runs)."""
    from ..node import run_node

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


@click.group("config")
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
@click.option("--keys", "keys_dir", default=None, type=click.Path(file_okay=False, exists=True),
              help="CURVE: the cluster's keys directory (cluster.key_secret, peers/, clients/, as `dynq up` "
                   "writes it, or a copy of a node's); generates NAME's keypair there and registers it "
                   "with the cluster at --seed.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write.")
@click.option("--force", is_flag=True, help="Overwrite --out if it exists.")
@timeout_option
def config_init(name: str, data_dir: str, base_port: int, host: str, seeds: tuple[str, ...], zone: str,
                weight: int, keys_dir: str | None, out: str, force: bool, timeout: float) -> None:
    """Write a commented config for a new node; then `dynq node start --config OUT` and
    `dynq cluster join`. With --keys, the node runs CURVE, and its key is allowed on the
    running cluster at once (an operator key is needed: --keys DIR holds admin.key_secret,
    or the global --key/--server-key)."""
    from ..config import parse_config, render_config
    from ..security import allow_key

    listen = f"tcp://{host}:{base_port}"
    path = Path(out)
    if path.exists() and not force:
        click.echo(f"error: {out} exists (use --force to overwrite)", err=True)
        sys.exit(1)
    keys = Path(keys_dir).resolve() if keys_dir is not None else None
    if keys is not None:
        if not (keys / "cluster.key_secret").exists():
            click.echo(f"error: {keys} holds no cluster.key_secret: --keys takes the cluster's keys directory "
                       "(copy it from a node of the cluster)", err=True)
            sys.exit(1)
        public = allow_key(keys, name, "peers")
        (keys / "clients").mkdir(exist_ok=True)
    text = render_config(name=name, listen=listen, data_dir=str(Path(data_dir).resolve()), members=[],
                         zone=zone, weight=weight, seeds=list(seeds),
                         keys_dir=str(keys) if keys is not None else None)
    import tomllib

    try:
        parse_config(tomllib.loads(text), out)
    except ConfigError as exc:
        click.echo(f"invalid: {exc}", err=True)
        sys.exit(1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    click.echo(f"wrote {out}: node {name} on {listen} (gossip on port {base_port + 1})"
               + (f", CURVE with keys in {keys}" if keys is not None else ""))
    missed: list[str] = []
    if keys is not None and seeds:
        if not CURVE_KEYS and (keys / "admin.key_secret").exists():
            CURVE_KEYS.append(CurveKeys.from_files(keys / "admin.key_secret", keys / "cluster.key"))
        click.echo(f"registering {name}'s key ({public}) with the cluster at {seeds[0]}:")
        try:
            missed = register_key(name, public, seeds, timeout)
        except (DynqError, ValueError) as exc:
            click.echo(f"error: could not register the key: {exc}", err=True)
            missed = ["?"]
    click.echo(f"next: dynq node start --config {out}")
    if seeds:
        click.echo(f"then: dynq cluster join {seeds[0]} --seed {listen}")
    if missed:
        click.echo(f"error: {name}'s key is not allowed everywhere yet: once the cluster is reachable, run "
                   f"dynq keys register {name} {public} --seed {seeds[0]}", err=True)
        sys.exit(1)


@click.command()
@click.option("--nodes", default=3, show_default=True, type=click.IntRange(1, 32), help="Number of nodes.")
@click.option("--data-dir", default="./dynq-data", show_default=True, type=click.Path(file_okay=False))
@click.option("--base-port", default=7100, show_default=True, type=click.IntRange(1024, 65000),
              help="Port of the first node; node i listens on base-port + 10*i.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--security", type=click.Choice(["curve", "none"]), default="curve", show_default=True,
              help="curve: keys generated into DATA_DIR/keys; the CLI finds them there.")
@click.option("--console/--no-console", default=True, show_default=True,
              help="Serve the admin API and web console of node i on 127.0.0.1, port base-port + 10*i + 2.")
def up(nodes: int, data_dir: str, base_port: int, host: str, security: str, console: bool) -> None:
    """Start a local cluster, one process per node, until Ctrl-C."""
    from ..localcluster import run_up

    sys.exit(run_up(nodes, Path(data_dir), base_port, host, echo=click.echo, security=security, http=console))
