"""Both ends of one Ray actor that hosts environments.

`EnvHostActor` runs in a Ray worker process: an `EnvHost` (the same hosting
as the HTTP worker: slots, bounded calls, faults sorted) whose methods Ray
calls. Every method answers ``(kind, value)``: ``OK`` and the result, or a
`HostError` kind and its message (refusals travel as values, not as raised
exceptions Ray would log as task failures).

`ActorWorker` is that actor as the pool sees it (the face of a
`backends.pool.PoolWorker`), and `RayEnvironment` one environment in it. A
call awaits the actor's ObjectRef on the engine's event loop (never
``ray.get``); cancelling the call cancels the task in the actor. When the
actor or its node dies, Ray fails the call with a `RayActorError`: it becomes
`EnvironmentLost` naming the actor and its node, and the backend is told
(``on_lost``) so it replaces the actor; the attempt is retried elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import anyio

from backends.host import BUSY, CONFIG, LOST, TIMEOUT, UNKNOWN, EnvHost, HostError
from backends.remote import WorkerBusy, WorkerUnreachable
from engine.environment import EnvSpec, Observation, ToolCall, ToolSpec
from engine.errors import ConfigError, EnvironmentLost, InfraError
from engine.tasks import TaskView

OK = "ok"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
Reply = tuple[str, Any]


class EnvHostActor:
    """The actor: ``slots`` environments in one Ray worker process (async methods)."""

    def __init__(self, slots: int, call_timeout: float | None, plugins: Sequence[str]) -> None:
        for module in plugins:  # they register environments by name
            importlib.import_module(module)
        self.host = EnvHost(slots, call_timeout)

    def where(self) -> dict[str, Any]:
        """Where Ray placed this actor: node, address, pid, the resources it holds."""
        import ray

        ctx = ray.get_runtime_context()
        ip = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
        resources = ctx.get_assigned_resources()  # type: ignore[no-untyped-call]
        return {"node_id": ctx.get_node_id(), "node_ip": ip, "pid": os.getpid(),
                "resources": resources}

    async def health(self) -> dict[str, Any]:
        return self.host.health()

    async def lifetime(self) -> None:
        """Never answers: the pending call fails the moment the actor dies."""
        await asyncio.Event().wait()

    async def create(self, spec: EnvSpec) -> Reply:
        async def built() -> tuple[str, list[ToolSpec], bool]:
            env_id, tools = await self.host.create(spec)
            return env_id, tools, self.host.responds(env_id)

        return await _answer(built())

    async def reset(self, env_id: str, view: TaskView) -> Reply:
        async def reset() -> tuple[Observation, list[ToolSpec]]:
            obs = await self.host.reset(env_id, view)
            return obs, self.host.tools(env_id)  # a reset may change the tools

        return await _answer(reset())

    async def respond(self, env_id: str, reply: str | None) -> Reply:
        async def respond() -> tuple[Observation | None, list[ToolSpec]]:
            obs = await self.host.respond(env_id, reply)
            return obs, self.host.tools(env_id)  # a user turn may offer new tools

        return await _answer(respond())

    async def step(self, env_id: str, call: ToolCall) -> Reply:
        return await _answer(self.host.step(env_id, call))

    async def close(self, env_id: str) -> Reply:
        return await _answer(self.host.close(env_id))


async def _answer(awaitable: Any) -> Reply:
    try:
        return OK, await awaitable
    except HostError as exc:
        return exc.kind, exc.message


def _ray_errors() -> tuple[type[BaseException], type[BaseException]]:
    from ray.exceptions import RayActorError, RayTaskError

    return RayActorError, RayTaskError


def death_reason(exc: BaseException) -> str:
    """What Ray says about a dead actor, without the boilerplate lines."""
    from ray.exceptions import ActorDiedError

    lines = [ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    if getattr(exc, "actor_init_failed", False):  # the traceback's last line says what
        last = next((line for line in reversed(lines) if line), "")
        return f"{type(exc).__name__}: its __init__ raised {last[:400]}"
    keep = [line for line in lines if line and line != ActorDiedError.BASE_ERROR_MSG
            and line.split(":", 1)[0] not in ("class_name", "actor_id", "pid", "name",
                                                "namespace", "ip")]
    text = " ".join(keep) or "the actor died"
    return f"{type(exc).__name__}: {text[:400]}"


class ActorWorker:
    """One environment-hosting actor, as the pool places attempts on it."""

    def __init__(self, index: int, actor: Any, slots: int,
                 on_lost: Callable[[ActorWorker, str], None]) -> None:
        self.index = index
        self.actor = actor
        self.actor_id: str = actor._actor_id.hex()
        self.slots = slots
        self.used = 0
        self.alive = True
        self.accepting = True
        self.lost_reason: str | None = None
        self.node_id = self.node_ip = ""
        self.pid = 0
        self.resources: dict[str, float] = {}
        self.name = f"ray-{index}/actor-{self.actor_id[:8]}"  # until it is placed
        self._on_lost = on_lost
        self._scopes: set[anyio.CancelScope] = set()

    def __repr__(self) -> str:
        return f"ActorWorker({self.name!r}, alive={self.alive}, used={self.used}/{self.slots})"

    @property
    def free(self) -> int:
        return self.slots - self.used if self.alive and self.accepting else 0

    @property
    def node(self) -> str:
        return f"node-{self.node_id[:8]}"

    async def placed(self) -> None:
        """Wait until Ray has placed the actor and it is up; learn where it is."""
        where = await self.call("where")
        self.node_id, self.node_ip = str(where["node_id"]), str(where["node_ip"])
        self.pid, self.resources = int(where["pid"]), dict(where["resources"])
        self.name = (f"ray-{self.index}/actor-{self.actor_id[:8]}/pid{self.pid}"
                     f"@{self.node}:{self.node_ip}")

    def mark_dead(self, reason: str) -> None:
        """Declare the actor dead: every call on it ends with `EnvironmentLost`."""
        if not self.alive:
            return
        self.alive, self.lost_reason = False, reason
        for scope in list(self._scopes):
            scope.cancel()

    def lost(self, why: str) -> EnvironmentLost:
        return EnvironmentLost(f"worker {self.name} lost: {why}")

    async def call(self, method: str, *args: Any, deadline: float | None = None) -> Any:
        """Call an actor method; a dead actor raises `EnvironmentLost`."""
        if not self.alive:
            raise self.lost(self.lost_reason or "declared dead")
        actor_error, task_error = _ray_errors()
        ref = getattr(self.actor, method).remote(*args)
        died: BaseException | None = None
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                with anyio.fail_after(deadline):
                    return await ref
            except actor_error as exc:
                died = exc
            except TimeoutError as exc:
                _cancel(ref)
                raise self.lost(f"no answer to {method} within {deadline}s") from exc
            except task_error as exc:  # a bug in the actor's own code, not the environment's
                raise InfraError(f"worker {self.name}: {method} failed: {exc}") from exc
            except BaseException:
                if not scope.cancel_called:  # our caller gave up: stop the work there too
                    _cancel(ref)
                raise
            finally:
                self._scopes.discard(scope)
        if died is not None:  # Ray says the actor (or its node) is gone
            reason = death_reason(died)
            self._on_lost(self, reason)  # the backend declares it dead and replaces it
            raise self.lost(reason) from died
        raise self.lost(self.lost_reason or "declared dead")

    async def request(self, method: str, *args: Any) -> Any:
        """A call whose answer is ``(kind, value)``: refusals become engine errors."""
        kind, value = await self.call(method, *args)
        if kind == OK:
            return value
        if kind == BUSY:
            raise WorkerBusy(f"worker {self.name} is busy: {value}")
        if kind == CONFIG:
            raise ConfigError(f"worker {self.name}", str(value))
        if kind == UNKNOWN:
            raise self.lost(f"{value} (the actor restarted?)")
        if kind == LOST:  # the environment is gone (ENVIRONMENT_FAULTS), not the actor
            raise EnvironmentLost(f"on worker {self.name}: {value}")
        if kind == TIMEOUT:
            raise InfraError(f"worker {self.name}: {value}")
        raise RuntimeError(str(value))  # failed: the environment's own fault

    async def health(self, deadline: float) -> dict[str, Any]:
        data: dict[str, Any] = await self.call("health", deadline=deadline)
        return data

    async def create(self, spec: EnvSpec) -> RayEnvironment:
        try:
            env_id, tools, responds = await self.request("create", spec)
        except RuntimeError as exc:  # building it raised
            raise InfraError(f"worker {self.name}: {exc}") from exc
        except EnvironmentLost as exc:
            if not self.alive:  # the actor is gone: nothing ran, place it elsewhere
                raise WorkerUnreachable(self.name, self.lost_reason or str(exc)) from exc
            raise
        kind = RespondingRayEnvironment if responds else RayEnvironment
        return kind(self, str(env_id), list(tools))


def _cancel(ref: Any) -> None:
    import ray

    with contextlib.suppress(Exception):  # already finished, or the actor is gone
        ray.cancel(ref)


class RayEnvironment:
    """An `Environment` living in an actor; every method is one actor call."""

    def __init__(self, worker: ActorWorker, env_id: str, tools: list[ToolSpec]) -> None:
        self.worker = worker
        self.env_id = env_id
        self._tools = tools
        self.closed = False

    def __repr__(self) -> str:
        return f"RayEnvironment({self.env_id!r} on {self.worker.name!r})"

    @property
    def tools(self) -> list[ToolSpec]:
        return self._tools

    async def reset(self, task: TaskView) -> Observation:
        obs, tools = await self.worker.request("reset", self.env_id, task)
        self._tools = list(tools)
        return obs  # type: ignore[no-any-return]

    async def step(self, call: ToolCall) -> Observation:
        obs: Observation = await self.worker.request("step", self.env_id, call)
        return obs

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.worker.alive:
            await self.worker.request("close", self.env_id)


class RespondingRayEnvironment(RayEnvironment):
    """A Ray-hosted environment whose real one has ``respond`` (a user between turns)."""

    async def respond(self, reply: str | None) -> Observation | None:
        obs, tools = await self.worker.request("respond", self.env_id, reply)
        self._tools = list(tools)
        return obs  # type: ignore[no-any-return]
