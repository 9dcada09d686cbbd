"""Node configuration: one TOML file per node, every setting's default in one place.

The file has sections ``[node]``, ``[cluster]`` (with ``[[cluster.members]]``),
``[limits]``, ``[storage]`` and ``[timeouts]``; ``etc/dynq/dynq.toml`` documents each
setting. Unknown sections or keys and values of the wrong type or range are errors that
name the offending key, so a typo never silently falls back to a default.

Membership: a node whose config lists ``[[cluster.members]]`` starts (the first time) as
part of that cluster; a node without them starts as a cluster of one and joins another
with ``dynq cluster join``. After the first start the cluster state stored in the
database is what counts; it changes through join/leave/commit, or when an operator edits
a static member list (the change then runs as a normal transition).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dynq_client.protocol import Limits
from dynq_client.ring import Member


class ConfigError(ValueError):
    """A configuration problem; the message names the file and key."""


@dataclass(frozen=True)
class NodeConfig:
    name: str
    listen: str
    data_dir: Path
    zone: str = ""
    weight: int = 1
    # cluster-wide settings (every node must agree)
    n: int = 3
    q: int = 64
    r: int = 2
    w: int = 2
    members: tuple[Member, ...] = ()
    seeds: tuple[str, ...] = ()
    limits: Limits = field(default_factory=Limits)
    socket_hwm: int = 1000  # messages queued per connection, each way, before ZeroMQ pushes back or drops
    max_in_flight_per_connection: int = 1000  # more from one connection are refused (Overloaded)
    synchronous: str = "full"
    checkpoint_interval_ms: int = 100  # WAL checkpoints on a thread; 0: SQLite's own, inside commits
    wal_limit_mb: int = 64  # past this the checkpointer makes writers wait until the WAL starts over
    mmap_mb: int = 256  # SQLite reads the database file through a memory map of this size; 0: read()
    request_timeout_ms: int = 5000
    log_level: str = "info"
    log_format: str = "text"
    metrics_port: int = 0  # 0: no Prometheus endpoint
    metrics_host: str = "127.0.0.1"
    # HTTP admin API and web console ([http]); see dynq.ops.admin_api
    http_port: int = 0  # 0: no admin API / console
    http_host: str = "127.0.0.1"  # a non-loopback host needs http_allow_remote (tokens are still required)
    http_allow_remote: bool = False
    http_read_token_file: Path | None = None  # None: DATA_DIR/http-read.token (generated)
    http_admin_token_file: Path | None = None  # None: DATA_DIR/http-admin.token (generated)
    http_history_interval_s: int = 5  # one sample of the console's charts per interval
    http_history_points: int = 120  # samples kept (120 x 5 s: the last 10 minutes)
    http_peer_timeout_ms: int = 2000  # the API's requests to other nodes; a slower node shows as down
    # hinted handoff and failure detection
    max_hints: int = 1_000_000
    replay_batch: int = 100
    replay_rate: int = 2000
    replay_interval_ms: int = 500
    probe_interval_ms: int = 1000
    # membership: gossip, failure detection, partition transfers
    static_members: bool = False  # [[cluster.members]] given: the config lists the cluster
    gossip_interval_ms: int = 1000
    phi_threshold: float = 8.0
    transfer_batch: int = 500
    transfer_rate: int = 20_000  # objects/s per outgoing transfer; 0: unlimited
    transfer_cleanup_delay_ms: int = 5000
    # security: "none", or "curve" with the key files below (absolute paths)
    security: str = "none"
    server_key: Path | None = None  # the cluster keypair (.key_secret): every node's CURVE server key
    node_key: Path | None = None  # this node's keypair (.key_secret), to connect to its peers
    peer_keys: Path | None = None  # directory of allowed peer/operator public keys (*.key)
    client_keys: Path | None = None  # directory of allowed client public keys (*.key)
    # anti-entropy ([anti_entropy])
    ae_enabled: bool = True
    ae_interval_ms: int = 1000
    ae_rate_objects: int = 500
    ae_rate_bytes: int = 8 * 1024 * 1024
    ae_concurrency: int = 1
    ae_rebuild_interval_s: int = 7 * 86400
    ae_tombstone_grace_s: int = 86400
    ae_expiry_grace_s: int = 60
    ae_expiry_interval_ms: int = 1000
    ae_expiry_batch: int = 1000
    source: str = "<defaults>"  # where this config was read from, for messages

    @property
    def db_path(self) -> Path:
        return self.data_dir / "dynq.db"

    @property
    def self_member(self) -> Member:
        return Member(self.name, self.listen, self.zone, self.weight)


# Section -> key -> (type, validator description, check). Kept declarative so that
# `dynq config check` and the node share one validation.
_NODE_KEYS = {"name", "listen", "data_dir", "zone", "weight"}
_CLUSTER_KEYS = {"n", "q", "r", "w", "members", "seeds"}
_MEMBER_KEYS = {"name", "address", "zone", "weight"}
_NODE_LIMIT_KEYS = {"socket_hwm", "max_in_flight_per_connection"}  # node-only, in [limits] too
_LIMIT_KEYS = {f.name for f in fields(Limits)} | _NODE_LIMIT_KEYS
_STORAGE_KEYS = {"synchronous", "checkpoint_interval_ms", "wal_limit_mb", "mmap_mb"}
_TIMEOUT_KEYS = {"request_ms"}
_LOG_KEYS = {"level", "format"}
_METRICS_KEYS = {"port", "host"}
_HTTP_KEYS = {"port", "host", "allow_remote", "read_token_file", "admin_token_file", "history_interval_s",
              "history_points", "peer_timeout_ms"}
_MEMBERSHIP_KEYS = {"gossip_interval_ms", "phi_threshold", "transfer_batch", "transfer_rate",
                    "transfer_cleanup_delay_ms"}
_HANDOFF_KEYS = {"max_hints", "replay_batch", "replay_rate", "replay_interval_ms", "probe_interval_ms"}
_SECURITY_KEYS = {"mode", "server_key", "node_key", "peer_keys", "client_keys"}
_AE_KEYS = {"enabled", "interval_ms", "rate_objects", "rate_bytes", "concurrency", "rebuild_interval_s",
            "tombstone_grace_s", "expiry_grace_s", "expiry_interval_ms", "expiry_batch"}
_SECTIONS = {
    "anti_entropy": _AE_KEYS,
    "security": _SECURITY_KEYS,
    "membership": _MEMBERSHIP_KEYS,
    "handoff": _HANDOFF_KEYS,
    "metrics": _METRICS_KEYS,
    "http": _HTTP_KEYS,
    "node": _NODE_KEYS,
    "cluster": _CLUSTER_KEYS,
    "limits": _LIMIT_KEYS,
    "storage": _STORAGE_KEYS,
    "timeouts": _TIMEOUT_KEYS,
    "log": _LOG_KEYS,
}


class _Reader:
    """Typed access to one table of the TOML document, with errors naming the key."""

    def __init__(self, source: str, section: str, table: dict[str, Any], allowed: set[str]) -> None:
        self.source, self.section, self.table = source, section, table
        for key in table:
            if key not in allowed:
                raise ConfigError(
                    f"{source}: unknown key '{section}.{key}' (allowed: {', '.join(sorted(allowed))})"
                )

    def _err(self, key: str, what: str) -> ConfigError:
        return ConfigError(f"{self.source}: '{self.section}.{key}' {what}")

    def text(self, key: str, default: str | None = None) -> str:
        value = self.table.get(key, default)
        if value is None:
            raise self._err(key, "is required")
        if not isinstance(value, str):
            raise self._err(key, f"must be a string, got {value!r}")
        return value

    def number(self, key: str, default: int, lo: int, hi: int) -> int:
        value = self.table.get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self._err(key, f"must be an integer, got {value!r}")
        if not lo <= value <= hi:
            raise self._err(key, f"must be between {lo} and {hi}, got {value}")
        return value


def _check_address(reader: _Reader, key: str, value: str) -> str:
    if not value.startswith(("tcp://", "ipc://")) or "*" in value:
        raise reader._err(key, f"must be a tcp://HOST:PORT (or ipc://) address, got {value!r}")
    return value


def _check_name(reader: _Reader, key: str, value: str) -> str:
    if not value or len(value) > 64 or not all(c.isalnum() or c in "-_." for c in value):
        raise reader._err(key, f"must be 1-64 characters of letters, digits, '-', '_' or '.', got {value!r}")
    return value


def parse_config(data: dict[str, Any], source: str = "<config>", base_dir: Path | None = None) -> NodeConfig:
    """Build and validate a :class:`NodeConfig` from a parsed TOML document."""
    for section, value in data.items():
        if section not in _SECTIONS:
            raise ConfigError(f"{source}: unknown section '[{section}]' (allowed: {', '.join(sorted(_SECTIONS))})")
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: '{section}' must be a table")
    node = _Reader(source, "node", data.get("node", {}), _NODE_KEYS)
    cluster = _Reader(source, "cluster", data.get("cluster", {}), _CLUSTER_KEYS)
    limits_in = _Reader(source, "limits", data.get("limits", {}), _LIMIT_KEYS)
    storage = _Reader(source, "storage", data.get("storage", {}), _STORAGE_KEYS)
    timeouts = _Reader(source, "timeouts", data.get("timeouts", {}), _TIMEOUT_KEYS)
    logs = _Reader(source, "log", data.get("log", {}), _LOG_KEYS)
    handoff = _Reader(source, "handoff", data.get("handoff", {}), _HANDOFF_KEYS)
    metrics = _Reader(source, "metrics", data.get("metrics", {}), _METRICS_KEYS)
    membership = _Reader(source, "membership", data.get("membership", {}), _MEMBERSHIP_KEYS)
    security = _Reader(source, "security", data.get("security", {}), _SECURITY_KEYS)
    http = _parse_http(_Reader(source, "http", data.get("http", {}), _HTTP_KEYS), base_dir)
    mode = security.text("mode", "none").lower()
    if mode not in ("none", "curve"):
        raise security._err("mode", f"must be 'none' or 'curve', got {mode!r}")
    key_paths: dict[str, Path | None] = dict.fromkeys(("server_key", "node_key", "peer_keys", "client_keys"))
    if mode == "curve":
        for key in key_paths:
            path = Path(security.text(key))
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            is_dir = key.endswith("_keys")
            if not (path.is_dir() if is_dir else path.is_file()):
                raise security._err(key, f"{'directory' if is_dir else 'file'} {path} does not exist")
            key_paths[key] = path
    ae = _Reader(source, "anti_entropy", data.get("anti_entropy", {}), _AE_KEYS)
    ae_enabled = ae.table.get("enabled", True)
    if not isinstance(ae_enabled, bool):
        raise ae._err("enabled", f"must be true or false, got {ae_enabled!r}")
    log_format = logs.text("format", "text").lower()
    if log_format not in ("text", "json"):
        raise logs._err("format", f"must be 'text' or 'json', got {log_format!r}")

    name = _check_name(node, "name", node.text("name"))
    listen = _check_address(node, "listen", node.text("listen"))
    data_dir = Path(node.text("data_dir"))
    if not data_dir.is_absolute() and base_dir is not None:
        data_dir = base_dir / data_dir
    zone = node.text("zone", "")
    weight = node.number("weight", 1, 1, 1000)

    n = cluster.number("n", 3, 1, 16)
    q = cluster.number("q", 64, 1, 65536)
    if q & (q - 1):
        raise cluster._err("q", f"must be a power of two, got {q}")
    r = cluster.number("r", 2, 1, n)
    w = cluster.number("w", 2, 1, n)
    seeds_raw = cluster.table.get("seeds", [])
    if not isinstance(seeds_raw, list) or not all(isinstance(s, str) for s in seeds_raw):
        raise cluster._err("seeds", "must be a list of address strings")
    for seed in seeds_raw:
        _check_address(cluster, "seeds", seed)
    members_raw = cluster.table.get("members", [])
    if not isinstance(members_raw, list):
        raise cluster._err("members", "must be an array of tables ([[cluster.members]])")
    members: dict[str, Member] = {}
    for i, raw in enumerate(members_raw):
        if not isinstance(raw, dict):
            raise cluster._err("members", f"entry {i} must be a table")
        m = _Reader(source, f"cluster.members[{i}]", raw, _MEMBER_KEYS)
        member = Member(
            _check_name(m, "name", m.text("name")),
            _check_address(m, "address", m.text("address")),
            m.text("zone", ""),
            m.number("weight", 1, 1, 1000),
        )
        if member.name in members:
            raise m._err("name", f"duplicates member {member.name!r}")
        members[member.name] = member
    me = Member(name, listen, zone, weight)
    if name in members and members[name] != me:
        raise cluster._err("members", f"entry for this node ({name}) disagrees with [node]: {members[name]} vs {me}")
    members[name] = me
    static_members = bool(members_raw)
    addresses = [m.address for m in members.values()]
    if len(set(addresses)) != len(addresses):
        raise cluster._err("members", "two members share one address")

    limit_values: dict[str, int] = {}
    for f in fields(Limits):
        default = getattr(Limits(), f.name)
        limit_values[f.name] = limits_in.number(f.name, default, 1, 2**31)
    limits = Limits(**limit_values)
    if limits.max_value_bytes + limits.max_key_bytes + 1024 > limits.max_message_bytes:
        raise limits_in._err("max_message_bytes", "must exceed max_value_bytes + max_key_bytes + 1024")
    if limits.sibling_warn > limits.max_siblings:
        raise limits_in._err("sibling_warn", "must not exceed max_siblings")
    if not 8 <= limits.max_depth <= 256:
        raise limits_in._err("max_depth", f"must be between 8 (what dynq's own requests need) and 256, "
                                          f"got {limits.max_depth}")
    if limits.max_container_len < 10_000:
        raise limits_in._err("max_container_len", f"must be at least 10000 (what dynq's own transfer and "
                                                  f"repair messages need), got {limits.max_container_len}")

    synchronous = storage.text("synchronous", "full").lower()
    if synchronous not in ("normal", "full"):
        raise storage._err("synchronous", f"must be 'normal' or 'full', got {synchronous!r}")
    level = logs.text("level", "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise logs._err("level", f"must be debug, info, warning or error, got {level!r}")

    return NodeConfig(
        name=name,
        listen=listen,
        data_dir=data_dir,
        zone=zone,
        weight=weight,
        n=n,
        q=q,
        r=r,
        w=w,
        members=tuple(sorted(members.values(), key=lambda m: m.name)),
        seeds=tuple(seeds_raw),
        limits=limits,
        socket_hwm=limits_in.number("socket_hwm", 1000, 10, 10_000_000),
        max_in_flight_per_connection=limits_in.number("max_in_flight_per_connection", 1000, 1, 10_000_000),
        synchronous=synchronous,
        checkpoint_interval_ms=storage.number("checkpoint_interval_ms", 100, 0, 60_000),
        wal_limit_mb=storage.number("wal_limit_mb", 64, 1, 65536),
        mmap_mb=storage.number("mmap_mb", 256, 0, 1 << 20),
        request_timeout_ms=timeouts.number("request_ms", 5000, 10, 600_000),
        log_level=level,
        log_format=log_format,
        metrics_port=metrics.number("port", 0, 0, 65535),
        metrics_host=metrics.text("host", "127.0.0.1"),
        **http,
        max_hints=handoff.number("max_hints", 1_000_000, 1, 2**40),
        replay_batch=handoff.number("replay_batch", 100, 1, 10_000),
        replay_rate=handoff.number("replay_rate", 2000, 1, 1_000_000),
        replay_interval_ms=handoff.number("replay_interval_ms", 500, 10, 600_000),
        probe_interval_ms=handoff.number("probe_interval_ms", 1000, 10, 600_000),
        static_members=static_members,
        gossip_interval_ms=membership.number("gossip_interval_ms", 1000, 10, 60_000),
        phi_threshold=float(membership.number("phi_threshold", 8, 1, 100)),
        transfer_batch=membership.number("transfer_batch", 500, 1, 10_000),
        transfer_rate=membership.number("transfer_rate", 20_000, 0, 10_000_000),
        transfer_cleanup_delay_ms=membership.number("transfer_cleanup_delay_ms", 5000, 0, 3_600_000),
        security=mode,
        server_key=key_paths["server_key"],
        node_key=key_paths["node_key"],
        peer_keys=key_paths["peer_keys"],
        client_keys=key_paths["client_keys"],
        ae_enabled=ae_enabled,
        ae_interval_ms=ae.number("interval_ms", 1000, 1, 3_600_000),
        ae_rate_objects=ae.number("rate_objects", 500, 1, 10_000_000),
        ae_rate_bytes=ae.number("rate_bytes", 8 * 1024 * 1024, 1024, 2**40),
        ae_concurrency=ae.number("concurrency", 1, 1, 64),
        ae_rebuild_interval_s=ae.number("rebuild_interval_s", 7 * 86400, 1, 10 * 365 * 86400),
        ae_tombstone_grace_s=ae.number("tombstone_grace_s", 86400, 0, 10 * 365 * 86400),
        ae_expiry_grace_s=ae.number("expiry_grace_s", 60, 0, 10 * 365 * 86400),
        ae_expiry_interval_ms=ae.number("expiry_interval_ms", 1000, 10, 3_600_000),
        ae_expiry_batch=ae.number("expiry_batch", 1000, 1, 1000),
        source=source,
    )


LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def _parse_http(http: _Reader, base_dir: Path | None) -> dict[str, Any]:
    """The [http] section as NodeConfig fields."""
    allow_remote = http.table.get("allow_remote", False)
    if not isinstance(allow_remote, bool):
        raise http._err("allow_remote", f"must be true or false, got {allow_remote!r}")
    host = http.text("host", "127.0.0.1")
    if host not in LOOPBACK_HOSTS and not host.startswith("127.") and not allow_remote:
        raise http._err("host", f"is {host!r}, not a loopback address: the admin API then answers the network "
                                "(with its tokens); set allow_remote = true to mean it")
    paths: dict[str, Path | None] = {}
    for key in ("read_token_file", "admin_token_file"):
        paths[key] = None
        if key in http.table:
            path = Path(http.text(key))
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            paths[key] = path
    return {
        "http_port": http.number("port", 0, 0, 65535),
        "http_host": host,
        "http_allow_remote": allow_remote,
        "http_read_token_file": paths["read_token_file"],
        "http_admin_token_file": paths["admin_token_file"],
        "http_history_interval_s": http.number("history_interval_s", 5, 1, 3600),
        "http_history_points": http.number("history_points", 120, 2, 100_000),
        "http_peer_timeout_ms": http.number("peer_timeout_ms", 2000, 10, 600_000),
    }


def load_config(path: str | Path) -> NodeConfig:
    """Read and validate a node's TOML config; raises ConfigError naming the bad key."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError as exc:
        raise ConfigError(f"{path}: no such file") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    return parse_config(data, str(path), path.parent)


