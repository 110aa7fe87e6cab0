"""What a real API server answers besides the pod objects themselves, for the fake cluster.

- discovery: ``/version``, ``/api`` (APIVersions), ``/api/v1`` (the pods
  resource), ``/apis`` (no groups): what kubectl asks before anything else;
- tables: kubectl asks for pods ``as=Table`` (server-side printing) and
  prints the rows the server computes (NAME, READY, STATUS, RESTARTS, AGE,
  and IP, NODE with ``-o wide``), for lists and for each watch event;
- field selectors on ``metadata.name``, ``metadata.namespace``,
  ``status.phase`` (``kubectl delete --wait`` watches one pod by name);
- a certificate authority of the cluster's own (trustme) and a serving
  certificate for 127.0.0.1 from it: the API is HTTPS, and the kubeconfig
  carries ``certificate-authority-data`` as a real one does.
"""

from __future__ import annotations

import base64
import calendar
import ssl
import time
from typing import Any

VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-drillyard-fake",
           "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
           "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23.0", "compiler": "gc",
           "platform": "linux/amd64"}
API_GROUPS = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
CORE_RESOURCES = {"kind": "APIResourceList", "groupVersion": "v1", "resources": [
    {"name": "pods", "singularName": "pod", "namespaced": True, "kind": "Pod",
     "verbs": ["create", "delete", "deletecollection", "get", "list", "watch"],
     "shortNames": ["po"], "categories": ["all"]}]}


def api_versions(server: str) -> dict[str, Any]:
    return {"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}]}


# ---- TLS -------------------------------------------------------------------


class ClusterCA:
    """The cluster's own CA and the API server's certificate (for 127.0.0.1, localhost)."""

    def __init__(self) -> None:
        import trustme

        self.ca = trustme.CA(organization_name="drillyard fake cluster")
        self.cert = self.ca.issue_cert("127.0.0.1", "localhost", "kubernetes.default.svc")

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(ctx)
        return ctx

    @property
    def data(self) -> str:
        """``certificate-authority-data``: the CA's PEM, base64."""
        return base64.b64encode(self.ca.cert_pem.bytes()).decode()


# ---- tables ----------------------------------------------------------------


def _column(name: str, kind: str, description: str, priority: int = 0,
            fmt: str = "") -> dict[str, Any]:
    return {"name": name, "type": kind, "format": fmt, "description": description,
            "priority": priority}


POD_COLUMNS = [
    _column("Name", "string", "Name must be unique within a namespace.", fmt="name"),
    _column("Ready", "string", "The aggregate readiness state of this pod for accepting "
            "traffic."),
    _column("Status", "string", "The aggregate status of the containers in this pod."),
    _column("Restarts", "string", "The number of times the containers in this pod have been "
            "restarted and when the last container in this pod has restarted."),
    _column("Age", "string", "CreationTimestamp is a timestamp representing the server time "
            "when this object was created."),
    _column("IP", "string", "IP address allocated to the pod.", priority=1),
    _column("Node", "string", "Name of the Node this pod is assigned to.", priority=1),
]


def wants_table(accept: str) -> bool:
    return "as=Table" in accept


def age(timestamp: str | None, now: float | None = None) -> str:
    """A Kubernetes-style short age: 42s, 3m12s, 2h5m, 3d."""
    if not timestamp:
        return "<unknown>"
    then = calendar.timegm(time.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ"))
    seconds = max(0, int((time.time() if now is None else now) - then))
    if seconds < 120:
        return f"{seconds}s"
    minutes, hours = seconds // 60, seconds // 3600
    if hours < 3:
        return f"{minutes}m{seconds % 60}s" if minutes < 10 else f"{minutes}m"
    return f"{hours}h" if hours < 48 else f"{hours // 24}d"


def pod_row(pod: dict[str, Any]) -> dict[str, Any]:
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    containers = status.get("containerStatuses") or []
    ready = sum(1 for c in containers if c.get("ready"))
    total = len((pod.get("spec") or {}).get("containers") or []) or len(containers)
    state = "Terminating" if meta.get("deletionTimestamp") else (
        status.get("reason") or status.get("phase") or "Pending")
    restarts = sum(int(c.get("restartCount") or 0) for c in containers)
    return {"cells": [meta.get("name"), f"{ready}/{total}", state, restarts,
                      age(meta.get("creationTimestamp")), status.get("podIP") or "<none>",
                      (pod.get("spec") or {}).get("nodeName") or "<none>"],
            "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1",
                       "metadata": meta}}


def table(pods: list[dict[str, Any]], resource_version: str) -> dict[str, Any]:
    return {"kind": "Table", "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": resource_version},
            "columnDefinitions": POD_COLUMNS, "rows": [pod_row(p) for p in pods]}


# ---- field selectors ---------------------------------------------------------

FIELDS = {"metadata.name": ("metadata", "name"), "metadata.namespace": ("metadata", "namespace"),
          "status.phase": ("status", "phase")}


def field_error(selector: str) -> str | None:
    """Why a field selector cannot be served (None: it can)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        key = term.split("!=")[0].split("==")[0].split("=")[0]
        if key not in FIELDS:
            return f'"{key}" is not a known field selector: only "{", ".join(FIELDS)}"'
    return None


def fields_match(pod: dict[str, Any], selector: str) -> bool:
    for term in filter(None, (t.strip() for t in selector.split(","))):
        negate = "!=" in term
        key, value = term.replace("!=", "=").replace("==", "=").split("=", 1)
        section, name = FIELDS[key]
        actual = str((pod.get(section) or {}).get(name) or "")
        if (actual == value) == negate:
            return False
    return True
