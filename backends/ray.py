"""The Ray backend: environments hosted in Ray actors on a Ray cluster.

    Engine(backend="ray", backend_options={
        "address": "auto", "actors": 8, "slots_per_actor": 4,
        "num_cpus": 1, "resources": {"browser": 1}, "plugins": ["my_envs"]})

``start`` connects to a cluster (``address``: ``"auto"``, the one running on
this machine or named by ``RAY_ADDRESS``; ``"host:port"``; ``"ray://..."``;
``"local"``, a private one-node cluster in this process, on a loopback
address, stopped with the backend; None, the default: Ray's own rule, which
is ``"auto"`` if there is a cluster, else a new local one) or uses the Ray
connection this process already has, then creates ``actors`` actors, each
hosting ``slots_per_actor`` environments (`backends.ray_actor.EnvHostActor`,
the same hosting as the worker protocol's). Ray places them by what each asks for (``num_cpus``,
``memory``, custom ``resources`` such as ``{"browser": 1}`` for nodes started
with ``ray start --resources='{"browser": 1}'``) and ``scheduling_strategy``
(SPREAD by default). ``start`` returns once ``min_actors`` (default: all) are
up; the others, and every replacement, join as soon as Ray finds room for
them, so a node added while the engine runs gets work.

An actor that dies (its process killed, its node lost) takes its environments
with it: the attempts on it end ``error`` with ``EnvironmentLost`` naming the
actor and its node, and are retried on another actor; a new actor is created
in its place. Every call awaits an ObjectRef on the engine's loop; blocking
Ray calls (connecting, creating and killing actors) run in threads. ``close``
kills every actor this backend created, and disconnects if it connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from typing import Any

import anyio
import structlog

from backends.pool import PooledBackend
from backends.ray_actor import ActorWorker, EnvHostActor
from engine.errors import ConfigError, InfraError

log = structlog.get_logger("drillyard.backends.ray")

WHERE = "backend 'ray'"
STRATEGIES = ("SPREAD", "DEFAULT")
LOCAL_IP = "127.0.0.2"  # loopback: Ray swaps 127.0.0.1 for the machine's outside address


class RayBackend(PooledBackend):
    """``actors`` Ray actors with ``slots_per_actor`` environments each."""

    name = "ray"

    def __init__(
        self,
        actors: int = 2,
        slots_per_actor: int = 4,
        *,
        address: str | None = "auto",
        num_cpus: float = 1.0,
        memory: int | None = None,
        resources: dict[str, float] | None = None,
        scheduling_strategy: str = "SPREAD",
        min_actors: int | None = None,
        plugins: Sequence[str] = (),
        runtime_env: dict[str, Any] | None = None,
        namespace: str | None = None,
        init_options: dict[str, Any] | None = None,
        require_feasible: bool = True,
        call_timeout: float = 300.0,
        ready_timeout: float = 120.0,
        health_interval: float = 1.0,
        health_timeout: float = 10.0,
        max_replacements: int = 1000,
        max_start_failures: int = 3,
    ) -> None:
        super().__init__(slots_per_worker=slots_per_actor, health_interval=health_interval,
                         health_timeout=health_timeout)
        if actors < 1:
            raise ConfigError(WHERE, f"actors must be >= 1, got {actors}")
        if min_actors is not None and not 1 <= min_actors <= actors:
            raise ConfigError(WHERE, f"min_actors must be between 1 and actors ({actors}), "
                              f"got {min_actors}")
        if num_cpus < 0 or (memory is not None and memory <= 0):
            raise ConfigError(WHERE, "num_cpus must be >= 0 and memory (bytes) > 0")
        if any(not isinstance(v, int | float) or v < 0 for v in (resources or {}).values()):
            raise ConfigError(WHERE, f"resources must map names to amounts >= 0: {resources}",
                              'e.g. {"browser": 1}')
        if scheduling_strategy not in STRATEGIES:
            raise ConfigError(WHERE, f"unknown scheduling_strategy {scheduling_strategy!r}",
                              f"use one of {', '.join(STRATEGIES)}")
        self.n_actors = actors
        self.min_actors = actors if min_actors is None else min_actors
        self.address = address
        self.num_cpus, self.memory = num_cpus, memory
        self.resources = dict(resources or {})
        self.scheduling_strategy = scheduling_strategy
        self.plugins = list(plugins)
        self.runtime_env, self.namespace = runtime_env, namespace
        self.init_options = dict(init_options or {})
        self.require_feasible = require_feasible
        self.call_timeout, self.ready_timeout = call_timeout, ready_timeout
        self.max_replacements, self.max_start_failures = max_replacements, max_start_failures
        self.replacements = 0
        self.actors: dict[str, Any] = {}  # actor id -> handle, every actor not yet killed
        self.created: list[str] = []  # every actor id ever created
        self._start_failures = 0
        self._connected = False  # we called ray.init (so close disconnects)
        self._closing = False
        self._actor_class: Any = None

    @property
    def target_workers(self) -> int:
        return self.n_actors

    def demand(self) -> dict[str, float]:
        """What one actor asks Ray for."""
        need = {"CPU": self.num_cpus, **self.resources}
        if self.memory:
            need["memory"] = float(self.memory)
        return {k: float(v) for k, v in need.items() if v}

    # ---- start / close ---------------------------------------------------

    async def start(self) -> None:
        self._closing = False
        try:
            ray = await self._connect()
            self._actor_class = ray.remote(EnvHostActor)
            if self.require_feasible:
                await self._check_feasible(ray)
            for index in range(self.n_actors):
                self._spawn(self._launch(index))
            await self._wait_ready()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise
        log.info("ray actors up", actors=sorted(self.workers))

    async def _connect(self) -> Any:
        try:
            import ray
        except ModuleNotFoundError as exc:
            raise ConfigError(WHERE, "Ray is not installed",
                              "pip install 'drillyard[ray]'") from exc
        if ray.is_initialized():  # the app (or a trainer) is already on a cluster: share it
            here = ray.get_runtime_context().gcs_address
            if self.address not in (None, "auto", "local", here):
                raise ConfigError(WHERE, f"this process is already connected to the Ray "
                                  f"cluster at {here}, not {self.address}",
                                  "pass address='auto' (or the same address), or call "
                                  "ray.shutdown() first")
            return ray
        options: dict[str, Any] = {"address": self.address, "namespace": self.namespace,
                                   "log_to_driver": False}
        if self.address == "local":  # private: on loopback, sized like this machine
            options.update(include_dashboard=False, _node_ip_address=LOCAL_IP)
        options.update(self.init_options)
        try:
            await asyncio.to_thread(ray.init, **options)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            raise ConfigError(WHERE, f"cannot connect to a Ray cluster at "
                              f"{self.address or 'the default address'}: {exc}",
                              "start one (ray start --head), pass address='local' to start "
                              "one in this process, or fix the address") from exc
        self._connected = True
        return ray

    async def _check_feasible(self, ray: Any) -> None:
        """Refuse at once when no live node could ever host one actor."""
        need = self.demand()
        nodes = [n for n in await asyncio.to_thread(ray.nodes) if n.get("Alive")]
        offers = [{k: v for k, v in n.get("Resources", {}).items()
                   if not k.startswith("node:") and k != "object_store_memory"} for n in nodes]
        if any(all(offer.get(k, 0.0) >= v for k, v in need.items()) for offer in offers):
            return
        missing = sorted(k for k, v in need.items()
                         if not any(o.get(k, 0.0) >= v for o in offers))
        described = "; ".join(_describe(o) for o in offers) or "no live nodes"
        raise ConfigError(WHERE, f"no node of the cluster can host an actor asking for "
                          f"{_describe(need)} (short of: {', '.join(missing) or 'all at once'});"
                          f" the nodes offer: {described}",
                          "ask for less (num_cpus, memory, resources), start nodes with more "
                          "(ray start --num-cpus N --resources='{\"browser\": 1}'), or pass "
                          "require_feasible=False if an autoscaler adds such nodes")

    async def _wait_ready(self) -> None:
        async with self._changed:
            with anyio.move_on_after(self.ready_timeout):
                while len(self.workers) < self.min_actors and not self.broken:
                    await self._changed.wait()
        if self.broken:
            raise InfraError(f"{WHERE}: {self.broken}")
        if len(self.workers) < self.min_actors:
            raise InfraError(f"{WHERE}: only {len(self.workers)} of {self.min_actors} actors "
                             f"were placed and up within {self.ready_timeout}s (asking "
                             f"{_describe(self.demand())} each; the cluster may be full)")

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            self._closing = True
            await self._stop_tasks()
            for worker in list(self.workers.values()):
                worker.mark_dead("the backend closed")
            self.workers.clear()
            actors, self.actors = list(self.actors.values()), {}
            if actors:
                await asyncio.to_thread(_kill_all, actors)
            if self._connected:
                import ray

                self._connected = False
                await asyncio.to_thread(ray.shutdown)

    # ---- actors ----------------------------------------------------------

    def _options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "num_cpus": self.num_cpus, "resources": self.resources or None,
            "scheduling_strategy": self.scheduling_strategy, "max_restarts": 0,
            "max_task_retries": 0, "max_concurrency": max(100, 4 * self.slots_per_worker)}
        if self.memory:
            options["memory"] = self.memory
        if self.runtime_env:
            options["runtime_env"] = self.runtime_env
        return options

    def _create(self) -> Any:
        return self._actor_class.options(**self._options()).remote(
            self.slots_per_worker, self.call_timeout or None, self.plugins)

    async def _launch(self, index: int) -> None:
        """Create one actor and add it to the pool once Ray has placed it and it is up."""
        actor = await asyncio.to_thread(self._create)
        worker = ActorWorker(index, actor, self.slots_per_worker, self._lost)
        self.actors[worker.actor_id] = actor
        self.created.append(worker.actor_id)
        try:
            await worker.placed()  # waits while the cluster has no room for it
        except Exception as exc:  # it died before it was up (its __init__ raised, ...)
            self.actors.pop(worker.actor_id, None)
            await asyncio.to_thread(_kill_all, [actor])
            self._start_failures += 1
            log.warning("ray actor failed to start", actor=worker.name, error=str(exc))
            if self._start_failures >= self.max_start_failures and not self.workers:
                self.set_broken(f"{self._start_failures} actors in a row died before they "
                                f"were up, the last: {exc} (check plugins and runtime_env: "
                                f"can the cluster's workers import them?)")
                return
            await asyncio.sleep(min(0.2 * 2 ** self._start_failures, 10.0))
            self._relaunch(index)
            return
        if self._closing:
            return
        self._start_failures = 0
        self._add_worker(worker)
        self._spawn(self._watch(worker))
        log.info("ray actor up", actor=worker.name, resources=worker.resources)

    async def _watch(self, worker: ActorWorker) -> None:
        """Hold one call that never answers: it fails, and tells us, when the actor dies."""
        with contextlib.suppress(Exception):
            await worker.call("lifetime")

    def _lost(self, worker: ActorWorker, reason: str) -> None:
        if not self._closing and self.workers.get(worker.name) is worker:
            self.declare_dead(worker, reason)  # (one not yet up is `_launch`'s to handle)

    def _on_dead(self, worker: ActorWorker, reason: str) -> None:  # type: ignore[override]
        actor = self.actors.pop(worker.actor_id, None)
        if actor is not None:  # hung, or already gone: it must not linger
            self._spawn(asyncio.to_thread(_kill_all, [actor]))
        if not self._closing:
            self._relaunch(worker.index)

    def _relaunch(self, index: int) -> None:
        if self._closing or self.broken:
            return
        if self.replacements >= self.max_replacements:
            self.set_broken(f"{self.replacements} actors replaced; max_replacements reached")
            return
        self.replacements += 1
        self._spawn(self._launch(index))


def _kill_all(actors: list[Any]) -> None:
    import ray

    for actor in actors:
        with contextlib.suppress(Exception):  # already dead
            ray.kill(actor, no_restart=True)


def _describe(resources: dict[str, float]) -> str:
    def amount(key: str, value: float) -> str:
        if key in ("memory",):
            return f"{key}={value / 2**30:.1f}GiB"
        return f"{key}={value:g}" if math.isfinite(value) else f"{key}=?"

    return ", ".join(amount(k, v) for k, v in sorted(resources.items())) or "nothing"
