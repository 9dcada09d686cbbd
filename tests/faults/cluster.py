"""A :class:`~dynq.localcluster.LocalCluster` whose nodes run inside network namespaces.

Same configs, same command line (``dynq node start --config ...``, prefixed with ``ip netns
exec NS``, which execs it in place so the PID is the node's), same kill/stop/start; plus
what the nemeses need: SIGSTOP/SIGCONT, a small tmpfs under one node's data directory, and
wiping a node's database. Teardown (:meth:`FaultCluster.close`) continues paused nodes,
stops every process by PID, unmounts and removes the namespaces, whatever state the test
left them in.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from dynq.localcluster import LocalCluster, node_command

from .netns import Hosts, run

PORT = 7100


class FaultCluster(LocalCluster):
    hosts: Hosts
    paused: set[str]
    mounts: list[Path]

    @classmethod
    def create(cls, data_dir: Path, nodes: int = 5, tmpfs_node: str | None = None, tmpfs_mb: int = 48,
               **kw: object) -> FaultCluster:
        hosts = Hosts(nodes)
        try:
            cluster = cls(data_dir, [f"tcp://{ip}:{PORT}" for ip in hosts.ips], **kw)  # type: ignore[arg-type]
        except BaseException:
            hosts.close()
            raise
        cluster.hosts, cluster.paused, cluster.mounts = hosts, set(), []
        try:
            if tmpfs_node is not None:
                cluster.mount_tmpfs(tmpfs_node, tmpfs_mb)
                # the log stays off the small disk: a node's log must not be what fills it
                cluster.nodes[tmpfs_node].log_path = cluster.data_dir / f"{tmpfs_node}.log"
        except BaseException:
            cluster.close()
            raise
        return cluster

    def index(self, name: str) -> int:
        return list(self.nodes).index(name)

    def command(self, name: str) -> list[str]:
        """The node's command line, run inside its network namespace."""
        return self.hosts.exec_prefix(self.index(name)) + node_command(self.nodes[name].config_path)

    def pause(self, name: str) -> None:
        self.signal(name, signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        self.signal(name, signal.SIGCONT)
        self.paused.discard(name)

    def mount_tmpfs(self, name: str, size_mb: int) -> Path:
        path = self.nodes[name].config_path.parent
        path.mkdir(parents=True, exist_ok=True)
        run("mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(path))
        self.mounts.append(path)
        return path

    def wipe(self, name: str) -> None:
        """Delete a (stopped) node's database files; it comes back empty, as a new actor."""
        assert not self.nodes[name].running
        data = self.nodes[name].config_path.parent
        for suffix in ("", "-wal", "-shm"):
            (data / f"dynq.db{suffix}").unlink(missing_ok=True)

    def close(self) -> None:
        """Everything this cluster made goes away: processes (by PID), mounts, namespaces."""
        try:
            for name in list(getattr(self, "paused", ())):
                self.resume(name)
            for node in self.nodes.values():
                if node.running and node.process is not None:
                    os.kill(node.process.pid, signal.SIGCONT)  # a paused node cannot act on SIGTERM
            self.stop_all(timeout=10)
            for node in self.nodes.values():
                if node.process is not None and node.process.poll() is None:
                    node.process.kill()
                    node.process.wait()
        finally:
            for path in reversed(getattr(self, "mounts", [])):
                run("umount", "-l", str(path), check=False)
            self.mounts = []
            if hasattr(self, "hosts"):
                self.hosts.close()