def render_config(
    *,
    name: str,
    listen: str,
    data_dir: str,
    members: list[Member],
    n: int = 3,
    q: int = 64,
    r: int = 2,
    w: int = 2,
    zone: str = "",
    weight: int = 1,
    synchronous: str = "full",
    seeds: list[str] | tuple[str, ...] = (),
    storage_options: dict[str, int] | None = None,
    keys_dir: str | None = None,
    http_port: int = 0,
    http_tokens_dir: str | None = None,
) -> str:
    """A valid, commented TOML config (`dynq up`, `dynq config init`, the tests). Without
    ``members`` the node starts as a cluster of its own and joins one with
    `dynq cluster join`. ``keys_dir``: CURVE on, with the keys laid out as `dynq up` writes
    them (cluster.key_secret, NAME.key_secret, peers/, clients/)."""
    lines = [
        "# dynq node configuration (see etc/dynq/dynq.toml for every setting).",
        "[node]",
        f"name = {_q(name)}",
        f"listen = {_q(listen)}          # ROUTER address for clients and peers; gossip uses port + 1",
        f"data_dir = {_q(data_dir)}",
        f"zone = {_q(zone)}            # failure domain: replicas of a key go to distinct zones first",
        f"weight = {weight}            # share of partitions relative to other nodes",
        "",
        "[cluster]",
        f"n = {n}   # replicas per key (a joining node takes the cluster's)",
        f"q = {q}   # partitions in the ring (power of two, fixed at creation)",
        f"r = {r}   # default read quorum",
        f"w = {w}   # default write quorum",
        "# Nodes to contact at startup (bootstrap only; the cluster state is stored after a join).",
        "seeds = [" + ", ".join(_q(seed) for seed in seeds) + "]",
        "",
    ]
    if not members:
        lines += [
            "# No [[cluster.members]]: this node starts as a cluster of its own. Join it to a cluster:",
            "#   dynq cluster join <address of a cluster node> --seed " + listen,
            "#   dynq cluster plan --seed <any cluster node>; dynq cluster commit --seed <any cluster node>",
            "",
        ]
    for m in members:
        lines += [
            "[[cluster.members]]",
            f"name = {_q(m.name)}",
            f"address = {_q(m.address)}",
            f"zone = {_q(m.zone)}",
            f"weight = {m.weight}",
            "",
        ]
    lines += ["[storage]", f"synchronous = {_q(synchronous)}"]
    lines += [f"{key} = {value}" for key, value in (storage_options or {}).items()] + [""]
    if keys_dir is not None:
        keys = Path(keys_dir)
        lines += [
            "[security]",
            'mode = "curve"   # every connection encrypted; only the keys below may connect',
            f"server_key = {_q(str(keys / 'cluster.key_secret'))}   # the cluster keypair, the same on every node",
            f"node_key = {_q(str(keys / f'{name}.key_secret'))}   # this node's own keypair",
            f"peer_keys = {_q(str(keys / 'peers'))}   # public keys of nodes and operators",
            f"client_keys = {_q(str(keys / 'clients'))}   # public keys of applications",
            "",
        ]
    if http_port:
        lines += [
            "[http]",
            f"port = {http_port}   # admin API and web console (dynq console prints the URL)",
            'host = "127.0.0.1"   # loopback only',
        ]
        if http_tokens_dir is not None:
            tokens = Path(http_tokens_dir)
            lines += [
                f"read_token_file = {_q(str(tokens / 'http-read.token'))}   # shared by every node",
                f"admin_token_file = {_q(str(tokens / 'http-admin.token'))}",
            ]
        lines.append("")
    return "\n".join(lines)


def _q(value: str) -> str:
    """A TOML basic string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
