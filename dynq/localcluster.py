"""A cluster of real node processes on one machine: what `dynq up` runs, and what the tests use.

Every node is its own OS process started with the same command systemd runs,
``dynq node start --config <data-dir>/<node>/dynq.toml``, so an operator can stop one
node and start it again by hand. Processes are tracked by PID and only those are ever
signalled.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynq_client.client import Client
from dynq_client.errors import DynqError
from dynq_client.ring import Member
from dynq_client.security import CurveKeys

from .config import render_config


def free_ports(count: int, span: int = 2) -> list[int]:
    """``count`` ports that the kernel says are free on 127.0.0.1 right now, each with the
    ``span - 1`` ports after it free too (a node uses its port + 1 for gossip). All are
    held while searching, so they are distinct. Bounded: gives up after 200 tries."""
    held: list[socket.socket] = []
    found: list[int] = []
    try:
        for _ in range(200):
            if len(found) == count:
                return found
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
            port = s.getsockname()[1]
            extra = []
            try:
                for i in range(1, span):
                    t = socket.socket()
                    held.append(t)
                    t.bind(("127.0.0.1", port + i))
                    extra.append(t)
            except OSError:
                continue
            found.append(port)
        raise RuntimeError(f"could not find {count} free runs of {span} ports")
    finally:
        for s in held:
            s.close()


HTTP_PORT_OFFSET = 2  # a local node's admin API and console: its request port + 2 (gossip has + 1)


def http_port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1]) + HTTP_PORT_OFFSET


def node_command(config_path: Path) -> list[str]:
    """The command line that runs one node: the `dynq` script beside this Python if there
    is one (as systemd would run it), else ``python -m dynq``."""
    script = Path(sys.executable).parent / "dynq"
    if script.exists():
        return [str(script), "node", "start", "--config", str(config_path)]
    found = shutil.which("dynq")
    if found:
        return [found, "node", "start", "--config", str(config_path)]
    return [sys.executable, "-m", "dynq", "node", "start", "--config", str(config_path)]


@dataclass
class LocalNode:
    member: Member
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    static: bool = True  # listed in every node's [[cluster.members]]; False: joins dynamically

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def address(self) -> str:
        return self.member.address

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


@dataclass
class LocalCluster:
    """Configs and processes of a cluster whose nodes all run on this machine."""

    data_dir: Path
    addresses: list[str]
    n: int = 3
    q: int = 64
    r: int = 2
    w: int = 2
    synchronous: str = "full"
    extra_config: str = ""  # appended to every node's TOML (tests use it for limits)
    storage_options: dict[str, int] = field(default_factory=dict)  # more [storage] settings
    security: str = "none"  # "curve": keys generated under data_dir/keys, see client_keys()
    http: bool = False  # admin API and console on each node's port + 2, one token pair in data_dir/http
    nodes: dict[str, LocalNode] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        members = [Member(f"n{i + 1}", address) for i, address in enumerate(self.addresses)]
        for member in members:
            node_dir = self.data_dir / member.name
            self.nodes[member.name] = LocalNode(member, node_dir / "dynq.toml", node_dir / "node.log")
        self.n = min(self.n, len(members))
        self.r = min(self.r, self.n)
        self.w = min(self.w, self.n)

    @classmethod
    def on_ports(cls, data_dir: Path, nodes: int, base_port: int, host: str = "127.0.0.1", **kw: object) -> LocalCluster:
        """Nodes at base_port, base_port+10, ... (each node may use the ports after its own)."""
        addresses = [f"tcp://{host}:{base_port + 10 * i}" for i in range(nodes)]
        return cls(data_dir, addresses, **kw)  # type: ignore[arg-type]

    @property
    def members(self) -> list[Member]:
        """The statically configured members."""
        return [node.member for node in self.nodes.values() if node.static]

    @property
    def seeds(self) -> list[str]:
        return [node.address for node in self.nodes.values()]

    # --- CURVE keys: data_dir/keys/{cluster,admin,app,NODE}.key[_secret], peers/, clients/ ----

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    def _make_keys(self) -> None:
        from .security import allow_key, generate_keys

        if not (self.keys_dir / "cluster.key").exists():
            generate_keys(self.keys_dir, "cluster")
        allow_key(self.keys_dir, "admin", "peers")  # operators: the CLI
        allow_key(self.keys_dir, "app", "clients")  # applications: get/put/delete only
        for node in self.nodes.values():
            allow_key(self.keys_dir, node.name, "peers")

    def _keys_dir_option(self) -> str | None:
        """What render_config takes for this cluster's security (None: plaintext)."""
        return str(self.keys_dir.resolve()) if self.security == "curve" else None

    def client_keys(self, name: str = "admin") -> CurveKeys | None:
        """Keys for a client of this cluster: "admin" (a peer key) or "app" (a client key)."""
        if self.security != "curve":
            return None
        return CurveKeys.from_files(self.keys_dir / f"{name}.key_secret", self.keys_dir / "cluster.key")

    def client(self, seeds: list[str] | None = None, timeout: float = 5.0, keys: str = "admin") -> Client:
        return Client(seeds or self.seeds, timeout=timeout, curve=self.client_keys(keys), keys=None)

    def write_configs(self) -> None:
        if self.security == "curve":
            self._make_keys()
        for node in self.nodes.values():
            if not node.static:
                continue
            node.config_path.parent.mkdir(parents=True, exist_ok=True)
            text = render_config(
                name=node.name,
                listen=node.address,
                data_dir=".",
                members=self.members,
                n=self.n,
                q=self.q,
                r=self.r,
                w=self.w,
                synchronous=self.synchronous,
                storage_options=self.storage_options,
                keys_dir=self._keys_dir_option(),
                **self._http_options(node.address),
            )
            node.config_path.write_text(text + ("\n" + self.extra_config if self.extra_config else ""))

    def _http_options(self, address: str) -> dict[str, Any]:
        """render_config's [http] options for the node at ``address`` (none if http is off)."""
        if not self.http:
            return {}
        return {"http_port": http_port_of(address), "http_tokens_dir": str(self.data_dir / "http")}

    def console_url(self, name: str = "n1", scope: str = "admin") -> str:
        """The console of node ``name``, with the shared ``scope`` token in its fragment."""
        if not self.http:
            raise ValueError("this cluster runs without [http]")
        token = (self.data_dir / "http" / f"http-{scope}.token").read_text().strip()
        return f"http://127.0.0.1:{http_port_of(self.nodes[name].address)}/#token={token}"

    def add_node(self, name: str, address: str) -> LocalNode:
        """Configure (not start) a node the way `dynq config init` does: no static members,
        the cluster's nodes as seeds. It joins with `dynq cluster join`."""
        node_dir = self.data_dir / name
        node = LocalNode(Member(name, address), node_dir / "dynq.toml", node_dir / "node.log", static=False)
        node_dir.mkdir(parents=True, exist_ok=True)
        text = render_config(name=name, listen=address, data_dir=".", members=[], n=self.n, q=self.q,
                             r=self.r, w=self.w, synchronous=self.synchronous, seeds=self.seeds,
                             storage_options=self.storage_options, keys_dir=self._keys_dir_option(),
                             **self._http_options(address))
        self.nodes[name] = node
        if self.security == "curve":  # in the shared peers/ directory: running nodes re-read it
            from .security import allow_key  # when the unknown key first knocks

            allow_key(self.keys_dir, name, "peers")
        node.config_path.write_text(text + ("\n" + self.extra_config if self.extra_config else ""))
        return node

    def command(self, name: str) -> list[str]:
        """The command line that runs node ``name``."""
        return node_command(self.nodes[name].config_path)

    def start(self, name: str, env: dict[str, str] | None = None) -> None:
        """Start one node (``env``: extra environment variables, e.g. NOTIFY_SOCKET)."""
        node = self.nodes[name]
        if node.running:
            return
        with node.log_path.open("ab") as log:
            node.process = subprocess.Popen(
                self.command(name),
                env={**os.environ, **env} if env else None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in a terminal reaches `dynq up`, which stops nodes in order
            )

    def start_all(self) -> None:
        self.write_configs()
        for name in self.nodes:
            self.start(name)

    def signal(self, name: str, sig: int) -> None:
        node = self.nodes[name]
        if node.process is not None and node.process.poll() is None:
            os.kill(node.process.pid, sig)

    def kill(self, name: str) -> None:
        """SIGKILL one node and reap it."""
        node = self.nodes[name]
        if node.process is not None and node.process.poll() is None:
            node.process.kill()
            node.process.wait()

    def stop(self, name: str, timeout: float = 15.0) -> int | None:
        """SIGTERM one node and wait for it to exit (SIGKILL after ``timeout``)."""
        node = self.nodes[name]
        if node.process is None:
            return None
        if node.process.poll() is None:
            node.process.terminate()
            try:
                node.process.wait(timeout)
            except subprocess.TimeoutExpired:
                node.process.kill()
                node.process.wait()
        return node.process.returncode

    def stop_all(self, timeout: float = 15.0) -> None:
        for node in self.nodes.values():
            if node.running:
                assert node.process is not None
                node.process.terminate()
        for name in self.nodes:
            self.stop(name, timeout)

    def wait_ready(self, names: list[str] | None = None, timeout: float = 30.0) -> None:
        """Block until every named node answers a ping and reaches every other running node
        (raise with its log tail if not)."""
        deadline = time.monotonic() + timeout
        for name in names or list(self.nodes):
            node = self.nodes[name]
            while True:
                if node.process is not None and node.process.poll() is not None:
                    raise RuntimeError(
                        f"node {name} exited with code {node.process.returncode}:\n{node.log_tail()}"
                    )
                try:
                    with self.client([node.address], timeout=2.0) as client:
                        reply = client.call(name, "ping", {"peers": True})
                    others = {m for m in self.nodes if m != name and self.nodes[m].running}
                    if others <= set(reply["reachable"]):
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"node {name} cannot reach {sorted(others - set(reply['reachable']))}")
                    time.sleep(0.1)
                except DynqError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"node {name} not ready after {timeout}s:\n{node.log_tail()}")
                    time.sleep(0.1)

    def exited(self) -> list[tuple[str, int]]:
        """Nodes whose process has exited, with their exit codes."""
        out = []
        for node in self.nodes.values():
            if node.process is not None and node.process.poll() is not None:
                out.append((node.name, node.process.returncode))
        return out


