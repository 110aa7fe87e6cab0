"""Fixtures for backend tests: real worker processes, the fake cluster, a real Ray
cluster, and a backend fixture parametrised over inprocess / subprocess /
kubernetes / ray."""

from __future__ import annotations

import inspect
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

import backends.testenvs  # noqa: F401 - registers "cpu" and "probe" in the driver too
from backends.inprocess import InProcessBackend
from backends.testenvs import PLUGIN
from engine.backend import Backend
from tests.backends.fake_k8s import REPO, FakeCluster

BACKENDS = ("inprocess", "subprocess", "kubernetes", "ray")


async def eventually(condition: Callable[[], bool | Awaitable[bool]], deadline: float = 10.0,
                     what: str = "condition") -> None:
    """Poll ``condition`` (a function, or a coroutine function) until it holds;
    fail after ``deadline`` seconds."""
    end = time.monotonic() + deadline
    while True:
        held = condition()
        if inspect.isawaitable(held):
            held = await held
        if held:
            return
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not hold within {deadline}s")
        await anyio.sleep(0.01)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class WorkerProcess:
    proc: subprocess.Popen[bytes]
    host: str
    port: int
    token: str

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@contextmanager
def worker_process(tmp_path: Path, *args: str, token: str = "s3cret-token",
                   env: dict[str, str] | None = None) -> Iterator[WorkerProcess]:
    """``python -m backends.worker`` as a real process, stopped (SIGKILL) on exit."""
    cmd = [sys.executable, "-m", "backends.worker", "--port", "0", "--plugin", PLUGIN, *args]
    if "DRILLYARD_WORKER_TOKEN" in (env or {}):
        token = (env or {})["DRILLYARD_WORKER_TOKEN"]
    else:
        token_file = tmp_path / "token"
        token_file.write_text(token)
        cmd += ["--token-file", str(token_file)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"worker did not start: {proc.stderr.read()!r}")  # type: ignore[union-attr]
        ready = json.loads(line)
        yield WorkerProcess(proc, ready["host"], ready["port"], token)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
async def fake_cluster(anyio_backend: str, tmp_path: Path) -> AsyncIterator[FakeCluster]:
    cluster = FakeCluster()
    async with cluster.running(tmp_path):
        yield cluster


def k8s_options(cluster: FakeCluster, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Options for KubernetesBackend against the fake cluster."""
    options: dict[str, Any] = {
        "kubeconfig": str(cluster.kubeconfig(tmp_path / "kubeconfig")),
        "pods": 2, "slots_per_pod": 4, "port": free_port(), "image": "drillyard-worker:test",
        "plugins": [PLUGIN], "health_interval": 0.5, "health_timeout": 2.0,
        "ready_timeout": 30.0,
    }
    options.update(overrides)
    return options


BackendFactory = Callable[..., Backend]


@pytest.fixture(params=BACKENDS)
async def make_backend(request: pytest.FixtureRequest, anyio_backend: str,
                       tmp_path: Path) -> AsyncIterator[BackendFactory]:
    """A factory of backends of one kind; ``slots`` is the total slot count wanted."""
    from backends.kubernetes import KubernetesBackend
    from backends.subprocess import SubprocessBackend

    kind: str = request.param
    if kind == "ray":
        from backends.ray import RayBackend

        ray_cluster = request.getfixturevalue("ray_cluster")

        def make_ray(slots: int = 4, **options: Any) -> Backend:
            opts = ray_options(ray_cluster, slots_per_actor=max(1, slots // 2))
            opts.update(options)
            return RayBackend(**opts)
        yield make_ray
        return
    if kind != "kubernetes":
        def make(slots: int = 4, **options: Any) -> Backend:
            if kind == "inprocess":
                return InProcessBackend(slots=slots)
            options.setdefault("plugins", [PLUGIN])
            return SubprocessBackend(workers=2, slots_per_worker=max(1, slots // 2), **options)
        yield make
        return
    pytest.importorskip("kubernetes_asyncio", reason="needs the k8s extra")
    cluster = FakeCluster()
    async with cluster.running(tmp_path):
        def make_k8s(slots: int = 4, **options: Any) -> Backend:
            opts = k8s_options(cluster, tmp_path, slots_per_pod=max(1, slots // 2))
            opts.update(options)
            return KubernetesBackend(**opts)
        yield make_k8s


@pytest.fixture(scope="package")
def ray_cluster() -> Iterator[Any]:
    """One real Ray cluster (a head and two worker nodes) for the backend tests.

    Skipped when Ray is not installed, unless DRILLYARD_REQUIRE_RAY=1 (CI),
    where a missing Ray is a failure. Torn down after the package's tests, and
    no process of it may be left."""
    try:
        import ray  # noqa: F401
    except ModuleNotFoundError:
        if os.environ.get("DRILLYARD_REQUIRE_RAY") == "1":
            pytest.fail("ray is not installed but DRILLYARD_REQUIRE_RAY=1: "
                        "pip install -e '.[ray]'")
        pytest.skip("ray not installed: pip install -e '.[ray]'")
    from tests.backends.ray_cluster import RayTestCluster

    cluster = RayTestCluster(workers=2)
    try:
        yield cluster
    finally:
        cluster.shutdown()


def ray_options(cluster: Any, **overrides: Any) -> dict[str, Any]:
    """Options for RayBackend on the test cluster."""
    options: dict[str, Any] = {
        "address": cluster.address, "actors": 2, "slots_per_actor": 4, "plugins": [PLUGIN],
        "health_interval": 0.5, "health_timeout": 5.0, "ready_timeout": 60.0,
    }
    options.update(overrides)
    return options
