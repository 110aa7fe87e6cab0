"""A real Ray cluster on this machine for the tests: a head and worker nodes on loopback.

Every node is a real set of Ray processes (GCS, raylet, workers) started by
``ray.cluster_utils.Cluster``, all bound to 127.0.0.1. The head has no CPUs
(only the test process, the driver, attaches there), so actors land on the
worker nodes. Nodes can be added and killed (every process of the node, as
a machine that is lost); `shutdown` stops the rest and checks that no
process of any node is left.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import psutil

LOOPBACK = "127.0.0.1"
# fast death detection (a lost node is noticed in ~1.5 s, not 30 s), no idle workers started
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
                 "health_check_initial_delay_ms": 0, "enable_worker_prestart": False,
                 "prestart_worker_first_driver": False}
NODE_CPUS = 2


class RayTestCluster:
    """Head + ``workers`` worker nodes of ``NODE_CPUS`` CPUs each; the driver connected."""

    def __init__(self, workers: int = 2) -> None:
        from ray.cluster_utils import Cluster

        self._dir = tempfile.mkdtemp(prefix="dy-ray-", dir="/tmp")  # short: socket paths
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": LOOPBACK, "include_dashboard": False,
            "temp_dir": self._dir, "_system_config": SYSTEM_CONFIG})
        self.pids: set[int] = set()  # every process any node ever ran
        self.nodes: dict[Any, dict[str, float]] = {}  # worker node -> its custom resources
        self._track(self.cluster.head_node)
        for _ in range(workers):
            self.add_node()
        import ray

        ray.init(address=self.address, log_to_driver=False, _node_ip_address=LOOPBACK)

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_node(self, num_cpus: int = NODE_CPUS, **resources: float) -> Any:
        node = self.cluster.add_node(num_cpus=num_cpus, node_ip_address=LOOPBACK,
                                     resources=resources or None)
        self.cluster.wait_for_nodes()
        self.nodes[node] = resources
        self._track(node)
        return node

    def kill_node(self, node: Any) -> None:
        """SIGKILL every process of a worker node: raylet, workers, actors."""
        self._track(node)
        self.cluster.remove_node(node, allow_graceful=False)
        del self.nodes[node]

    def ensure_workers(self, count: int = 2) -> None:
        """Back to ``count`` plain worker nodes, after a test added or killed some."""
        for node in [n for n, extra in self.nodes.items() if extra]:
            self.kill_node(node)
        while len(self.nodes) < count:
            self.add_node()

    def _track(self, node: Any) -> None:
        for proc in _node_processes(node):
            self.pids.add(proc.pid)
            with contextlib.suppress(psutil.Error):
                self.pids.update(c.pid for c in proc.children(recursive=True))

    def live_processes(self) -> list[psutil.Process]:
        """Every process of any node (and any Ray worker of ours) still running."""
        alive = []
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if proc.status() != psutil.STATUS_ZOMBIE:
                    alive.append(proc)
        return alive

    def worker_processes(self) -> list[psutil.Process]:
        """Ray worker processes (actors) now running on the cluster's raylets."""
        found = []
        for node in [self.cluster.head_node, *self.nodes]:
            for raylet in _node_processes(node, "raylet"):
                with contextlib.suppress(psutil.Error):
                    found += [c for c in raylet.children(recursive=True)
                              if c.status() != psutil.STATUS_ZOMBIE]
        self.pids.update(p.pid for p in found)
        return found

    def shutdown(self) -> None:
        import ray

        for node in [self.cluster.head_node, *self.nodes]:
            self._track(node)
        ray.shutdown()
        self.cluster.shutdown()
        _, left = psutil.wait_procs(self.live_processes(), timeout=15)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
        assert not left, f"Ray processes left after shutdown: {[p.name() for p in left]}"


def _node_processes(node: Any, kind: str | None = None) -> Iterator[psutil.Process]:
    for name, infos in node.all_processes.items():
        if kind is not None and name != kind:
            continue
        for info in infos:
            with contextlib.suppress(psutil.Error):
                yield psutil.Process(info.process.pid)
