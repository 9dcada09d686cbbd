"""CurveZMQ keys for a client (or a node talking to its peers).

A dynq cluster with ``security = "curve"`` encrypts and authenticates every connection:
each node's sockets are CURVE servers holding the *cluster* key, and every connecting
party - application, operator tool, or a node talking to its peers - presents its own
keypair, which the nodes accept only if its public key is on their allow-list. So a
client needs two things: its keypair, and the cluster's public key.

Key files are the ZeroMQ certificate format (``dynq keys generate`` writes them):
``NAME.key`` holds the public key, ``NAME.key_secret`` the public and the secret key.

A *keys directory* is laid out as ``dynq up`` writes it: ``cluster.key`` (the cluster's
public key), ``admin.key_secret`` (an operator keypair: what the CLI uses), ``app.key_secret``
(an application keypair: what :class:`~dynq_client.Client` uses). :func:`find_keys` is how
both find one: an explicit directory, else ``$DYNQ_KEYS``, else ``./dynq-data/keys`` when it
exists, so the client and the CLI run as written from the directory ``dynq up`` ran in.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

import zmq
import zmq.auth


class KeyFileError(ValueError):
    """A key file that is missing or not a ZeroMQ certificate."""


def load_public_key(path: str | Path) -> bytes:
    """The public key (Z85) in a ``.key`` or ``.key_secret`` certificate file."""
    public, _ = _load(path)
    return public


def load_keypair(path: str | Path) -> tuple[bytes, bytes]:
    """(public, secret) Z85 keys from a ``.key_secret`` certificate file."""
    public, secret = _load(path)
    if secret is None:
        raise KeyFileError(f"{path}: holds no secret key (use the .key_secret file)")
    return public, secret


def _load(path: str | Path) -> tuple[bytes, bytes | None]:
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: not a usable key file: {exc}") from exc
    if not public or len(public) != 40:
        raise KeyFileError(f"{path}: no valid public key in it")
    return public, secret


@dataclass(frozen=True)
class CurveKeys:
    """What a connecting party needs: its own keypair and the server's public key (Z85)."""

    public: bytes
    secret: bytes
    server: bytes

    def __post_init__(self) -> None:
        for name in ("public", "secret", "server"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != 40:
                raise KeyFileError(f"CurveKeys.{name} must be a 40-byte Z85 key")

    @classmethod
    def from_files(cls, keypair: str | Path, server_key: str | Path) -> CurveKeys:
        """Load ``keypair`` (a ``.key_secret`` file) and the cluster's public key file."""
        public, secret = load_keypair(keypair)
        return cls(public, secret, load_public_key(server_key))

    @classmethod
    def from_dir(cls, directory: str | Path, name: str = "app") -> CurveKeys:
        """Load ``DIR/NAME.key_secret`` and ``DIR/cluster.key`` from a keys directory as
        ``dynq up`` writes it (``name``: "app" for applications, "admin" for operators)."""
        directory = Path(directory)
        keypair = directory / f"{name}.key_secret"
        if not keypair.exists():
            raise KeyFileError(f"{keypair}: no such key file (a keys directory holds NAME.key_secret and cluster.key)")
        return cls.from_files(keypair, directory / "cluster.key")

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of the cluster (before it connects)."""
        sock.curve_publickey = self.public
        sock.curve_secretkey = self.secret
        sock.curve_serverkey = self.server


KEYS_ENV = "DYNQ_KEYS"
"""Environment variable naming a keys directory (the client's and the CLI's default)."""

DEFAULT_KEYS_DIR = Path("dynq-data") / "keys"
"""Where ``dynq up`` writes its keys, relative to the directory it ran in."""

KeysOption = Union[str, "os.PathLike[str]", Literal["auto"], None]


def find_keys(keys: KeysOption = "auto", name: str = "app") -> CurveKeys | None:
    """The CURVE keys a party connects with, or None for plaintext.

    ``keys`` is a keys directory (its ``NAME.key_secret`` and ``cluster.key`` are loaded,
    and must exist), None (plaintext: look nowhere), or "auto": the directory in
    ``$DYNQ_KEYS`` if set, else ``./dynq-data/keys`` if it holds ``NAME.key_secret``,
    else plaintext.
    """
    if keys is None:
        return None
    if isinstance(keys, str) and keys == "auto":
        env = os.environ.get(KEYS_ENV, "").strip()
        if env:
            return CurveKeys.from_dir(env, name)
        if (DEFAULT_KEYS_DIR / f"{name}.key_secret").exists():
            return CurveKeys.from_dir(DEFAULT_KEYS_DIR, name)
        return None
    return CurveKeys.from_dir(Path(keys), name)
