"""The `dynq` command: run nodes, a local cluster, and talk to a cluster. A thin layer over
library calls, one module per command group; every command that talks to a cluster takes
``--seed`` (env ``DYNQ_SEEDS``, comma-separated) and the key options of :func:`main`."""

from __future__ import annotations

import click

from . import bench, buckets, cluster, console, data, datatypes, keys, nodes, ops, sim
from .common import CURVE_KEYS, load_curve


@click.group()
@click.version_option(package_name="dynq")
@click.option("--key", envvar="DYNQ_KEY", default=None, help="Your keypair (.key_secret) for a CURVE cluster.")
@click.option("--server-key", envvar="DYNQ_SERVER_KEY", default=None, help="The cluster's public key (.key).")
@click.option("--keys", envvar="DYNQ_KEYS", default=None, type=click.Path(file_okay=False),
              help="A keys directory as `dynq up` writes it (admin.key_secret, cluster.key); "
                   "default ./dynq-data/keys if it exists.")
def main(key: str | None, server_key: str | None, keys: str | None) -> None:
    """dynq: a Dynamo-style distributed key-value store."""
    CURVE_KEYS.clear()
    curve = load_curve(key, server_key, keys)
    if curve is not None:
        CURVE_KEYS.append(curve)


for command in (keys.keys_group, nodes.node, nodes.config_group, nodes.up, data.get, data.put, data.delete,
                data.ring, data.stats, data.inspect, data.backup, cluster.cluster, ops.repair, bench.bench,
                buckets.bucket, buckets.export, buckets.import_, console.console, sim.sim):
    main.add_command(command)
for command in datatypes.COMMANDS:
    main.add_command(command)
