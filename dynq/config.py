"""Node configuration: one TOML file per node, every setting's default in one place.

The file has sections ``[node]``, ``[cluster]`` (with ``[[cluster.members]]``),
``[limits]``, ``[storage]`` and ``[timeouts]``; ``etc/dynq/dynq.toml`` documents each
setting. Unknown sections or keys and values of the wrong type or range are errors that
name the offending key, so a typo never silently falls back to a default.

Membership is static in this version: ``[[cluster.members]]`` lists every node (the node
itself may be left out; it is added from ``[node]``). The ring computed from it is stored
in the node's database with an epoch, and a changed member list produces a new ring with
a bigger epoch that moves as few partitions as possible.
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
    synchronous: str = "full"
    request_timeout_ms: int = 5000
    log_level: str = "info"
    log_format: str = "text"
    metrics_port: int = 0  # 0: no Prometheus endpoint
    metrics_host: str = "127.0.0.1"
    # hinted handoff and failure detection
    max_hints: int = 1_000_000
    replay_batch: int = 100
    replay_rate: int = 2000
    replay_interval_ms: int = 500
    probe_interval_ms: int = 1000
    # anti-entropy ([anti_entropy])
    ae_enabled: bool = True
    ae_interval_ms: int = 1000
    ae_rate_objects: int = 500
    ae_rate_bytes: int = 8 * 1024 * 1024
    ae_concurrency: int = 1
    ae_rebuild_interval_s: int = 7 * 86400
    ae_tombstone_grace_s: int = 86400
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
_LIMIT_KEYS = {f.name for f in fields(Limits)}
_STORAGE_KEYS = {"synchronous"}
_TIMEOUT_KEYS = {"request_ms"}
_LOG_KEYS = {"level", "format"}
_METRICS_KEYS = {"port", "host"}
_HANDOFF_KEYS = {"max_hints", "replay_batch", "replay_rate", "replay_interval_ms", "probe_interval_ms"}
_AE_KEYS = {"enabled", "interval_ms", "rate_objects", "rate_bytes", "concurrency", "rebuild_interval_s",
            "tombstone_grace_s"}
_SECTIONS = {
    "anti_entropy": _AE_KEYS,
    "handoff": _HANDOFF_KEYS,
    "metrics": _METRICS_KEYS,
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
        synchronous=synchronous,
        request_timeout_ms=timeouts.number("request_ms", 5000, 10, 600_000),
        log_level=level,
        log_format=log_format,
        metrics_port=metrics.number("port", 0, 0, 65535),
        metrics_host=metrics.text("host", "127.0.0.1"),
        max_hints=handoff.number("max_hints", 1_000_000, 1, 2**40),
        replay_batch=handoff.number("replay_batch", 100, 1, 10_000),
        replay_rate=handoff.number("replay_rate", 2000, 1, 1_000_000),
        replay_interval_ms=handoff.number("replay_interval_ms", 500, 10, 600_000),
        probe_interval_ms=handoff.number("probe_interval_ms", 1000, 10, 600_000),
        ae_enabled=ae_enabled,
        ae_interval_ms=ae.number("interval_ms", 1000, 1, 3_600_000),
        ae_rate_objects=ae.number("rate_objects", 500, 1, 10_000_000),
        ae_rate_bytes=ae.number("rate_bytes", 8 * 1024 * 1024, 1024, 2**40),
        ae_concurrency=ae.number("concurrency", 1, 1, 64),
        ae_rebuild_interval_s=ae.number("rebuild_interval_s", 7 * 86400, 1, 10 * 365 * 86400),
        ae_tombstone_grace_s=ae.number("tombstone_grace_s", 86400, 0, 10 * 365 * 86400),
        source=source,
    )


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
) -> str:
    """A valid, commented TOML config (used by `dynq up` and the tests)."""
    lines = [
        "# dynq node configuration (see etc/dynq/dynq.toml for every setting).",
        "[node]",
        f"name = {_q(name)}",
        f"listen = {_q(listen)}          # ROUTER address for clients and peers",
        f"data_dir = {_q(data_dir)}",
        f"zone = {_q(zone)}",
        f"weight = {weight}",
        "",
        "[cluster]",
        f"n = {n}   # replicas per key",
        f"q = {q}   # partitions in the ring (power of two, fixed at creation)",
        f"r = {r}   # default read quorum",
        f"w = {w}   # default write quorum",
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
    lines += ["[storage]", f"synchronous = {_q(synchronous)}", ""]
    return "\n".join(lines)


def _q(value: str) -> str:
    """A TOML basic string."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
