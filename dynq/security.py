"""CurveZMQ on the node: who may connect (ZAP), and who may do what (per message).

With ``[security] mode = "curve"`` every node socket is a CURVE server holding the cluster
keypair (``server_key``), and the node connects to its peers with its own keypair
(``node_key``). A ZAP handler - started before any socket binds, because libzmq lets any
client that knows the server key in when no handler runs - accepts a connection only if
its public key is in ``peer_keys`` (nodes and operators: may replicate, gossip, join,
administer) or ``client_keys`` (applications: get/put/delete). Gossip accepts peers only.

The handler names each connection ``peer:KEY`` or ``client:KEY`` (ZeroMQ's User-Id), and
the node checks every message against the key sets *as they are now*, so a key removed
from its directory and reloaded (SIGHUP) is refused at once, also on connections that were
authenticated before.

New peers are let in without a restart in two ways. An operator (a peer key) can
*register* a node's public key over the wire (``dynq keys register``, which ``dynq config
init --keys`` runs): the node stores it in ``DATA_DIR/registered-peers/`` (writable under
systemd, where ``/etc`` is not) and reloads. And a connection with an unknown key makes
the ZAP handler re-read the directories first, at most once a second, so a key file an
administrator copied in by hand counts without a SIGHUP. Neither widens who may connect:
only a key already allowed as a peer can register one (and a peer key can already rewrite
membership), and re-reading only picks up files an administrator wrote; the rate limit
keeps a stream of unknown keys from turning into a stream of directory reads.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from dynq_client import protocol as p
from dynq_client.errors import InvalidRequest, StorageError
from dynq_client.protocol import Request
from dynq_client.security import CurveKeys, KeyFileError, load_keypair, load_public_key

from .server.ports import Handler
from .server.responder import Responder

log = logging.getLogger(__name__)

REQUEST_DOMAIN = "dynq"
GOSSIP_DOMAIN = "dynq-gossip"


def read_key_dir(path: Path) -> frozenset[bytes]:
    """Public keys of every ``*.key`` certificate in ``path``."""
    keys: set[bytes] = set()
    for entry in sorted(path.glob("*.key")):
        try:
            keys.add(load_public_key(entry))
        except KeyFileError as exc:
            log.warning("ignoring %s", exc)
    return frozenset(keys)


REGISTERED_PEERS_DIR = "registered-peers"
"""Under a node's data directory: peer keys registered over the wire (``key_register``)."""

