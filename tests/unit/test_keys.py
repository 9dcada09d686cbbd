"""Finding keys (client and CLI alike), registering peer keys on a node, and what a
socket monitor's handshake events mean: no sockets, real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import zmq

from dynq.security import KeyRing, allow_key, generate_keys, valid_key_name
from dynq_client.security import KEYS_ENV, CurveKeys, KeyFileError, find_keys, load_public_key
from dynq_client.transport import handshake_failure


def keys_dir(root: Path) -> Path:
    """A keys directory as `dynq up` writes it."""
    keys = root / "dynq-data" / "keys"
    generate_keys(keys, "cluster")
    allow_key(keys, "admin", "peers")
    allow_key(keys, "app", "clients")
    return keys


def test_find_keys_explicit_env_default_and_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An explicit directory wins; "auto" takes $DYNQ_KEYS, then ./dynq-data/keys; None looks nowhere."""
    keys = keys_dir(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(KEYS_ENV, raising=False)
    app = find_keys("auto", "app")
    assert app == CurveKeys.from_files(keys / "app.key_secret", keys / "cluster.key")
    assert find_keys(None) is None
    assert find_keys("auto", "admin") == CurveKeys.from_dir(keys, "admin")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert find_keys("auto") is None  # nothing here: plaintext
    assert find_keys(keys) == app
    monkeypatch.setenv(KEYS_ENV, str(keys))
    assert find_keys("auto") == app


def test_a_named_directory_without_the_key_is_an_error_naming_the_file(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    keys = keys_dir(tmp_path)
    (keys / "app.key_secret").unlink()
    with pytest.raises(KeyFileError, match="app.key_secret: no such key file"):
        find_keys(keys)
    monkeypatch.setenv(KEYS_ENV, str(tmp_path / "missing"))
    with pytest.raises(KeyFileError, match="missing"):
        find_keys("auto")


def test_registered_keys_are_allowed_survive_a_reload_and_can_be_revoked(tmp_path: Path) -> None:
    keys = keys_dir(tmp_path)
    ring = KeyRing(keys / "peers", keys / "clients", tmp_path / "registered")
    ring.reload()
    public, _ = zmq.curve_keypair()
    assert ring.role(public) is None
    path = ring.register("n4", public)
    assert ring.role(public) == "peer" and load_public_key(path) == public
    again = KeyRing(keys / "peers", keys / "clients", tmp_path / "registered")
    again.reload()  # a restarted node still allows it
    assert again.role(public) == "peer"
    assert again.revoke("n4") and again.role(public) is None
    assert not again.revoke("n4")
    assert again.role(load_public_key(keys / "admin.key")) == "peer"  # the admin's files untouched


@pytest.mark.parametrize("name,key", [("../evil", None), ("", None), (".hidden", None), ("n4", b"short"),
                                      ("n4", b"~" * 40), ("n4", b'"' * 40)])
def test_register_refuses_bad_names_and_keys(tmp_path: Path, name: str, key: bytes | None) -> None:
    ring = KeyRing(tmp_path / "peers", tmp_path / "clients", tmp_path / "registered")
    with pytest.raises(ValueError):
        ring.register(name, key if key is not None else zmq.curve_keypair()[0])
    assert not (tmp_path / "registered").exists() or not list((tmp_path / "registered").iterdir())
    assert not valid_key_name(name) or key is not None


def test_an_unknown_key_rereads_a_changed_directory_at_once_and_otherwise_rate_limited(tmp_path: Path) -> None:
    """A key file copied in counts at the next unknown-key knock, however soon (a refused
    peer may never knock again); knocks on unchanged directories re-read them at most once
    per interval."""
    keys = keys_dir(tmp_path)
    ring = KeyRing(keys / "peers", keys / "clients")
    ring.reload()
    allow_key(keys, "n5", "peers")
    n5 = load_public_key(keys / "n5.key")
    ring.reload_if_stale(min_interval_s=3600)
    assert ring.role(n5) == "peer"  # the directory changed: read at once
    reloads = []
    real = ring.reload
    ring.reload = lambda: (reloads.append(1), real())[1]  # type: ignore[method-assign]
    for _ in range(5):
        ring.reload_if_stale(min_interval_s=3600)
    assert reloads == []  # nothing changed: no re-read per knock
    ring.loaded_at -= 3601
    ring.reload_if_stale(min_interval_s=3600)
    assert reloads == [1]


def test_handshake_events_name_their_cause() -> None:
    """Certain causes (mechanism mismatch, refused key) are told apart from a vague hang-up."""
    mismatch = int(zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH)
    assert handshake_failure(int(zmq.EVENT_HANDSHAKE_SUCCEEDED), 0, True) is None
    text, certain = handshake_failure(int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL), mismatch, False) or ("", False)
    assert certain and "requires CURVE keys" in text and "keys=DIR" in text
    text, certain = handshake_failure(int(zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL), mismatch, True) or ("", False)
    assert certain and "runs without security" in text
    text, certain = handshake_failure(int(zmq.EVENT_HANDSHAKE_FAILED_AUTH), 400, True) or ("", False)
    assert certain and "refused this party's CURVE key" in text
    text, certain = handshake_failure(int(zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL), 32, True) or ("", True)
    assert not certain and "cluster.key" in text


def test_generated_secret_keys_are_private(tmp_path: Path) -> None:
    public, secret = generate_keys(tmp_path, "x")
    assert os.stat(secret).st_mode & 0o077 == 0
