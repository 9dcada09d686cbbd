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
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
from zmq.auth.thread import ThreadAuthenticator

from dynq_client.security import CurveKeys, KeyFileError, load_keypair, load_public_key

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


@dataclass
class KeyRing:
    """The allow-lists, reloadable; replaced whole so the ZAP thread never sees half of one."""

    peer_dir: Path
    client_dir: Path
    peers: frozenset[bytes] = frozenset()
    clients: frozenset[bytes] = frozenset()

    def reload(self) -> None:
        peers, clients = read_key_dir(self.peer_dir), read_key_dir(self.client_dir)
        self.peers, self.clients = peers, clients - peers
        log.info("allowed keys: %d peers, %d clients", len(self.peers), len(self.clients))

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
    def load(cls, server_key: Path, node_key: Path, peer_dir: Path, client_dir: Path) -> NodeSecurity:
        server_public, server_secret = load_keypair(server_key)
        public, secret = load_keypair(node_key)
        keyring = KeyRing(peer_dir, client_dir)
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


def generate_keys(directory: Path, name: str) -> tuple[Path, Path]:
    """Write NAME.key (public) and NAME.key_secret (mode 0600) into ``directory``."""
    import zmq.auth

    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.auth.create_certificates(str(directory), name)
    os.chmod(secret, 0o600)
    return Path(public), Path(secret)
