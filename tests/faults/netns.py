"""Hosts for the fault suite: one network namespace per node, veths into a bridge.

    root namespace (test driver, clients)
      bridge dqb<id>  10.<a>.<b>.1/24
        ├── veth ─ namespace dynqf-<id>-n1: eth0 10.<a>.<b>.11
        ├── veth ─ namespace dynqf-<id>-n2: eth0 10.<a>.<b>.12
        └── ...

Nodes run inside their namespace (``ip netns exec NS dynq node start ...``: the exec keeps
the PID, so the driver signals the node itself). The driver reaches every node through
the bridge. Partitions are nftables DROP rules inside the namespaces (one table,
``inet dynqfault``, per namespace, replaced wholesale on every change), so dropping the
table heals. Names carry the driver's PID (and a counter), so concurrent runs do not
collide; :func:`remove_stale` clears what a killed earlier run left behind.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from typing import Iterable, Sequence

PREFIX = "dynqf-"
_counter = 0


def run(*args: str, check: bool = True, input_: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True, input=input_, timeout=30)


def unavailable_reason() -> str | None:
    """Why namespaces and nftables cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "the fault suite needs root (network namespaces, nftables, tmpfs)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"'{tool}' is not installed (scripts/test installs nftables as root)"
    probe = f"{PREFIX}probe-{os.getpid()}"
    try:
        run("ip", "netns", "add", probe)
        run("ip", "netns", "exec", probe, "nft", "add", "table", "inet", "probe")
    except (subprocess.CalledProcessError, OSError) as exc:
        return f"cannot create a network namespace with nftables: {getattr(exc, 'stderr', exc)}"
    finally:
        run("ip", "netns", "del", probe, check=False)
    return None


def remove_stale() -> None:
    """Delete namespaces and bridges of earlier runs whose driver process is gone."""
    out = run("ip", "netns", "list", check=False).stdout
    for line in out.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(rf"{PREFIX}(\d+)-", name)
        if m and not _alive(int(m.group(1))):
            run("ip", "netns", "del", name, check=False)
    links = run("ip", "-o", "link", "show", "type", "bridge", check=False).stdout
    for m in re.finditer(r"^\d+: (dqb(\d+)x\d+)[:@]", links, re.M):
        if not _alive(int(m.group(2))):
            run("ip", "link", "del", m.group(1), check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _free_subnet(start: int) -> str:
    """A 10.x.y.0/24 that no interface here uses (another run's bridge, say)."""
    used = set(re.findall(r"inet (10\.\d+\.\d+)\.", run("ip", "-o", "-4", "addr", "show", check=False).stdout))
    for i in range(10_000):
        n = (start + i) % 25_000
        subnet = f"10.{100 + n // 250}.{n % 250}"
        if subnet not in used:
            return subnet
    raise RuntimeError("no free 10.x.y.0/24 subnet")


@dataclass
class Hosts:
    """``count`` namespaces on one bridge; :meth:`close` removes all of it (idempotent)."""

    count: int
    names: list[str] = field(default_factory=list)  # namespace of host i
    ips: list[str] = field(default_factory=list)  # address of host i
    bridge: str = ""
    gateway: str = ""  # the bridge's address: where the driver's packets come from
    _blocked: dict[int, set[str]] = field(default_factory=dict)  # host -> peer addresses it drops

    def __post_init__(self) -> None:
        global _counter
        _counter += 1
        pid = os.getpid()
        tag = f"{pid}x{_counter}"
        self.bridge = f"dqb{tag}"[:15]
        subnet = _free_subnet(pid + _counter * 37)
        self.gateway = f"{subnet}.1"
        self.names = [f"{PREFIX}{pid}-{_counter}-n{i + 1}" for i in range(self.count)]
        self.ips = [f"{subnet}.{11 + i}" for i in range(self.count)]
        try:
            self._create()
        except BaseException:
            self.close()
            raise

    def _create(self) -> None:
        run("ip", "link", "add", self.bridge, "type", "bridge")
        run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        run("ip", "link", "set", self.bridge, "up")
        for i, (ns, ip) in enumerate(zip(self.names, self.ips)):
            veth = f"{self.bridge}v{i}"[:15]
            run("ip", "netns", "add", ns)
            run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
            run("ip", "link", "set", veth, "master", self.bridge, "up")
            run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
            run("ip", "-n", ns, "link", "set", "eth0", "up")
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "route", "add", "default", "via", self.gateway)
            self._blocked[i] = set()

    def exec_prefix(self, i: int) -> list[str]:
        return ["ip", "netns", "exec", self.names[i]]

    # --- partitions ----------------------------------------------------------------------

    def _apply(self, i: int) -> None:
        ns = self.names[i]
        run("ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "dynqfault", check=False)
        peers = sorted(self._blocked[i])
        if not peers:
            return
        addrs = ", ".join(peers)
        rules = (
            "table inet dynqfault {\n"
            f"  chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {addrs} }} drop; }}\n"
            f"  chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {addrs} }} drop; }}\n"
            "}\n"
        )
        run("ip", "netns", "exec", ns, "nft", "-f", "-", input_=rules)

    def partition(self, groups: Sequence[Iterable[int]]) -> None:
        """Hosts in different groups cannot talk to each other (both directions dropped);
        hosts in no group keep talking to everyone. Replaces any earlier partition."""
        member_of: dict[int, int] = {}
        for g, group in enumerate(groups):
            for host in group:
                member_of[host] = g
        for i in range(self.count):
            self._blocked[i] = {
                self.ips[j] for j in range(self.count)
                if i in member_of and j in member_of and member_of[i] != member_of[j]
            }
            self._apply(i)

    def cut(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Drop traffic between each pair (for non-transitive 'bridge' partitions)."""
        for i in range(self.count):
            self._blocked[i] = set()
        for a, b in pairs:
            self._blocked[a].add(self.ips[b])
            self._blocked[b].add(self.ips[a])
        for i in range(self.count):
            self._apply(i)

    def heal(self) -> None:
        for i in range(self.count):
            if self._blocked.get(i):
                self._blocked[i] = set()
                self._apply(i)

    def rules(self) -> dict[str, str]:
        """Each namespace's ruleset (for debugging a failed run)."""
        return {ns: run("ip", "netns", "exec", ns, "nft", "list", "ruleset", check=False).stdout for ns in self.names}

    # --- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        """Remove every namespace (and with it its veth end and rules) and the bridge.
        The caller stops the processes inside first: deleting a namespace does not."""
        for ns in self.names:
            run("ip", "netns", "del", ns, check=False)
        if self.bridge:
            run("ip", "link", "del", self.bridge, check=False)
