"""The Kubernetes backend: worker pods created with kubernetes-asyncio.

    Engine(backend="kubernetes", backend_options={
        "namespace": "rl", "image": "registry/drillyard-worker:0.1", "pods": 8,
        "slots_per_pod": 4, "kubeconfig": "~/.kube/config"})

``start`` creates ``pods`` pods from a template (labels, resources, a non-root
security context without privilege escalation, a readiness probe on
``/health``), follows them through a watch until each is Running and Ready,
and talks to each by its pod IP over the worker protocol. A pod that is
deleted, evicted or fails (or whose worker misses its health deadline) is
declared dead, deleted and replaced; its attempts end ``error`` and are
retried elsewhere. ``close`` deletes every pod carrying this backend's run
label, which also catches pods whose create call was cancelled mid-flight.

The worker's token reaches the pod as an environment variable and the
readiness probe as a header: whoever may read pods in the namespace can read
it, so give each engine a namespace (or RBAC) of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import structlog

from backends.pool import PooledBackend
from backends.remote import WorkerHandle
from backends.worker import HOST_ENV, PLUGINS_ENV, TOKEN_ENV
from engine.errors import ConfigError, InfraError

log = structlog.get_logger("drillyard.backends.kubernetes")

RUN_LABEL = "drillyard.dev/run"
APP_LABEL = "app.kubernetes.io/name"
RBAC_FIX = ("grant this identity get/list/watch/create/delete on pods in the namespace "
            "(a Role and RoleBinding), or pick another namespace")
DEFAULT_RESOURCES: dict[str, Any] = {
    "requests": {"cpu": "1", "memory": "1Gi"},
    "limits": {"cpu": "1", "memory": "2Gi"},
}


@dataclass(slots=True)
class _Pod:
    name: str
    phase: str = "Pending"
    ip: str | None = None
    ready: bool = False
    handle: WorkerHandle | None = None
    gone: bool = False


class KubernetesBackend(PooledBackend):
    """``pods`` worker pods with ``slots_per_pod`` environments each."""

    name = "kubernetes"

    def __init__(
        self,
        pods: int = 2,
        slots_per_pod: int = 4,
        *,
        namespace: str = "default",
        image: str = "drillyard-worker:latest",
        command: Sequence[str] = ("python", "-m", "backends.worker"),
        port: int = 8080,
        resources: dict[str, Any] | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        plugins: Sequence[str] = (),
        kubeconfig: str | None = None,
        context: str | None = None,
        in_cluster: bool = False,
        service_account: str | None = None,
        image_pull_policy: str | None = None,
        run_as_user: int = 1000,
        name_prefix: str = "drillyard-worker",
        ready_timeout: float = 180.0,
        api_timeout: float = 15.0,
        probe_period: int = 1,
        call_timeout: float = 300.0,
        health_interval: float = 2.0,
        health_timeout: float = 5.0,
        max_replacements: int = 1000,
        max_unready_losses: int = 5,
    ) -> None:
        super().__init__(slots_per_worker=slots_per_pod, health_interval=health_interval,
                         health_timeout=health_timeout)
        if pods < 1:
            raise ConfigError("backend 'kubernetes'", f"pods must be >= 1, got {pods}")
        self.pods, self.namespace, self.image = pods, namespace, image
        self.command, self.port = list(command), port
        self.resources = DEFAULT_RESOURCES if resources is None else resources
        self.run_id = secrets.token_hex(4)
        self.labels = {APP_LABEL: "drillyard-worker", **(labels or {}), RUN_LABEL: self.run_id}
        self.selector = f"{RUN_LABEL}={self.run_id}"
        self.extra_env, self.plugins = env or {}, list(plugins)
        self.kubeconfig = os.path.expanduser(kubeconfig) if kubeconfig else None
        self.context, self.in_cluster = context, in_cluster
        self.service_account, self.image_pull_policy = service_account, image_pull_policy
        self.run_as_user, self.name_prefix = run_as_user, name_prefix
        self.ready_timeout, self.api_timeout = ready_timeout, api_timeout
        self.probe_period, self.call_timeout = probe_period, call_timeout
        self.max_replacements = max_replacements
        self.replacements = 0
        self.max_unready_losses = max_unready_losses
        self._unready_losses = 0
        self.state: dict[str, _Pod] = {}
        self._serial = 0
        self._closing = False
        self._api: Any = None
        self._client: Any = None
        self._host = "?"

    @property
    def target_workers(self) -> int:
        return self.pods

    # ---- the pod template ------------------------------------------------

    def pod_manifest(self, name: str) -> dict[str, Any]:
        """The pod this backend creates for one worker."""
        env = [{"name": TOKEN_ENV, "value": self.token},
               {"name": HOST_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
        if self.plugins:
            env.append({"name": PLUGINS_ENV, "value": ",".join(self.plugins)})
        env += [{"name": k, "value": v} for k, v in self.extra_env.items()]
        container: dict[str, Any] = {
            "name": "worker",
            "image": self.image,
            "command": self.command,
            "args": ["--port", str(self.port), "--slots", str(self.slots_per_worker),
                     "--call-timeout", str(self.call_timeout)],
            "ports": [{"name": "worker", "containerPort": self.port}],
            "env": env,
            "resources": self.resources,
            "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                "capabilities": {"drop": ["ALL"]}},
            "readinessProbe": {
                "httpGet": {"path": "/health", "port": self.port, "httpHeaders": [
                    {"name": "Authorization", "value": f"Bearer {self.token}"}]},
                "periodSeconds": self.probe_period, "timeoutSeconds": 2, "failureThreshold": 3},
        }
        if self.image_pull_policy:
            container["imagePullPolicy"] = self.image_pull_policy
        spec: dict[str, Any] = {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": self.run_as_user,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
        }
        if self.service_account:
            spec["serviceAccountName"] = self.service_account
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": name, "namespace": self.namespace, "labels": self.labels},
                "spec": spec}

    # ---- start / close ---------------------------------------------------

    async def _connect(self) -> None:
        from kubernetes_asyncio import client, config

        cfg = client.Configuration()
        try:
            if self.in_cluster:
                load_incluster: Any = config.load_incluster_config
                load_incluster(client_configuration=cfg)
            else:
                await config.load_kube_config(config_file=self.kubeconfig, context=self.context,
                                              client_configuration=cfg, persist_config=False)
        except (config.ConfigException, OSError) as exc:
            raise ConfigError("backend 'kubernetes'", f"cannot load the cluster config: {exc}",
                              "pass kubeconfig=<path> (and context=), or in_cluster=True "
                              "inside a pod") from exc
        self._host = str(cfg.host)
        self._client = client.ApiClient(cfg)
        self._api = client.CoreV1Api(self._client)

    async def start(self) -> None:
        self._closing = False
        self._open_session()
        try:
            await self._connect()
            rv = await self._list()
            self._spawn(self._watch_loop(rv))
            for _ in range(self.pods):  # one by one: each create is cancel-safe (`_land`)
                await self._create_pod()
            await self._wait_ready()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise
        log.info("worker pods ready", pods=[w.name for w in self.workers.values()])

    async def _wait_ready(self) -> None:
        async with self._changed:
            with anyio.move_on_after(self.ready_timeout):
                while len(self.workers) < self.pods and not self.broken:
                    await self._changed.wait()
        if self.broken:
            raise InfraError(f"backend 'kubernetes': {self.broken}")
        if len(self.workers) < self.pods:
            status = ", ".join(f"{p.name}: {p.phase}{' ready' if p.ready else ''}"
                               for p in self.state.values()) or "none seen"
            raise InfraError(f"backend 'kubernetes': only {len(self.workers)} of {self.pods} "
                             f"pods Running and Ready within {self.ready_timeout}s ({status})")

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            self._closing = True
            await self._stop_tasks()
            for worker in list(self.workers.values()):
                worker.mark_dead("the backend closed")
            self.workers.clear()
            if self._api is not None:
                await self._delete_all()
            if self._client is not None:
                await self._client.close()
                self._client = self._api = None
            await self._close_session()

    async def _delete_all(self) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            await self._api.delete_collection_namespaced_pod(
                self.namespace, label_selector=self.selector, grace_period_seconds=0,
                _request_timeout=self.api_timeout)
            return
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("deleting pods by label failed; deleting one by one", error=repr(exc))
        for name in list(self.state):
            await self._delete_pod(name)

    # ---- API calls, errors made clear ----------------------------------

    def _clear(self, exc: BaseException, action: str) -> Exception:
        from kubernetes_asyncio.client.exceptions import ApiException

        where = f"kubernetes API {self._host}, namespace '{self.namespace}'"
        if isinstance(exc, ApiException):
            try:
                message = json.loads(exc.body or "{}").get("message") or exc.reason
            except (ValueError, AttributeError):
                message = exc.reason
            if exc.status == 403:
                return ConfigError(where, f"the cluster forbids {action}: {message}", RBAC_FIX)
            if exc.status == 401:
                return ConfigError(where, f"the cluster rejected our credentials ({message})",
                                   "check the user and token of the kubeconfig context")
            if exc.status == 404:
                return ConfigError(where, f"{action} failed: {message}",
                                   "check that the namespace exists")
            return InfraError(f"{where}: {action} failed with {exc.status}: {message}")
        if isinstance(exc, aiohttp.ClientConnectorCertificateError | ssl.SSLError):
            return ConfigError(where, f"its TLS certificate is not trusted while {action}: "
                               f"{type(exc).__name__}: {exc}",
                               "check the kubeconfig's certificate-authority-data (or "
                               "certificate-authority) for this cluster")
        return ConfigError(where, f"unreachable while {action}: {type(exc).__name__}: {exc}",
                           "check the kubeconfig (server, context) and that the cluster is up")

    async def _list(self) -> str:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            pods = await self._api.list_namespaced_pod(
                self.namespace, label_selector=self.selector, _request_timeout=self.api_timeout)
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise self._clear(exc, "listing pods") from exc
        raw = self._client.sanitize_for_serialization(pods)
        seen = set()
        for item in raw.get("items") or []:
            seen.add(item["metadata"]["name"])
            self._on_event("MODIFIED", item)
        for name in set(self.state) - seen:
            self._on_event("DELETED", {"metadata": {"name": name}})
        return str(raw["metadata"].get("resourceVersion") or "")

    async def _create_pod(self) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        self._serial += 1
        name = f"{self.name_prefix}-{self.run_id}-{self._serial}"
        self.state[name] = _Pod(name)
        try:
            await _land(self._api.create_namespaced_pod(self.namespace, self.pod_manifest(name),
                                                        _request_timeout=self.api_timeout))
        except (ApiException, aiohttp.ClientError, OSError, TimeoutError) as exc:
            self.state.pop(name, None)
            raise self._clear(exc, "creating pods") from exc

    async def _delete_pod(self, name: str) -> None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            await self._api.delete_namespaced_pod(name, self.namespace, grace_period_seconds=0,
                                                  _request_timeout=self.api_timeout)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("deleting a pod failed", pod=name, status=exc.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("deleting a pod failed", pod=name, error=repr(exc))

    # ---- the watch -------------------------------------------------------

    async def _watch_loop(self, rv: str) -> None:
        from kubernetes_asyncio import watch
        from kubernetes_asyncio.client.exceptions import ApiException

        while not self._closing:
            try:
                async with watch.Watch() as w:
                    stream = w.stream(self._api.list_namespaced_pod, self.namespace,
                                      label_selector=self.selector, resource_version=rv,
                                      timeout_seconds=60)
                    async for event in stream:
                        obj = event["raw_object"]
                        rv = obj.get("metadata", {}).get("resourceVersion") or rv
                        self._on_event(event["type"], obj)
            except ApiException as exc:
                if exc.status == 410:  # our resourceVersion is too old: list again
                    rv = await self._relist()
                    continue
                log.warning("pod watch failed", status=exc.status, reason=exc.reason)
                await asyncio.sleep(1.0)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.warning("pod watch lost", error=repr(exc))
                await asyncio.sleep(0.5)
                rv = await self._relist()

    async def _relist(self) -> str:
        try:
            return await self._list()
        except (ConfigError, InfraError) as exc:
            log.warning("pod relist failed", error=str(exc))
            await asyncio.sleep(1.0)
            return ""

    def _on_event(self, kind: str, obj: dict[str, Any]) -> None:
        name = obj["metadata"]["name"]
        pod = self.state.get(name)
        if pod is None or pod.gone:
            return  # not ours, or already handled
        if kind == "DELETED":
            self._lose(pod, f"pod {name} was deleted")
            return
        status = obj.get("status") or {}
        pod.phase = status.get("phase") or "Pending"
        pod.ip = status.get("podIP") or pod.ip
        pod.ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                        for c in status.get("conditions") or [])
        if pod.phase in ("Failed", "Succeeded"):
            why = status.get("reason") or "exited"
            detail = status.get("message") or ""
            self._lose(pod, f"pod {name} {pod.phase.lower()}: {why} {detail}".strip())
        elif pod.phase == "Running" and pod.ready and pod.ip and pod.handle is None:
            self._unready_losses = 0
            pod.handle = WorkerHandle(f"pod/{name}@{pod.ip}:{self.port}",
                                      f"http://{pod.ip}:{self.port}", self.token,
                                      self._open_session(), self.slots_per_worker,
                                      self.connect_timeout)
            self._add_worker(pod.handle)

    def _lose(self, pod: _Pod, reason: str) -> None:
        if pod.handle is not None and pod.handle.alive:
            self.declare_dead(pod.handle, reason)  # → _on_dead replaces it
        elif not pod.gone:
            pod.gone = True
            self._unready_losses += 1
            log.warning("pod lost before it was ready", pod=pod.name, reason=reason)
            if self._unready_losses > self.max_unready_losses and not self.workers:
                self.set_broken(f"{self._unready_losses} pods in a row failed before they were "
                                f"ready, the last: {reason} (check the image and the command)")
            self._spawn(self._replace(pod.name, backoff=self._unready_losses))

    def _on_dead(self, worker: WorkerHandle, reason: str) -> None:  # type: ignore[override]
        pod = next((p for p in self.state.values() if p.handle is worker), None)
        if pod is not None and not pod.gone:
            pod.gone = True
            self._spawn(self._replace(pod.name))

    async def _replace(self, old: str, backoff: int = 0) -> None:
        await self._delete_pod(old)
        self.state.pop(old, None)
        if self._closing or self.broken:
            return
        if backoff:  # pods that die before they are ready: do not hammer the cluster
            await asyncio.sleep(min(0.2 * 2 ** (backoff - 1), 30.0))
        if self.replacements >= self.max_replacements:
            self.set_broken(f"{self.replacements} pods replaced; max_replacements reached")
            return
        self.replacements += 1
        for attempt in range(5):
            try:
                await self._create_pod()
                return
            except (ConfigError, InfraError) as exc:
                log.warning("replacing a pod failed", attempt=attempt + 1, error=str(exc))
                await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))
        self.set_broken(f"could not create a replacement pod for {old}")


async def _land(coro: Any) -> Any:
    """Await ``coro``; if cancelled meanwhile, let it finish first (bounded by its own
    timeout) so that a pod whose create was in flight exists when `close` deletes by label."""
    task = asyncio.ensure_future(coro)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with anyio.CancelScope(shield=True):
            await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved: no "exception never retrieved" warning
        raise