def run_up(nodes: int, data_dir: Path, base_port: int, host: str = "127.0.0.1", echo: object = print,
           security: str = "curve", http: bool = True) -> int:
    """Start a local cluster and stay in the foreground until SIGINT/SIGTERM (`dynq up`)."""
    say = echo if callable(echo) else print
    cluster = LocalCluster.on_ports(data_dir, nodes, base_port, host, security=security, http=http)
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    old_int = signal.signal(signal.SIGINT, request_stop)
    old_term = signal.signal(signal.SIGTERM, request_stop)
    try:
        cluster.start_all()
        try:
            cluster.wait_ready(timeout=30)
        except RuntimeError as exc:
            say(f"dynq up: {exc}")
            cluster.stop_all()
            return 1
        say(f"dynq: {nodes} nodes up (N={cluster.n}, R={cluster.r}, W={cluster.w}, Q={cluster.q}); data in {cluster.data_dir}")
        for node in cluster.nodes.values():
            say(f"  {node.name}  {node.address}  pid {node.process.pid if node.process else '-'}  log {node.log_path}")
        if security == "curve":
            keys = cluster.keys_dir
            say(f"CURVE on: keys in {keys}. The CLI and Client(...) find them from this directory; "
                f"elsewhere: export DYNQ_KEYS={keys.resolve()} (or dynq --keys DIR, Client(..., keys=DIR))")
        if http:
            say(f"console: {cluster.console_url('n1')}   (also: dynq console; on loopback only)")
        say(f"try:  dynq put hello world --seed {cluster.seeds[0]}   (Ctrl-C stops the cluster)")
        reported: set[str] = set()
        while not stop_requested:
            for name, code in cluster.exited():
                if name not in reported:
                    reported.add(name)
                    say(f"dynq up: node {name} exited with code {code}; not restarting it. Log tail:")
                    say(cluster.nodes[name].log_tail(10))
                    say(f"  restart it by hand: {' '.join(node_command(cluster.nodes[name].config_path))}")
            time.sleep(0.3)
        say("dynq: stopping nodes...")
        cluster.stop_all()
        for name, code in cluster.exited():
            say(f"  {name} stopped (exit code {code})")
        return 0
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
