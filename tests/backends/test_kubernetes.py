"""The Kubernetes backend against the fake cluster (real client, real HTTPS, real workers)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from backends.kubernetes import APP_LABEL, RUN_LABEL, KubernetesBackend
from backends.testenvs import PLUGIN
from engine import Agent, Engine, EnvSpec
from engine.envs.arithmetic import arithmetic_tasks
from engine.errors import ConfigError, InfraError
from tests.backends.conftest import eventually, free_port, k8s_options
from tests.backends.fake_k8s import FakeCluster
from tests.backends.fake_k8s_api import ClusterCA
from tests.support.scripted import calculator_then_answer

pytestmark = pytest.mark.anyio
pytest.importorskip("kubernetes_asyncio", reason="needs the k8s extra")

EngineFactory = Callable[..., Engine]


async def test_pods_from_the_template_serve_rollouts_and_are_deleted(
        fake_cluster: FakeCluster, tmp_path: Path, make_engine: EngineFactory) -> None:
    resources = {"requests": {"cpu": "500m", "memory": "256Mi"},
                 "limits": {"cpu": "1", "memory": "512Mi"}}
    backend = KubernetesBackend(**k8s_options(fake_cluster, tmp_path, resources=resources,
                                              labels={"team": "rl"}))
    async with make_engine(backend=backend) as engine:
        pods = list(fake_cluster.pods.values())
        assert len(pods) == 2 and len(backend.workers) == 2
        for pod in pods:
            labels = pod.obj["metadata"]["labels"]
            assert labels[APP_LABEL] == "drillyard-worker" and labels["team"] == "rl"
            assert labels[RUN_LABEL] == backend.run_id
            spec = pod.obj["spec"]
            assert spec["securityContext"]["runAsNonRoot"] is True
            (c,) = spec["containers"]
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            assert c["securityContext"]["runAsNonRoot"] is True
            assert c["resources"] == resources
            assert c["readinessProbe"]["httpGet"]["path"] == "/health"
            assert pod.obj["status"]["phase"] == "Running"
        ips = {p.ip for p in pods}
        assert len(ips) == 2 and all(ip and ip.startswith("127.0.0.") and ip != "127.0.0.1"
                                     for ip in ips)
        run = await engine.run(arithmetic_tasks(4), Agent(calculator_then_answer()),
                               environment="probe", samples=2, scorer="arithmetic")
        rollouts = await run.rollouts()
        assert {r.state for r in rollouts} == {"done"}
        assert {(r.worker or "").split("@")[1].split(":")[0] for r in rollouts} == ips
    assert fake_cluster.pods == {}
    assert len(fake_cluster.started_pids) == 2 and fake_cluster.live_pids() == []


async def test_an_evicted_pod_is_replaced(fake_cluster: FakeCluster, tmp_path: Path) -> None:
    backend = KubernetesBackend(**k8s_options(fake_cluster, tmp_path))
    async with backend:
        victim = next(iter(fake_cluster.pods.values())).name
        await fake_cluster.evict(victim)
        await eventually(lambda: victim not in [p.name for p in fake_cluster.pods.values()]
                         and len(backend.workers) == 2, 30, "replacement pod")
        assert backend.replacements == 1 and backend.deaths == 1
        assert all(victim not in w.name for w in backend.workers.values())
    assert fake_cluster.pods == {} and fake_cluster.live_pids() == []


async def test_a_pod_deleted_mid_rollout_is_retried_elsewhere(
        fake_cluster: FakeCluster, tmp_path: Path, make_engine: EngineFactory) -> None:
    backend = KubernetesBackend(**k8s_options(fake_cluster, tmp_path, pods=1))
    stepping = anyio.Event()
    calls = {"n": 0}

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "user":
            calls["n"] += 1
            if calls["n"] == 1:
                stepping.set()
                return {"tool_calls": [{"name": "hang", "arguments": {}}]}
        return calculator_then_answer().handler(messages, tools)

    from engine.policy.scripted import ScriptedPolicy

    async with make_engine(backend=backend, step_timeout=60) as engine:
        async def delete_it() -> None:
            await stepping.wait()
            await fake_cluster.delete_pod(next(iter(fake_cluster.pods.values())).name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(delete_it)
            run = await engine.run(arithmetic_tasks(1), Agent(ScriptedPolicy(handler)),
                                   environment="probe", scorer="arithmetic")
        (r,) = await run.rollouts()
        attempts = await engine.store.attempts(r.id)
    assert r.state == "done"
    assert [a.state for a in attempts] == ["error", "done"]
    assert "EnvironmentLost" in (attempts[0].error or "")
    assert attempts[0].worker != attempts[1].worker
    assert fake_cluster.pods == {} and fake_cluster.live_pids() == []


async def test_cancelled_mid_create_leaves_nothing(tmp_path: Path) -> None:
    cluster = FakeCluster(create_delay=0.5)
    async with cluster.running(tmp_path):
        backend = KubernetesBackend(**k8s_options(cluster, tmp_path, pods=3))
        async with anyio.create_task_group() as tg:
            tg.start_soon(backend.start)
            await eventually(lambda: cluster.creates == 1, 20, "a create in flight")
            assert cluster.pods == {}  # it has not landed yet
            tg.cancel_scope.cancel()
        # the create landed after the cancel, and close deleted the pod anyway
        assert [kind for _, _, kind, _ in cluster.events][::len(cluster.events) - 1] == [
            "ADDED", "DELETED"]
        assert cluster.creates == 1 and cluster.pods == {}
        await eventually(lambda: cluster.live_pids() == [], 10, "pod processes gone")


async def test_pods_that_never_get_ready_are_a_clear_error(
        fake_cluster: FakeCluster, tmp_path: Path) -> None:
    backend = KubernetesBackend(**k8s_options(
        fake_cluster, tmp_path, pods=1, max_unready_losses=2,
        command=["python", "-c", "import sys; sys.exit(3)"]))
    with pytest.raises(InfraError, match=r"3 pods in a row failed before they were ready.*"
                                         r"exited with code 3"):
        await backend.start()
    assert fake_cluster.creates == 3 and fake_cluster.pods == {}


async def test_forbidden_pod_creation_is_a_clear_error(tmp_path: Path) -> None:
    cluster = FakeCluster(forbid_create=True)
    async with cluster.running(tmp_path):
        backend = KubernetesBackend(**k8s_options(cluster, tmp_path, namespace="rl"))
        with pytest.raises(ConfigError) as info:
            await backend.start()
        text = str(info.value)
        assert "namespace 'rl'" in text and "forbids creating pods" in text
        assert "cannot create resource" in text and "RoleBinding" in text
        assert cluster.pods == {} and cluster.started_pids == []


async def test_an_unreachable_cluster_is_a_clear_error(tmp_path: Path) -> None:
    cluster = FakeCluster()
    async with cluster.running(tmp_path):
        kubeconfig = cluster.kubeconfig(tmp_path / "kubeconfig")
    # the server is gone now: nothing listens at its address
    backend = KubernetesBackend(kubeconfig=str(kubeconfig), port=free_port(), api_timeout=5)
    with anyio.fail_after(20), pytest.raises(ConfigError, match="unreachable while listing"):
        await backend.start()


async def test_the_api_is_https_and_an_untrusted_certificate_is_a_clear_error(
        tmp_path: Path) -> None:
    cluster = FakeCluster()
    async with cluster.running(tmp_path):
        assert cluster.url.startswith("https://127.0.0.1:")
        trusted = json.loads(cluster.kubeconfig(tmp_path / "kubeconfig").read_text())
        (entry,) = trusted["clusters"]
        assert entry["cluster"]["certificate-authority-data"] == cluster.ca.data
        assert "insecure-skip-tls-verify" not in entry["cluster"]
        stranger = cluster.kubeconfig(tmp_path / "other-ca", ca=ClusterCA())
        with pytest.raises(ConfigError) as info:
            await KubernetesBackend(kubeconfig=str(stranger), api_timeout=10).start()
        assert "TLS certificate is not trusted while listing pods" in str(info.value)
        assert "certificate verify failed" in str(info.value)
        assert "certificate-authority-data" in str(info.value)
        assert cluster.pods == {}


async def test_wrong_credentials_and_missing_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot load the cluster config"):
        await KubernetesBackend(kubeconfig=str(tmp_path / "nope")).start()
    cluster = FakeCluster()
    async with cluster.running(tmp_path):
        path = cluster.kubeconfig(tmp_path / "kubeconfig")
        cluster.token = "rotated"
        with pytest.raises(ConfigError, match="rejected our credentials"):
            await KubernetesBackend(kubeconfig=str(path)).start()


@pytest.mark.kubernetes_cluster
async def test_on_a_real_cluster(tmp_path: Path, make_engine: EngineFactory) -> None:
    """Set DRILLYARD_K8S_IMAGE (an image with drillyard installed) and a kubeconfig."""
    kubeconfig = os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config"))
    image = os.environ.get("DRILLYARD_K8S_IMAGE")
    if not Path(kubeconfig).is_file() or not image:  # noqa: ASYNC240 - a test guard
        pytest.skip("no kubeconfig, or DRILLYARD_K8S_IMAGE not set")
    backend = KubernetesBackend(
        pods=2, slots_per_pod=2, image=image, kubeconfig=kubeconfig, plugins=[PLUGIN],
        namespace=os.environ.get("DRILLYARD_K8S_NAMESPACE", "default"))
    async with make_engine(backend=backend) as engine:
        run = await engine.run(arithmetic_tasks(4), Agent(calculator_then_answer()),
                               environment=EnvSpec("probe"), scorer="arithmetic")
        assert await run.counts() == {"done": 4}
