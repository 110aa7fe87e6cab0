"""The fake cluster checked by a client no one here wrote: the real ``kubectl``.

kubectl talks to the fake API server as to a real one: over HTTPS, trusting
only the CA in the kubeconfig, sending the bearer token, discovering the API
first (``/api``, ``/apis``), asking for tables. It lists the pods the
Kubernetes backend made, watches them, and deletes one, which the backend
replaces. Skipped where kubectl is not installed, unless
DRILLYARD_REQUIRE_KUBECTL=1 (CI), where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from backends.kubernetes import RUN_LABEL, KubernetesBackend
from tests.backends.conftest import eventually, k8s_options
from tests.backends.fake_k8s import FakeCluster
from tests.backends.fake_k8s_api import ClusterCA

pytestmark = pytest.mark.anyio
pytest.importorskip("kubernetes_asyncio", reason="needs the k8s extra")

Kubectl = Callable[..., Awaitable[tuple[int, str, str]]]


@pytest.fixture
def kubectl_binary() -> str:
    found = shutil.which("kubectl")
    if found is None:
        if os.environ.get("DRILLYARD_REQUIRE_KUBECTL") == "1":
            pytest.fail("kubectl is not installed but DRILLYARD_REQUIRE_KUBECTL=1: "
                        "apt-get install kubernetes-client (scripts/setup-test.sh does)")
        pytest.skip("kubectl not installed (apt-get install kubernetes-client)")
    return found


@pytest.fixture
async def kubectl(kubectl_binary: str, fake_cluster: FakeCluster,
                  tmp_path: Path) -> AsyncIterator[Kubectl]:
    config = fake_cluster.kubeconfig(tmp_path / "kubectl-config")

    async def run(*args: str, kubeconfig: Path = config) -> tuple[int, str, str]:
        with anyio.fail_after(60):
            done = await anyio.run_process(
                [kubectl_binary, "--kubeconfig", str(kubeconfig), "--cache-dir",
                 str(tmp_path / "kubectl-cache"), "--request-timeout=20s", *args], check=False)
        return done.returncode, done.stdout.decode(), done.stderr.decode()

    yield run


def rows(table: str) -> list[list[str]]:
    """kubectl's table output: one list of cells per pod (the header row dropped)."""
    lines = [line.split() for line in table.strip().splitlines()]
    assert lines and lines[0][:2] == ["NAME", "READY"], table
    return lines[1:]


async def test_kubectl_gets_the_pods_the_backend_made(
        fake_cluster: FakeCluster, tmp_path: Path, kubectl: Kubectl) -> None:
    backend = KubernetesBackend(**k8s_options(fake_cluster, tmp_path))
    async with backend:
        pods = {p.name: p for p in fake_cluster.pods.values()}
        code, out, err = await kubectl("get", "pods")
        assert code == 0, err
        assert {r[0]: r[1:3] for r in rows(out)} == {name: ["1/1", "Running"] for name in pods}
        code, out, err = await kubectl("get", "pods", "-o", "wide")
        assert code == 0, err
        assert {r[0]: r[5] for r in rows(out)} == {n: p.ip for n, p in pods.items()}
        code, out, err = await kubectl("get", "pods", "-l", f"{RUN_LABEL}={backend.run_id}",
                                       "-o", "name")
        assert code == 0 and set(out.split()) == {f"pod/{n}" for n in pods}, err
        code, out, _ = await kubectl("get", "pods", "-l", f"{RUN_LABEL}=someone-else")
        assert code == 0 and out == ""
        name = next(iter(pods))
        code, out, err = await kubectl("get", "pod", name, "-o", "jsonpath={.status.podIP}")
        assert code == 0 and out == pods[name].ip, err
        code, out, err = await kubectl("version", "-o", "json")
        assert code == 0, err
        assert json.loads(out)["serverVersion"]["gitVersion"] == "v1.32.0-drillyard-fake"


async def test_kubectl_trusts_only_the_clusters_ca_and_token(
        fake_cluster: FakeCluster, tmp_path: Path, kubectl: Kubectl) -> None:
    stranger = fake_cluster.kubeconfig(tmp_path / "other-ca", ca=ClusterCA())
    code, _, err = await kubectl("get", "pods", kubeconfig=stranger)
    assert code != 0 and "certificate signed by unknown authority" in err
    rotated = fake_cluster.kubeconfig(tmp_path / "old-token")
    fake_cluster.token = "rotated"
    code, _, err = await kubectl("get", "pods", kubeconfig=rotated)
    assert code != 0 and ("Unauthorized" in err or "must be logged in" in err), err


async def test_kubectl_delete_pod_is_seen_by_watch_and_the_backend_replaces_it(
        fake_cluster: FakeCluster, tmp_path: Path, kubectl: Kubectl,
        kubectl_binary: str) -> None:
    backend = KubernetesBackend(**k8s_options(fake_cluster, tmp_path))
    async with backend:
        victim, other = sorted(p.name for p in fake_cluster.pods.values())
        config = fake_cluster.kubeconfig(tmp_path / "watch-config")
        seen: list[list[str]] = []
        async with await anyio.open_process(
                [kubectl_binary, "--kubeconfig", str(config), "--cache-dir",
                 str(tmp_path / "watch-cache"), "get", "pods", "-w"]) as watch:
            async def read() -> None:
                assert watch.stdout is not None
                buffer = b""
                async for chunk in watch.stdout:
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    seen.extend(line.decode().split() for line in lines if line)

            async with anyio.create_task_group() as tg:
                tg.start_soon(read)
                await eventually(lambda: {r[0] for r in seen[1:]} == {victim, other}, 30,
                                 "the watch listing both pods")
                code, out, err = await kubectl("delete", "pod", victim)
                assert code == 0 and f'pod "{victim}" deleted' in out, err
                await eventually(lambda: any(r[0] == victim and r[2] == "Terminating"
                                             for r in seen), 30, "the deletion watched")
                await eventually(lambda: any(r[0] not in (victim, other) and r[1:3] == [
                    "1/1", "Running"] for r in seen), 60, "a replacement pod Ready, watched")
                watch.terminate()
                tg.cancel_scope.cancel()
        assert backend.replacements == 1 and backend.deaths == 1
        assert victim not in {p.name for p in fake_cluster.pods.values()}
        code, out, _ = await kubectl("get", "pods")
        names = {r[0] for r in rows(out)}
        assert victim not in names and other in names and len(names) == 2
    assert fake_cluster.pods == {} and fake_cluster.live_pids() == []
