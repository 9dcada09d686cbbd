"""`dynq keys`: generate CURVE keypairs, register and revoke peer keys on a running cluster;
`dynq keys BUCKET [--prefix P]` lists a bucket's keys (as `dynq bucket keys`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from dynq_client.errors import DynqError

from .common import connect, fail, seed_option, timeout_option


class KeysGroup(click.Group):
    """`dynq keys generate|register|revoke ...` manage CURVE keys; any other first word is a
    bucket whose keys to list (`dynq keys carts --prefix cart:`). A bucket that happens to
    be called generate, register or revoke is listed with `dynq bucket keys NAME`."""

    def resolve_command(self, ctx: click.Context, args: list[str]
                        ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            from .buckets import keys as bucket_keys

            return "keys", bucket_keys, args
        return super().resolve_command(ctx, args)


@click.group("keys", cls=KeysGroup)
def keys_group() -> None:
    """CurveZMQ keys (generate, register, revoke); or `dynq keys BUCKET [--prefix P]`: the
    live keys of a bucket, one per line."""


@keys_group.command("generate")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Directory to write into.")
@click.option("--name", required=True, help="Key name: NAME.key (public) and NAME.key_secret (mode 0600).")
def keys_generate(out: str, name: str) -> None:
    """Generate a CURVE keypair. Put NAME.key in the nodes' peer_keys (nodes, operators) or
    client_keys (applications) directory and send the nodes SIGHUP (systemctl reload)."""
    from ..security import generate_keys

    target = Path(out) / f"{name}.key_secret"
    if target.exists():
        click.echo(f"error: {target} exists; not overwriting a key", err=True)
        sys.exit(1)
    public, secret = generate_keys(Path(out), name)
    click.echo(f"public: {public}\nsecret: {secret} (mode 0600)")


def register_key(name: str, public_file: Path, seed: tuple[str, ...], timeout: float) -> list[str]:
    """Register NAME's public key with every member of the cluster at --seed and with the
    seeds themselves (a node not yet a member); the nodes that could not be reached."""
    from dynq_client.security import load_public_key

    body = {"name": name, "key": load_public_key(public_file).decode()}
    missed: list[str] = []
    with connect(seed, timeout) as db:
        assert db.table is not None
        members = {m.name: m.address for m in db.table.ring.members}
        for member, address in sorted(members.items()):
            try:
                db.call(member, "key_register", body)
                click.echo(f"  {member} ({address}): {name} allowed")
            except DynqError as exc:
                click.echo(f"  {member} ({address}): NOT registered: {exc}", err=True)
                missed.append(member)
    return missed


@keys_group.command("register")
@click.argument("name")
@click.argument("public_key", type=click.Path(dir_okay=False, exists=True))
@seed_option
@timeout_option
def keys_register(name: str, public_key: str, seed: tuple[str, ...], timeout: float) -> None:
    """Allow the node NAME (its PUBLIC_KEY file, NAME.key) on every member of the cluster,
    at once and without a restart: each stores it under DATA_DIR/registered-peers and reloads.
    Needs an operator key (--key/--keys). `dynq config init --keys` runs this itself."""
    try:
        missed = register_key(name, Path(public_key), seed, timeout)
    except (DynqError, ValueError) as exc:
        fail(exc)
    if missed:
        click.echo(f"error: not registered on {', '.join(missed)}; run this again once they are up", err=True)
        sys.exit(1)


@keys_group.command("revoke")
@click.argument("name")
@seed_option
@timeout_option
def keys_revoke(name: str, seed: tuple[str, ...], timeout: float) -> None:
    """Forget the registered key NAME on every member (from its next message). A key file in
    a node's peer_keys directory is the administrator's: remove it there and reload."""
    missed: list[str] = []
    try:
        with connect(seed, timeout) as db:
            assert db.table is not None
            for member in sorted(m.name for m in db.table.ring.members):
                try:
                    body = db.call(member, "key_revoke", {"name": name})
                    click.echo(f"  {member}: {'revoked' if body.get('revoked') else 'held no registered key'} {name}")
                except DynqError as exc:
                    click.echo(f"  {member}: NOT revoked: {exc}", err=True)
                    missed.append(member)
    except DynqError as exc:
        fail(exc)
    if missed:
        click.echo(f"error: not revoked on {', '.join(missed)}", err=True)
        sys.exit(1)
