"""A real Ray cluster on this machine for the tests: a head and worker nodes on loopback.

The head (GCS and a raylet with no CPUs: only the test process, the driver,
attaches there) is started by ``ray.cluster_utils.Cluster``; each worker node
is a ``ray start --address=<head> --block`` process with its raylet and
workers, as a user adds a machine. Nodes can be added while tests run and
killed (SIGKILL to every process of the node, as a machine that is lost);
`shutdown` stops the rest and checks that no process of any node is left.
Everything is bound to one loopback address, 127.0.0.64 (Ray rewrites
127.0.0.1 in a cluster address to the machine's outside address).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

LOOPBACK = "127.0.0.64"
# fast death detection (a lost node is noticed in ~3 s, not 30 s), no idle workers started
SYSTEM_CONFIG = {"health_check_period_ms": 500, "health_check_failure_threshold": 6,
                 "health_check_initial_delay_ms": 0, "enable_worker_prestart": False,
                 "prestart_worker_first_driver": False}
NODE_CPUS = 2
RAY_CLI = str(Path(sys.executable).with_name("ray"))


@dataclass(eq=False)
class WorkerNode:
    """One ``ray start`` node: its process, its Ray node id, its custom resources."""

    name: str
    process: subprocess.Popen[bytes]
    resources: dict[str, float]
    node_id: str = ""
    pids: set[int] = field(default_factory=set)


class RayTestCluster:
    """Head + ``workers`` worker nodes of ``NODE_CPUS`` CPUs each; the driver connected."""

    def __init__(self, workers: int = 2) -> None:
        from ray.cluster_utils import Cluster

        self._dir = tempfile.mkdtemp(prefix="dy-ray-", dir="/tmp")  # short: socket paths
        self._serial = itertools.count(1)
        self.pids: set[int] = set()  # every process any node ever ran
        self.nodes: list[WorkerNode] = []
        # Ray 2.60's Cluster writes the head's address to <temp>/ray/ray_current_cluster
        # (its default temp folder, whatever temp_dir says) and no longer creates the folder
        from ray._common.utils import get_default_ray_temp_dir

        os.makedirs(get_default_ray_temp_dir(), exist_ok=True)  # type: ignore[no-untyped-call]
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": LOOPBACK, "include_dashboard": False,
            "temp_dir": self._dir, "_system_config": SYSTEM_CONFIG})
        import ray

        ray.init(address=self.address, log_to_driver=False, _node_ip_address=LOOPBACK)
        try:
            for _ in range(workers):
                self.add_node()
        except BaseException:
            self.shutdown()
            raise

    @property
    def address(self) -> str:
        return str(self.cluster.address)

    def add_node(self, num_cpus: int = NODE_CPUS, timeout: float = 60.0,
                 **resources: float) -> WorkerNode:
        """Start a worker node (``ray start``) and wait until the cluster counts it."""
        import ray

        name = f"dy-node-{next(self._serial)}"
        cmd = [RAY_CLI, "start", f"--address={self.address}", f"--num-cpus={num_cpus}",
               f"--node-ip-address={LOOPBACK}", f"--node-name={name}", "--block",
               "--disable-usage-stats", "--num-gpus=0"]
        if resources:
            cmd.append(f"--resources={json.dumps(resources)}")
        with Path(self._dir, f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        node = WorkerNode(name, proc, dict(resources))
        self.nodes.append(node)
        self.pids.add(proc.pid)
        deadline = time.monotonic() + timeout
        while not node.node_id:  # poll the GCS until the node has registered
            if proc.poll() is not None or time.monotonic() > deadline:
                self.kill_node(node)
                tail = Path(self._dir, f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"ray node {name} did not join: {tail}")
            node.node_id = next((n["NodeID"] for n in ray.nodes()  # type: ignore[no-untyped-call]
                                 if n["Alive"] and n.get("NodeName") == name), "")
            time.sleep(0.05)
        self._track(node)
        return node

    def kill_node(self, node: WorkerNode) -> None:
        """SIGKILL every process of a worker node: ``ray start``, raylet, workers, actors."""
        self._track(node)
        for pid in node.pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.process.pid, signal.SIGKILL)
        node.process.wait()
        with contextlib.suppress(ValueError):
            self.nodes.remove(node)

    def ensure_workers(self, count: int = 2) -> None:
        """Back to ``count`` plain worker nodes, after a test added or killed some."""
        for node in [n for n in self.nodes if n.resources or not _running(n)]:
            self.kill_node(node)
        while len(self.nodes) > count:
            self.kill_node(self.nodes[-1])
        while len(self.nodes) < count:
            self.add_node()

    def _track(self, node: WorkerNode) -> None:
        with contextlib.suppress(psutil.Error):
            tree = [psutil.Process(node.process.pid)]
            tree += tree[0].children(recursive=True)
            node.pids.update(p.pid for p in tree)
        self.pids.update(node.pids)

    def head_processes(self) -> list[psutil.Process]:
        found = []
        head: Any = self.cluster.head_node
        for infos in head.all_processes.values():
            for info in infos:
                with contextlib.suppress(psutil.Error):
                    proc = psutil.Process(info.process.pid)
                    found += [proc, *proc.children(recursive=True)]
        return found

    def processes(self) -> list[psutil.Process]:
        """Every live process of the cluster now: the head's and each node's tree."""
        found = self.head_processes()
        for node in self.nodes:
            self._track(node)
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(node.process.pid)
                found += [root, *root.children(recursive=True)]
        self.pids.update(p.pid for p in found)
        return [p for p in found if _alive(p)]

    def live_processes(self) -> list[psutil.Process]:
        """Every process any node ever ran that still runs."""
        alive = []
        for pid in self.pids:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(pid)
                if _alive(proc):
                    alive.append(proc)
        return alive

    def shutdown(self) -> None:
        import ray

        self.pids.update(p.pid for p in self.processes())
        # a driver whose cluster is already gone can block in ray.shutdown: bound it
        disconnect = threading.Thread(target=ray.shutdown, daemon=True)
        disconnect.start()
        disconnect.join(30)
        for node in list(self.nodes):
            self.kill_node(node)
        self.cluster.shutdown()  # type: ignore[no-untyped-call]
        _, left = psutil.wait_procs(self.live_processes(), timeout=15)
        for proc in left:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        shutil.rmtree(self._dir, ignore_errors=True)
        assert not left, f"Ray processes left after shutdown: {[p.name() for p in left]}"


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _running(node: WorkerNode) -> bool:
    return node.process.poll() is None


def node_processes(node: WorkerNode) -> list[Any]:
    """The live processes of one worker node."""
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(node.process.pid)
        return [p for p in [root, *root.children(recursive=True)] if _alive(p)]
    return []
