"""Config parsing: defaults, validation errors that name the key, the sample config."""

from __future__ import annotations

from pathlib import Path

import pytest

from dynq.config import ConfigError, load_config, parse_config, render_config
from dynq_client.ring import Member

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = {"node": {"name": "n1", "listen": "tcp://127.0.0.1:7100", "data_dir": "/tmp/x"}}


def test_sample_config_is_valid() -> None:
    """etc/dynq/dynq.toml, which documents every setting, parses with its documented defaults."""
    cfg = load_config(ROOT / "etc/dynq/dynq.toml")
    assert (cfg.n, cfg.q, cfg.r, cfg.w) == (3, 64, 2, 2)
    assert [m.name for m in cfg.members] == ["n1", "n2", "n3"]
    assert cfg.limits.max_key_bytes == 1024 and cfg.limits.max_value_bytes == 1024 * 1024


def test_defaults_and_self_added_to_members() -> None:
    """A minimal config gets the defaults and lists the node itself as a member."""
    cfg = parse_config(MINIMAL)
    assert (cfg.n, cfg.q, cfg.r, cfg.w, cfg.weight, cfg.synchronous) == (3, 64, 2, 2, 1, "full")
    assert (cfg.checkpoint_interval_ms, cfg.wal_limit_mb, cfg.mmap_mb) == (100, 64, 256)
    assert cfg.members == (Member("n1", "tcp://127.0.0.1:7100"),)


@pytest.mark.parametrize(
    "patch, named",
    [
        ({"node": {"nmae": "x"}}, "node.nmae"),
        ({"cluster": {"q": 100}}, "cluster.q"),
        ({"cluster": {"n": "three"}}, "cluster.n"),
        ({"cluster": {"r": 4}}, "cluster.r"),
        ({"limits": {"max_key_bytes": -1}}, "limits.max_key_bytes"),
        ({"limits": {"max_value_bytes": 10**9}}, "limits.max_message_bytes"),
        ({"storage": {"synchronous": "sometimes"}}, "storage.synchronous"),
        ({"storage": {"checkpoint_interval_ms": -1}}, "storage.checkpoint_interval_ms"),
        ({"storage": {"wal_limit_mb": 0}}, "storage.wal_limit_mb"),
        ({"storage": {"mmap_mb": -1}}, "storage.mmap_mb"),
        ({"node": {"listen": "127.0.0.1:7100"}}, "node.listen"),
        ({"bogus": {}}, "[bogus]"),
        ({"cluster": {"members": [{"name": "n2"}]}}, "cluster.members[0].address"),
        ({"cluster": {"members": [{"name": "", "address": "tcp://127.0.0.1:1"}]}}, "cluster.members[0].name"),
        ({"anti_entropy": {"enabled": "yes"}}, "anti_entropy.enabled"),
        ({"anti_entropy": {"rate_objects": 0}}, "anti_entropy.rate_objects"),
        ({"anti_entropy": {"tombstone_grace": 5}}, "anti_entropy.tombstone_grace"),
    ],
)
def test_errors_name_the_bad_key(patch: dict[str, dict[str, object]], named: str) -> None:
    """Unknown keys, wrong types and out-of-range values fail with the key in the message."""
    data = {section: dict(values) for section, values in MINIMAL.items()}
    for section, values in patch.items():
        data.setdefault(section, {}).update(values)
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert named in str(info.value)


def test_rendered_config_round_trips(tmp_path: Path) -> None:
    """The config `dynq up` writes is valid and says what it was given."""
    members = [Member("a", "tcp://127.0.0.1:7000"), Member("b", "tcp://127.0.0.1:7010", "z2", 2)]
    path = tmp_path / "a.toml"
    path.write_text(render_config(name="a", listen="tcp://127.0.0.1:7000", data_dir=".", members=members, n=2, r=1, w=1))
    cfg = load_config(path)
    assert cfg.members == tuple(members) and cfg.data_dir == tmp_path and cfg.n == 2


def test_anti_entropy_defaults_and_overrides() -> None:
    """[anti_entropy] defaults (on, one exchange at a time, a day of tombstone grace) and overrides."""
    cfg = parse_config(MINIMAL)
    assert (cfg.ae_enabled, cfg.ae_concurrency, cfg.ae_tombstone_grace_s) == (True, 1, 86400)
    cfg = parse_config(dict(MINIMAL, anti_entropy={"enabled": False, "interval_ms": 50, "rate_bytes": 4096}))
    assert (cfg.ae_enabled, cfg.ae_interval_ms, cfg.ae_rate_bytes) == (False, 50, 4096)
