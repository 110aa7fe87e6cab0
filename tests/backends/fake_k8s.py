"""A fake Kubernetes cluster for tests: the pods API over real HTTPS, and a kubelet.

The API server (aiohttp on loopback, TLS with a certificate from a CA of its
own, which the kubeconfig it writes carries as ``certificate-authority-data``)
speaks the Kubernetes REST API for pods: create, get, list with
``labelSelector`` and ``fieldSelector``, ``watch=true`` streaming, delete one,
delete a collection; it answers discovery (``/version``, ``/api``,
``/api/v1``, ``/apis``) and, when asked, tables (kubectl's server-side
printing; see `fake_k8s_api`), so the real ``kubectl`` works against it; it
checks the bearer token of the kubeconfig it writes.
The kubelet starts each admitted pod's container command as a real local
process with the pod's environment (``fieldRef: status.podIP`` resolved), on a
loopback address of its own (127.0.0.2, 127.0.0.3, ...), runs the pod's
readiness probe (``httpGet``, with its headers) and reports phase, readiness
and podIP through the API, the way kwok fakes nodes. Deleting a pod kills its
process (as with ``gracePeriodSeconds=0``); `evict` fails it as a node would.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from tests.backends import fake_k8s_api as kapi

REPO = Path(__file__).resolve().parents[2]
NODE = "fake-node"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    return web.json_response(body, status=code)


def _event(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


def bindable(ip: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


@dataclass(eq=False)
class FakePod:
    namespace: str
    name: str
    obj: dict[str, Any]
    ip: str | None = None
    process: asyncio.subprocess.Process | None = None
    kubelet: asyncio.Task[None] | None = None
    log: Path | None = None
    pids: list[int] = field(default_factory=list)

    @property
    def labels(self) -> dict[str, str]:
        return dict(self.obj["metadata"].get("labels") or {})


class FakeCluster:
    """One fake node and its API server. Use ``async with cluster.running(tmp): ...``."""

    def __init__(self, *, token: str = "fake-admin-token", forbid_create: bool = False,
                 create_delay: float = 0.0, probe_interval: float | None = 0.1) -> None:
        self.token = token
        self.forbid_create = forbid_create
        self.create_delay = create_delay
        self.probe_interval = probe_interval  # None: honour each probe's periodSeconds
        self.pods: dict[tuple[str, str], FakePod] = {}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # rv, ns, type, pod
        self.started_pids: list[int] = []
        self.creates = 0
        self.url = ""
        self._rv = itertools.count(1)
        self._last_rv = 0
        self._changed = asyncio.Condition()
        self._ips = (f"127.0.0.{i}" for i in itertools.cycle(range(2, 255)))
        self._dir = Path(".")
        self.closed = False
        self.ca = kapi.ClusterCA()

    # ---- running it ------------------------------------------------------

    @asynccontextmanager
    async def running(self, workdir: Path) -> AsyncIterator[FakeCluster]:
        self._dir = workdir
        app = web.Application(middlewares=[self._auth])
        base = "/api/v1/namespaces/{ns}/pods"
        app.add_routes([
            web.get("/version", self.discovery), web.get("/api", self.discovery),
            web.get("/api/v1", self.discovery), web.get("/apis", self.discovery),
            web.get(base, self.list_pods), web.post(base, self.create_pod),
            web.delete(base, self.delete_collection),
            web.get(base + "/{name}", self.get_pod), web.delete(base + "/{name}", self.delete),
        ])
        runner = web.AppRunner(app, handle_signals=False, access_log=None,
                               shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self.ca.server_context())
        await site.start()
        self.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
        try:
            yield self
        finally:
            self.closed = True  # no pod is admitted from now on
            await runner.cleanup()
            for pod in list(self.pods.values()):
                await self._remove(pod)
            for pid in self.live_pids():  # belt and braces: no process outlives the node
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def kubeconfig(self, path: Path, namespace: str = "default",
                   ca: kapi.ClusterCA | None = None) -> Path:
        """A kubeconfig for this cluster (``ca``: trust another CA instead of ours)."""
        cluster = {"server": self.url, "certificate-authority-data": (ca or self.ca).data}
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": cluster}],
            "users": [{"name": "fake", "user": {"token": self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake",
                                                      "namespace": namespace}}],
        }
        path.write_text(json.dumps(config))
        return path

    def live_pids(self) -> list[int]:
        """Pids of pod processes started by this cluster that still exist."""
        return [pid for pid in self.started_pids if _alive(pid)]

    def running_pods(self, namespace: str = "default") -> list[str]:
        return [p.name for p in self.pods.values() if p.namespace == namespace
                and p.obj["status"].get("phase") == "Running"]

    # ---- API -------------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status(401, "Unauthorized", "Unauthorized")
        response: web.StreamResponse = await handler(request)
        return response

    async def _emit(self, kind: str, pod: FakePod) -> None:
        rv = next(self._rv)
        self._last_rv = rv
        pod.obj["metadata"]["resourceVersion"] = str(rv)
        self.events.append((rv, pod.namespace, kind, json.loads(json.dumps(pod.obj))))
        async with self._changed:
            self._changed.notify_all()

    async def discovery(self, request: web.Request) -> web.Response:
        docs = {"/version": kapi.VERSION, "/api": kapi.api_versions(self.url.split("//")[1]),
                "/api/v1": kapi.CORE_RESOURCES, "/apis": kapi.API_GROUPS}
        return web.json_response(docs[request.path])

    def _wanted(self, request: web.Request, pod: dict[str, Any]) -> bool:
        """Does ``pod`` match the request's namespace, label and field selectors?"""
        return (pod["metadata"].get("namespace") == request.match_info["ns"]
                and _matches(pod["metadata"].get("labels") or {},
                             request.query.get("labelSelector", ""))
                and kapi.fields_match(pod, request.query.get("fieldSelector", "")))

    def _select(self, request: web.Request) -> list[FakePod]:
        return [p for p in self.pods.values() if self._wanted(request, p.obj)]

    def _render(self, request: web.Request, pods: list[dict[str, Any]],
                kind: str = "PodList") -> dict[str, Any]:
        rv = str(self._last_rv)
        if kapi.wants_table(request.headers.get("Accept", "")):
            return kapi.table(pods, rv)
        if kind == "Pod":
            return pods[0]
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv},
                "items": pods}

    async def list_pods(self, request: web.Request) -> web.StreamResponse:
        problem = kapi.field_error(request.query.get("fieldSelector", ""))
        if problem:
            return _status(400, "BadRequest", problem)
        if request.query.get("watch", "").lower() in ("true", "1"):
            return await self._watch(request)
        return web.json_response(self._render(request, [p.obj for p in self._select(request)]))

    async def _watch(self, request: web.Request) -> web.StreamResponse:
        deadline = time.monotonic() + float(request.query.get("timeoutSeconds", "1800"))
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)

        def event(kind: str, obj: dict[str, Any]) -> bytes:
            return _event(kind, self._render(request, [obj], "Pod"))

        try:
            since = request.query.get("resourceVersion", "")
            sent = int(since) if since.isdigit() and since != "0" else self._last_rv
            if not since or since == "0":  # like the API: current objects first, as ADDED
                for pod in self._select(request):
                    await resp.write(event("ADDED", pod.obj))
            while time.monotonic() < deadline:
                for rv, _, kind, obj in self.events:
                    if rv > sent and self._wanted(request, obj):
                        await resp.write(event(kind, obj))
                sent = max(sent, self._last_rv)
                async with self._changed:
                    if self._last_rv == sent:
                        left = deadline - time.monotonic()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._changed.wait(), left)
            await resp.write_eof()
        except ConnectionResetError:  # the client went away
            pass
        return resp

    async def create_pod(self, request: web.Request) -> web.Response:
        ns = request.match_info["ns"]
        if self.forbid_create:
            return _status(403, "Forbidden", f'pods is forbidden: User "fake" cannot create '
                           f'resource "pods" in API group "" in the namespace "{ns}"')
        body = await request.json()
        self.creates += 1
        if self.create_delay:
            await asyncio.sleep(self.create_delay)
        name = body.get("metadata", {}).get("name")
        if self.closed:
            return _status(503, "ServiceUnavailable", "the fake cluster is shutting down")
        if not name:
            return _status(422, "Invalid", "metadata.name: Required value")
        if (ns, name) in self.pods:
            return _status(409, "AlreadyExists", f'pods "{name}" already exists')
        body["metadata"].update(namespace=ns, uid=str(uuid.uuid4()),
                                creationTimestamp=_now())
        body.setdefault("spec", {})["nodeName"] = NODE  # scheduled at once, on the one node
        body["status"] = {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "True"}]}
        pod = FakePod(ns, name, body)
        self.pods[(ns, name)] = pod
        await self._emit("ADDED", pod)
        pod.kubelet = asyncio.get_running_loop().create_task(self._kubelet(pod))
        return web.json_response(pod.obj, status=201)

    async def get_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get((request.match_info["ns"], request.match_info["name"]))
        if pod is None:
            return _status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        return web.json_response(self._render(request, [pod.obj], "Pod"))

    async def delete(self, request: web.Request) -> web.Response:
        pod = self.pods.get((request.match_info["ns"], request.match_info["name"]))
        if pod is None:
            return _status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')
        await self._remove(pod)
        return web.json_response(pod.obj)

    async def delete_collection(self, request: web.Request) -> web.Response:
        gone = self._select(request)
        for pod in gone:
            await self._remove(pod)
        return web.json_response({"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                  "items": [p.obj for p in gone]})

    # ---- the kubelet -----------------------------------------------------

    async def delete_pod(self, name: str, namespace: str = "default") -> None:
        """What ``kubectl delete pod --grace-period=0`` does."""
        pod = self.pods.get((namespace, name))
        if pod is not None:
            await self._remove(pod)

    async def evict(self, name: str, namespace: str = "default") -> None:
        """Fail a pod as a node under memory pressure would (it stays, Failed)."""
        pod = self.pods[(namespace, name)]
        if pod.kubelet is not None:
            pod.kubelet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pod.kubelet
        await self._kill(pod)
        pod.obj["status"].update(phase="Failed", reason="Evicted",
                                 message="The node was low on resource: memory.",
                                 conditions=[{"type": "Ready", "status": "False"}])
        await self._emit("MODIFIED", pod)

    async def _remove(self, pod: FakePod) -> None:
        if self.pods.pop((pod.namespace, pod.name), None) is None:
            return
        if pod.kubelet is not None:
            pod.kubelet.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pod.kubelet
        await self._kill(pod)
        pod.obj["metadata"]["deletionTimestamp"] = _now()
        await self._emit("DELETED", pod)

    async def _kill(self, pod: FakePod) -> None:
        proc = pod.process
        if proc is not None:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
            await proc.wait()

    async def _kubelet(self, pod: FakePod) -> None:
        container = pod.obj["spec"]["containers"][0]
        probe = container.get("readinessProbe") or {}
        port = int(probe.get("httpGet", {}).get("port", 8080))
        ip = next(ip for ip in self._ips if bindable(ip, port))
        pod.ip = ip
        env = {**os.environ}
        for item in container.get("env") or []:
            ref = (item.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
            env[item["name"]] = {"status.podIP": ip, "metadata.name": pod.name}.get(
                ref or "", item.get("value", ""))
        cmd = list(container.get("command") or []) + list(container.get("args") or [])
        if cmd and cmd[0] in ("python", "python3"):  # the "image" is this checkout
            cmd[0] = sys.executable
        if "backends.worker" in cmd:  # the node's processes die with it (the test process)
            cmd += ["--parent-pid", str(os.getpid())]
        pod.log = self._dir / f"{pod.name}.log"
        with pod.log.open("ab") as log:
            spawn = asyncio.ensure_future(asyncio.create_subprocess_exec(
                *cmd, cwd=REPO, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=log,
                start_new_session=True))
            try:
                pod.process = await asyncio.shield(spawn)
            except asyncio.CancelledError:  # deleted while starting: no orphan
                pod.process = await spawn
                raise
            finally:
                if pod.process is not None:
                    self.started_pids.append(pod.process.pid)
        pod.obj["status"].update(phase="Running", podIP=ip, podIPs=[{"ip": ip}],
                                 hostIP="127.0.0.1", startTime=_now())
        await self._set_ready(pod, False)
        period = self.probe_interval or float(probe.get("periodSeconds", 10))
        exited = asyncio.ensure_future(pod.process.wait())
        async with aiohttp.ClientSession() as session:
            try:
                while not exited.done():
                    await self._set_ready(pod, await self._probe(session, ip, probe))
                    await asyncio.wait([exited], timeout=period)
            finally:
                exited.cancel()
        code = pod.process.returncode
        pod.obj["status"].update(phase="Succeeded" if code == 0 else "Failed",
                                 reason="Completed" if code == 0 else "Error",
                                 message=f"container exited with code {code}")
        await self._set_ready(pod, False, force=True)

    async def _probe(self, session: aiohttp.ClientSession, ip: str,
                     probe: dict[str, Any]) -> bool:
        get = probe.get("httpGet")
        if not get:
            return True
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders") or []}
        url = f"http://{ip}:{get.get('port', 8080)}{get.get('path', '/')}"
        try:
            timeout = aiohttp.ClientTimeout(total=float(probe.get("timeoutSeconds", 1)))
            async with session.get(url, headers=headers, timeout=timeout) as resp:
                return 200 <= resp.status < 400
        except (aiohttp.ClientError, TimeoutError, OSError):
            return False

    async def _set_ready(self, pod: FakePod, ready: bool, force: bool = False) -> None:
        status = pod.obj["status"]
        flag = "True" if ready else "False"
        before = [c for c in status.get("conditions") or [] if c["type"] == "Ready"]
        if before and before[0]["status"] == flag and not force:
            return
        status["conditions"] = [{"type": "PodScheduled", "status": "True"},
                                {"type": "Ready", "status": flag}]
        status["containerStatuses"] = [{"name": "worker", "ready": ready, "restartCount": 0,
                                        "image": pod.obj["spec"]["containers"][0]["image"],
                                        "imageID": "", "state": {"running": {}}}]
        await self._emit("MODIFIED", pod)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie still answers kill(0): look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
