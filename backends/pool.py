"""What the subprocess, Kubernetes and Ray backends share: a pool of workers with slots.

`PooledBackend` places each rollout attempt on the live worker with the most
free slots, waiting (backpressure) while none is free; it health-checks every
worker and declares one dead when it misses its health deadline. Subclasses
bring workers up and replace dead ones (`_on_dead`). A worker is anything
with the face of a `PoolWorker`: a `WorkerHandle` (the worker protocol over
HTTP) or a Ray actor (`backends.ray_actor.ActorWorker`).
"""

from __future__ import annotations

import asyncio
import secrets
from abc import abstractmethod
from typing import Any, Protocol

import aiohttp
import anyio
import structlog

from backends.remote import WorkerBusy, WorkerUnreachable
from engine.backend import Backend, EnvFactory, Slot
from engine.environment import Environment, EnvSpec
from engine.errors import ConfigError, EnvironmentLost, InfraError

log = structlog.get_logger("drillyard.backends.pool")


class PoolWorker(Protocol):
    """What the pool needs of a worker. ``create`` raises `WorkerBusy` (no slot there),
    `WorkerUnreachable` (the worker is gone, nothing ran) or `EnvironmentLost`."""

    name: str
    slots: int
    used: int
    alive: bool
    accepting: bool

    @property
    def free(self) -> int: ...

    def mark_dead(self, reason: str) -> None: ...

    async def health(self, deadline: float) -> dict[str, Any]: ...

    async def create(self, spec: EnvSpec) -> Environment: ...


class PoolBroken(InfraError):
    """No worker can be brought up any more; the reason says why."""


class PooledBackend(Backend):
    """A backend whose environments live in workers reached over the worker protocol."""

    def __init__(self, *, slots_per_worker: int, health_interval: float, health_timeout: float,
                 connect_timeout: float = 5.0) -> None:
        if slots_per_worker < 1:
            raise ConfigError(f"backend '{self.name}'",
                              f"slots_per_worker must be >= 1, got {slots_per_worker}")
        if health_interval <= 0 or health_timeout <= 0:
            raise ConfigError(f"backend '{self.name}'", "health_interval and health_timeout "
                              "must be > 0")
        self.slots_per_worker = slots_per_worker
        self.health_interval = health_interval
        self.health_timeout = health_timeout
        self.connect_timeout = connect_timeout
        self.token = secrets.token_urlsafe(32)
        self.workers: dict[str, PoolWorker] = {}
        self.broken: str | None = None
        self.deaths = 0
        self._changed = asyncio.Condition()
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    # ---- subclass hooks --------------------------------------------------

    @property
    @abstractmethod
    def target_workers(self) -> int:
        """How many workers the pool keeps up."""

    @abstractmethod
    def _on_dead(self, worker: PoolWorker, reason: str) -> None:
        """A worker was declared dead: stop what is left of it and bring up another."""

    # ---- lifecycle -------------------------------------------------------

    @property
    def slots(self) -> int:
        return self.target_workers * self.slots_per_worker

    def _open_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, force_close=False)
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _close_session(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _add_worker(self, worker: PoolWorker) -> None:
        self.workers[worker.name] = worker
        self._spawn(self._notify())
        self._spawn(self._health_loop(worker))

    def declare_dead(self, worker: PoolWorker, reason: str) -> None:
        """Mark a worker dead (its calls end with EnvironmentLost) and let the subclass act."""
        if not worker.alive:
            return
        self.deaths += 1
        log.warning("worker lost", worker=worker.name, reason=reason)
        worker.mark_dead(reason)
        self.workers.pop(worker.name, None)
        self._on_dead(worker, reason)
        self._spawn(self._notify())

    def set_broken(self, reason: str) -> None:
        self.broken = reason
        self._spawn(self._notify())

    async def _health_loop(self, worker: PoolWorker) -> None:
        while worker.alive:
            await asyncio.sleep(self.health_interval)
            if not worker.alive:
                return
            try:
                health = await worker.health(self.health_timeout)
            except InfraError as exc:
                if worker.alive:
                    self.declare_dead(worker, f"missed its health deadline ({exc})")
                return
            except Exception as exc:  # a bug, not a death: keep watching
                log.warning("health check failed oddly", worker=worker.name, error=repr(exc))
                continue
            accepting = not health.get("draining", False)
            if accepting != worker.accepting:  # draining (SIGTERM): let its rollouts finish
                log.info("worker draining" if not accepting else "worker accepting",
                         worker=worker.name)
                worker.accepting = accepting
                await self._notify()

    # ---- placement -------------------------------------------------------

    def _pick(self, avoid: set[str]) -> PoolWorker | None:
        live = [w for w in self.workers.values() if w.free > 0 and w.name not in avoid]
        return max(live, key=lambda w: w.free) if live else None

    async def acquire(self, spec: EnvSpec | EnvFactory) -> Slot:
        if not isinstance(spec, EnvSpec):
            raise ConfigError(f"backend '{self.name}'", "environments built by a factory cannot "
                              "leave this process", "name a registered environment instead")
        avoid: set[str] = set()  # workers that just failed us: try the others first
        while True:
            async with self._changed:
                while (worker := self._pick(avoid)) is None:
                    if self.broken:
                        raise PoolBroken(f"backend '{self.name}' has no workers: {self.broken}")
                    with anyio.move_on_after(1.0 if avoid else None) as waited:
                        await self._changed.wait()
                    if waited.cancelled_caught:
                        avoid.clear()
                worker.used += 1
            try:
                env = await worker.create(spec)
            except WorkerBusy:  # it disagrees about its slots: try elsewhere
                avoid.add(worker.name)
                await self._free(worker)
                continue
            except WorkerUnreachable as exc:  # dead, not yet declared: nothing ran there
                self.declare_dead(worker, exc.reason)
                await self._free(worker)
                continue
            except EnvironmentLost as exc:  # it dropped us mid-create: check it, go elsewhere
                log.info("environment create failed; placing elsewhere", worker=worker.name,
                         error=str(exc))
                avoid.add(worker.name)
                self._spawn(self._check(worker))
                await self._free(worker)
                continue
            except BaseException:
                await self._free(worker)
                raise
            return Slot(env=env, worker=worker.name, handle=worker)

    async def _check(self, worker: PoolWorker) -> None:
        """One health check now; a worker that fails it is declared dead."""
        try:
            await worker.health(self.health_timeout)
        except InfraError as exc:
            if worker.alive:
                self.declare_dead(worker, f"failed a health check ({exc})")

    async def release(self, slot: Slot) -> None:
        worker: PoolWorker = slot.handle
        try:
            await slot.env.close()
        except Exception as exc:  # a dead worker took the environment with it
            log.debug("environment close failed", worker=worker.name, error=repr(exc))
        finally:
            await self._free(worker)

    async def _free(self, worker: PoolWorker) -> None:
        worker.used -= 1
        with anyio.CancelScope(shield=True):
            async with self._changed:
                self._changed.notify_all()