_Z85 = frozenset(b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#")

RELOAD_ON_UNKNOWN_KEY_S = 1.0
"""An unknown key makes the ZAP handler re-read the allow-lists at most this often."""


def valid_key_name(name: object) -> bool:
    """Names of registered keys: a node's name (it becomes a file name, so nothing else)."""
    return (isinstance(name, str) and 0 < len(name) <= 64
            and all(c.isalnum() or c in "-_." for c in name) and not name.startswith("."))


@dataclass
class KeyRing:
    """The allow-lists, reloadable; replaced whole so the ZAP thread never sees half of one."""

    peer_dir: Path
    client_dir: Path
    registered_dir: Path | None = None  # peer keys registered over the wire; None: registration off
    peers: frozenset[bytes] = frozenset()
    clients: frozenset[bytes] = frozenset()
    loaded_at: float = 0.0  # monotonic time of the last reload
    loaded_dirs: tuple[int, ...] = ()  # the directories' mtimes (ns) just before the last reload
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # loop and ZAP thread both reload

    def _dir_mtimes(self) -> tuple[int, ...]:
        """A file added, replaced or removed in a key directory changes its mtime."""
        out = []
        for d in (self.peer_dir, self.client_dir, self.registered_dir):
            try:
                out.append(d.stat().st_mtime_ns if d is not None else 0)
            except OSError:
                out.append(-1)
        return tuple(out)

    def reload(self) -> None:
        with self._lock:
            self.loaded_dirs = self._dir_mtimes()
            peers = read_key_dir(self.peer_dir)
            if self.registered_dir is not None and self.registered_dir.is_dir():
                peers |= read_key_dir(self.registered_dir)
            clients = read_key_dir(self.client_dir)
            changed = (peers, clients - peers) != (self.peers, self.clients)
            self.peers, self.clients = peers, clients - peers
            self.loaded_at = time.monotonic()
        if changed:
            log.info("allowed keys: %d peers, %d clients", len(self.peers), len(self.clients))

    def reload_if_stale(self, min_interval_s: float = RELOAD_ON_UNKNOWN_KEY_S) -> None:
        """Re-read the directories if one changed since the last reload (a key file copied in
        a moment after this node started must count at its first knock: a peer whose
        handshake was refused does not always try again), and otherwise at most every
        ``min_interval_s`` (a key file edited in place leaves its directory's mtime alone)."""
        if self._dir_mtimes() != self.loaded_dirs or time.monotonic() - self.loaded_at >= min_interval_s:
            self.reload()

    def register(self, name: str, public: bytes) -> Path:
        """Allow ``public`` as the peer ``name``: written to the registered directory (so it
        survives a restart), then reloaded. Raises ValueError for a bad name or key."""
        if self.registered_dir is None:
            raise ValueError("this node keeps no registered keys")
        if not valid_key_name(name):
            raise ValueError(f"bad key name {name!r}: 1-64 letters, digits, '-', '_' or '.'")
        try:
            if len(public) != 40 or not all(c in _Z85 for c in public) or len(z85.decode(public)) != 32:
                raise ValueError
        except (ValueError, KeyError):
            raise ValueError("not a CURVE public key (40 characters of Z85)") from None
        self.registered_dir.mkdir(parents=True, exist_ok=True)
        path = self.registered_dir / f"{name}.key"
        tmp = path.with_suffix(".key.tmp")
        tmp.write_text("#   dynq: registered with `dynq keys register`\n"
                       f"metadata\ncurve\n    public-key = \"{public.decode()}\"\n")
        os.replace(tmp, path)
        self.reload()
        return path

    def revoke(self, name: str) -> bool:
        """Forget the registered key ``name``; False if there was none. Keys in the
        configured ``peer_keys`` directory are the administrator's files: not touched."""
        if self.registered_dir is None or not valid_key_name(name):
            return False
        path = self.registered_dir / f"{name}.key"
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self.reload()
        return True

    def role(self, key: bytes) -> str | None:
        if key in self.peers:
            return "peer"
        if key in self.clients:
            return "client"
        return None


class _Credentials:
    """pyzmq's credentials-provider hook: is this key allowed in this ZAP domain?"""

    def __init__(self, keyring: KeyRing) -> None:
        self.keyring = keyring

    def callback(self, domain: str, key: bytes) -> bool:
        role = self.keyring.role(key)
        if role is None:  # perhaps a key an administrator just added: look again (rate-limited)
            self.keyring.reload_if_stale()
            role = self.keyring.role(key)
        allowed = role == "peer" if domain == GOSSIP_DOMAIN else role is not None
        if not allowed:
            log.warning("refused a connection with an unknown key %s... (domain %s)", key[:8].decode(), domain)
        return allowed


class Authenticator(ThreadAuthenticator):
    """ZAP handler in a thread of its own (it must answer even while the loop is busy)."""

    def __init__(self, context: zmq.Context[Any], keyring: KeyRing) -> None:
        super().__init__(context)
        self.keyring = keyring

    def curve_user_id(self, client_public_key: bytes) -> str:
        key = zmq.utils.z85.encode(client_public_key)
        return f"{self.keyring.role(key) or 'none'}:{key.decode()}"


@dataclass
class NodeSecurity:
    """A node's keys and allow-lists, loaded from its config."""

    server_public: bytes
    server_secret: bytes
    own: CurveKeys  # this node's keypair, with the cluster key as server key
    keyring: KeyRing
    authenticator: Authenticator | None = None

    @classmethod
    def load(cls, server_key: Path, node_key: Path, peer_dir: Path, client_dir: Path,
             registered_dir: Path | None = None) -> NodeSecurity:
        server_public, server_secret = load_keypair(server_key)
        public, secret = load_keypair(node_key)
        keyring = KeyRing(peer_dir, client_dir, registered_dir)
        keyring.reload()
        if public not in keyring.peers:
            log.warning("this node's own public key is not in %s: peers will refuse it", peer_dir)
        return cls(server_public, server_secret, CurveKeys(public, secret, server_public), keyring)

    def start(self, context: zmq.Context[Any]) -> None:
        """Start the ZAP handler; call before binding any socket."""
        self.authenticator = Authenticator(context, self.keyring)
        self.authenticator.start()
        credentials = _Credentials(self.keyring)
        for domain in (REQUEST_DOMAIN, GOSSIP_DOMAIN):  # pyzmq matches domains exactly ("*" only for "")
            self.authenticator.configure_curve_callback(domain=domain, credentials_provider=credentials)

    def serve(self, sock: zmq.Socket[Any], domain: str) -> None:
        """Make ``sock`` a CURVE server of the cluster (before it binds)."""
        sock.curve_server = True
        sock.curve_publickey = self.server_public
        sock.curve_secretkey = self.server_secret
        sock.zap_domain = domain.encode()

    def role_of(self, user_id: str | None) -> str | None:
        """The role a message's User-Id has *now* (None: not allowed any more)."""
        if not user_id or ":" not in user_id:
            return None
        return self.keyring.role(user_id.split(":", 1)[1].encode())

    def stop(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()


def allow_key(keys_dir: Path, name: str, role: str = "peers") -> Path:
    """Make sure ``keys_dir`` holds NAME's keypair (generated once) and that its public key
    is allowed as ``role`` (``peers`` or ``clients``, a subdirectory); the public key file."""
    public = keys_dir / f"{name}.key"
    if not public.exists():
        generate_keys(keys_dir, name)
    allowed = keys_dir / role
    allowed.mkdir(parents=True, exist_ok=True)
    shutil.copy(public, allowed / f"{name}.key")
    return public


def generate_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (mode 0600) into ``directory``."""
    import zmq.auth

    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)


class KeyAdmin:
    """The ``key_register`` / ``key_revoke`` ops: peer keys allowed over the wire (admin)."""

    def __init__(self, security: NodeSecurity | None) -> None:
        self.security = security  # None: the node runs without security; both ops refuse

    def handlers(self) -> dict[str, Handler]:
        return {p.OP_KEY_REGISTER: self.handle_key_register, p.OP_KEY_REVOKE: self.handle_key_revoke}

    def handle_key_register(self, responder: Responder, req: Request) -> None:
        """Allow a new peer's public key (a node about to join), without a restart."""
        name, key = p.get_str(req.body, "name"), p.get_str(req.body, "key")
        if self.security is None:
            raise InvalidRequest("security is off on this node: there are no keys to register")
        try:
            path = self.security.keyring.register(name or "", (key or "").encode())
        except ValueError as exc:
            raise InvalidRequest(f"key_register: {exc}") from exc
        except OSError as exc:
            raise StorageError(f"key_register: cannot write the key: {exc}") from exc
        log.info("registered peer key %s (%s)", name, path)
        responder.ok({"name": name, "path": str(path)})

    def handle_key_revoke(self, responder: Responder, req: Request) -> None:
        """Forget a registered peer key; its connections are refused from their next message."""
        name = p.get_str(req.body, "name")
        if self.security is None:
            raise InvalidRequest("security is off on this node: there are no keys to revoke")
        try:
            removed = self.security.keyring.revoke(name or "")
        except OSError as exc:
            raise StorageError(f"key_revoke: cannot remove the key: {exc}") from exc
        responder.ok({"name": name, "revoked": removed})
