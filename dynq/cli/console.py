"""`dynq console`: the URL of the web console of the cluster the CLI points at."""

from __future__ import annotations

import json

import click
from dynq_client.errors import DynqError

from .cluster import seed_call
from .common import connect, fail, seed_option, timeout_option


@click.command()
@click.option("--node", "node_name", default=None, help="The console of this member (default: the seed's node).")
@click.option("--read-only", is_flag=True, help="The URL with the read token (it cannot change membership).")
@click.option("--json", "as_json", is_flag=True, help="URL and both tokens as JSON.")
@seed_option
@timeout_option
def console(node_name: str | None, read_only: bool, as_json: bool, seed: tuple[str, ...], timeout: float) -> None:
    """Print the URL of a node's web console, with its admin token (or --read-only's read
    token) in the fragment: open it in a browser, or `curl "$(dynq console)"`. The node
    must serve one ([http] port; `dynq up` does). Asking takes an operator key."""
    try:
        if node_name is None:
            body = seed_call(seed, "console", {}, timeout)
        else:
            with connect(seed, timeout) as db:
                body = db.call(node_name, "console", {})
    except DynqError as exc:
        fail(exc)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    token = body["read_token"] if read_only else body["admin_token"]
    click.echo(f"{body['url']}#token={token}")
