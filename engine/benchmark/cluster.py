"""Backend options for the bench; a fake cluster for ``--backend kubernetes``, a
local Ray cluster for ``--backend ray``.

With no ``kubeconfig`` in ``--backend-options``, the Kubernetes backend runs
against the repository's fake cluster (``tests/backends/fake_k8s.py``: the
pods API over real HTTPS, each pod a local worker process on its own loopback
address), so the real client, the real worker protocol and real processes are
measured. Outside a checkout, pass a kubeconfig. With no ``address``, the Ray
backend runs on one real local Ray cluster (started once for the whole bench,
one CPU per core; its start time is printed) whose actors every run reuses the
connection to; pass ``{"address": "auto"}`` for a running cluster.
"""

from __future__ import annotations

import asyncio
import importlib
import math
import os
import socket
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from .world import PLUGIN


def backend_options(name: str, slots: int, extra: dict[str, Any]) -> dict[str, Any]:
    """Options giving ``name`` at least ``slots`` environment slots."""
    if name == "inprocess":
        opts: dict[str, Any] = {"slots": slots}
    elif name == "subprocess":
        workers = max(1, min(slots, len(os.sched_getaffinity(0))))
        opts = {
            "workers": workers,
            "slots_per_worker": math.ceil(slots / workers),
            "plugins": [PLUGIN],
        }
    elif name == "kubernetes":
        pods = max(1, min(slots, 4))
        opts = {"pods": pods, "slots_per_pod": math.ceil(slots / pods), "plugins": [PLUGIN]}
    elif name == "ray":  # one actor (one CPU) per core
        actors = max(1, min(slots, len(os.sched_getaffinity(0))))
        opts = {"actors": actors, "slots_per_actor": math.ceil(slots / actors), "plugins": [PLUGIN]}
    else:
        opts = {"plugins": [PLUGIN]}
    return {**opts, **extra}


@asynccontextmanager
async def backend_setting(
    name: str, extra: dict[str, Any], workdir: Path
) -> AsyncIterator[dict[str, Any]]:
    """``extra``, plus a fake cluster's kubeconfig for ``kubernetes`` without one; a
    local Ray cluster, connected, for ``ray`` without an address."""
    if name == "ray" and "address" not in extra:
        async with local_ray():
            yield extra
        return
    if name != "kubernetes" or "kubeconfig" in extra:
        yield extra
        return
    try:
        fake = importlib.import_module("tests.backends.fake_k8s")
    except ImportError:  # not a checkout: the backend's own config lookup decides
        yield extra
        return
    cluster = fake.FakeCluster()
    async with cluster.running(workdir):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        yield {
            "kubeconfig": str(cluster.kubeconfig(workdir / "kubeconfig")),
            "port": port,
            "image": "drillyard-worker:bench",
            "ready_timeout": 60.0,
            **extra,
        }


@asynccontextmanager
async def local_ray() -> AsyncIterator[float]:
    """A private one-node Ray cluster for this process (one CPU per core), connected;
    yields how long it took to start. Nothing if Ray is not installed (the backend
    then says so)."""
    try:
        ray: Any = importlib.import_module("ray")
    except ImportError:
        yield 0.0
        return
    from backends.ray import LOCAL_IP

    from .report import console  # (report imports this module)

    started = time.perf_counter()
    await asyncio.to_thread(
        ray.init, address="local", num_cpus=len(os.sched_getaffinity(0)),
        include_dashboard=False, log_to_driver=False, _node_ip_address=LOCAL_IP,
    )  # fmt: skip
    took = time.perf_counter() - started
    console.print(f"local Ray cluster up in {took:.2f} s")
    try:
        yield took
    finally:
        await asyncio.to_thread(ray.shutdown)
