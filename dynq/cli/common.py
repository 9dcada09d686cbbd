"""What every `dynq` command shares: the seeds to contact, the keys to connect with, how
an error ends a command."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from dynq_client.client import Client
from dynq_client.protocol import show_bytes
from dynq_client.security import DEFAULT_KEYS_DIR, CurveKeys


DEFAULT_SEED = "tcp://127.0.0.1:7100"


def seeds_of(seed: tuple[str, ...]) -> list[str]:
    if seed:
        return list(seed)
    env = os.environ.get("DYNQ_SEEDS", "")
    return [s.strip() for s in env.split(",") if s.strip()] or [DEFAULT_SEED]


seed_option = click.option(
    "--seed", multiple=True, help=f"Address of any node (repeatable; env DYNQ_SEEDS; default {DEFAULT_SEED})."
)
timeout_option = click.option("--timeout", default=5.0, show_default=True, help="Seconds per request.")


CURVE_KEYS: list[CurveKeys] = []  # set by the group options: the keys every command connects with


def connect(seed: tuple[str, ...], timeout: float) -> Client:
    return Client(seeds_of(seed), timeout=timeout, curve=CURVE_KEYS[0] if CURVE_KEYS else None, keys=None)


def load_curve(key: str | None, server_key: str | None, keys: str | None) -> CurveKeys | None:
    """Keys from --key/--server-key, or --keys DIR (DIR/admin.key_secret and DIR/cluster.key),
    or ./dynq-data/keys when it exists (what `dynq up` writes); None: no CURVE. The same
    search as the client library's (``find_keys``), with the operator key "admin"."""
    if keys is None and key is None and (DEFAULT_KEYS_DIR / "admin.key_secret").exists():
        keys = str(DEFAULT_KEYS_DIR)
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


def fail(exc: Exception) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


show_value = show_bytes  # keys and values as the CLI prints them
