"""The client side of the worker protocol: a worker handle and an `Environment` proxy.

A `WorkerHandle` is one worker (a process or a pod) as the driver sees it: its
URL, its slots, whether it is alive. Every call to it runs inside a cancel
scope the handle keeps; when the worker is declared dead (its process exited,
its pod was deleted, it missed its health deadline) those scopes are
cancelled, so a call stuck on a dead worker ends at once with
`EnvironmentLost`, and the scheduler retries the attempt elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import anyio

from backends.channel import Channel, ChannelClosed
from engine.deadlines import within
from engine.environment import EnvSpec, Observation, ToolCall, ToolSpec
from engine.errors import ConfigError, EnvironmentLost, InfraError, NotRetryable
from engine.tasks import TaskView

CLOSE_DEADLINE = 10.0  # seconds a DELETE may take before the worker counts as lost


class WorkerUnreachable(EnvironmentLost):
    """No connection could be made to the worker: the request never reached it."""

    def __init__(self, worker: str, reason: str) -> None:
        super().__init__(f"worker {worker} lost: {reason}")
        self.reason = reason


class WorkerBusy(InfraError):
    """The worker answered 503: no free slot, or it is draining."""


class WorkerHandle:
    """One worker: where it is, how many slots it has, whether it is alive."""

    def __init__(self, name: str, url: str, token: str, session: aiohttp.ClientSession,
                 slots: int, connect_timeout: float = 5.0) -> None:
        self.name = name
        self.url = url.rstrip("/")
        self.slots = slots
        self.used = 0
        self.alive = True
        self.accepting = True  # False while the worker drains: no new environments there
        self.lost_reason: str | None = None
        self._session = session
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout)
        self._connect_timeout = connect_timeout
        self._scopes: set[anyio.CancelScope] = set()
        self._channel: Channel | None = None
        self._channel_lock = asyncio.Lock()
        self.channel_supported = True  # False: the worker serves HTTP only

    def __repr__(self) -> str:
        return f"WorkerHandle({self.name!r}, alive={self.alive}, used={self.used}/{self.slots})"

    @property
    def free(self) -> int:
        return self.slots - self.used if self.alive and self.accepting else 0

    @property
    def in_flight(self) -> int:
        """Calls on this worker waiting for an answer (either lane)."""
        return len(self._scopes) + (self._channel.in_flight if self._channel is not None else 0)

    def mark_dead(self, reason: str) -> None:
        """Declare the worker dead: every call on it ends with `EnvironmentLost`."""
        if not self.alive:
            return
        self.alive, self.lost_reason = False, reason
        for scope in list(self._scopes):
            scope.cancel()
        if self._channel is not None:
            self._channel.abort(f"worker {self.name} lost: {reason}")

    def _lost(self, why: str) -> EnvironmentLost:
        return EnvironmentLost(f"worker {self.name} lost: {why}")

    async def call(self, method: str, path: str, body: dict[str, Any] | None = None,
                   deadline: float | None = None) -> Any:
        """One protocol call; connection faults and worker death raise `EnvironmentLost`."""
        if not self.alive:
            raise self._lost(self.lost_reason or "declared dead")
        timeout_cfg = (self._timeout if deadline is None
                       else aiohttp.ClientTimeout(total=deadline, sock_connect=deadline))
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                async with self._session.request(method, self.url + path, json=body,
                                                 headers=self._headers,
                                                 timeout=timeout_cfg) as resp:
                    text = await resp.text()
                    try:
                        data = json.loads(text)
                    except ValueError as exc:  # not the protocol: a proxy, a crash page
                        raise InfraError(f"worker {self.name} answered {resp.status} to {path} "
                                         f"with no JSON: {text[:200]!r}") from exc
                    return self._check(resp.status, data, path)
            except aiohttp.ClientConnectorError as exc:  # nothing listens: nothing ran
                raise WorkerUnreachable(self.name, f"{type(exc).__name__}: {exc}") from exc
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
                raise self._lost(f"{type(exc).__name__}: {exc}") from exc
            except TimeoutError as exc:
                if deadline is not None:
                    raise self._lost(f"no answer to {method} {path} within {deadline}s") from exc
                raise
            finally:
                self._scopes.discard(scope)
        raise self._lost(self.lost_reason or "declared dead")

    async def send(self, op: str, env_id: str | None, body: dict[str, Any],
                   deadline: float | None = None) -> Any:
        """One environment call (``create``, ``reset``, ``step``, ``delete``) over the
        worker's channel, or over HTTP where it has none; faults as `call` raises them."""
        if not self.alive:
            raise self._lost(self.lost_reason or "declared dead")
        channel = self._channel
        if channel is None or channel.closed:
            channel = await self._open_channel()
        if channel is None:
            method, path = _ROUTES[op]
            return await self.call(method, path.format(env_id), body or None, deadline)
        try:
            if deadline is None:
                status, data = await channel.call(op, env_id, body)
            else:
                with within(deadline):
                    status, data = await channel.call(op, env_id, body)
        except ChannelClosed as exc:
            raise self._lost(str(exc)) from exc
        except TimeoutError as exc:
            if deadline is None:
                raise
            raise self._lost(f"no answer to {op} within {deadline}s") from exc
        return self._check(status, data, _ROUTES[op][1].format(env_id))

    async def _open_channel(self) -> Channel | None:
        """The worker's channel, opened on first use (and again after it closed)."""
        if not self.channel_supported:
            return None
        async with self._channel_lock:
            if self._channel is not None and not self._channel.closed:
                return self._channel
            if not self.alive:
                raise self._lost(self.lost_reason or "declared dead")
            try:
                async with asyncio.timeout(self._connect_timeout):
                    self._channel = await Channel.connect(self._session, self.url + "/channel",
                                                          self._headers, CLOSE_DEADLINE)
            except aiohttp.WSServerHandshakeError as exc:
                if exc.status == 401:
                    raise NotRetryable(f"worker {self.name} refused the engine's token") from exc
                if exc.status in (404, 405):  # a worker without the channel: HTTP it is
                    self.channel_supported = False
                    return None
                raise self._lost(f"channel refused: HTTP {exc.status}") from exc
            except aiohttp.ClientConnectorError as exc:
                raise WorkerUnreachable(self.name, f"{type(exc).__name__}: {exc}") from exc
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise self._lost(f"channel: {type(exc).__name__}: {exc}") from exc
            if not self.alive:  # declared dead while connecting
                self._channel.abort(f"worker {self.name} lost: {self.lost_reason}")
                raise self._lost(self.lost_reason or "declared dead")
            return self._channel

    def _check(self, status: int, data: Any, path: str) -> Any:
        if status == 200:
            return data
        why = data.get("error") if isinstance(data, dict) else str(data)
        if status == 401:
            raise NotRetryable(f"worker {self.name} refused the engine's token: {why}")
        if status == 503:
            raise WorkerBusy(f"worker {self.name} is busy: {why}")
        if status == 404:
            raise self._lost(f"{why} (the worker restarted?)")
        if status == 410:  # the environment is gone (ENVIRONMENT_FAULTS), not the worker
            raise EnvironmentLost(f"on worker {self.name}: {why}")
        if status == 400 and path == "/envs":
            raise ConfigError(f"worker {self.name}", str(why))
        raise InfraError(f"worker {self.name} answered {status} to {path}: {why}")

    async def health(self, deadline: float) -> dict[str, Any]:
        data: dict[str, Any] = await self.call("GET", "/health", deadline=deadline)
        return data

    async def create(self, spec: EnvSpec) -> RemoteEnvironment:
        data = await self.send("create", None, {"spec": spec.to_dict()})
        cls = RespondingRemoteEnvironment if data.get("respond") else RemoteEnvironment
        return cls(self, str(data["env_id"]), list(data["tools"]))


_ROUTES = {
    "create": ("POST", "/envs"),
    "reset": ("POST", "/envs/{}/reset"),
    "step": ("POST", "/envs/{}/step"),
    "respond": ("POST", "/envs/{}/respond"),
    "delete": ("DELETE", "/envs/{}"),
}
"""Each environment call's HTTP route, for workers without a channel."""


class RemoteEnvironment:
    """An `Environment` living in a worker; every method is one HTTP call."""

    def __init__(self, worker: WorkerHandle, env_id: str, tools: list[ToolSpec]) -> None:
        self.worker = worker
        self.env_id = env_id
        self._tools = tools
        self.closed = False

    def __repr__(self) -> str:
        return f"RemoteEnvironment({self.env_id!r} on {self.worker.name!r})"

    @property
    def tools(self) -> list[ToolSpec]:
        return self._tools

    async def reset(self, task: TaskView) -> Observation:
        try:
            data = await self.worker.send("reset", self.env_id, {"task_view": task.to_dict()})
        except InfraError as exc:
            if type(exc) is InfraError:  # the environment's own fault, not the worker's
                raise RuntimeError(str(exc)) from exc
            raise
        if isinstance(data.get("tools"), list):  # a reset may change the tools
            self._tools = list(data["tools"])
        return Observation.from_dict(data)

    async def step(self, call: ToolCall) -> Observation:
        data = await self.worker.send("step", self.env_id, {"tool_call": call.to_dict()})
        return Observation.from_dict(data)

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.worker.alive:
            await self.worker.send("delete", self.env_id, {}, deadline=CLOSE_DEADLINE)


class RespondingRemoteEnvironment(RemoteEnvironment):
    """A remote environment whose real one has ``respond`` (a user between turns)."""

    async def respond(self, reply: str | None) -> Observation | None:
        try:
            data = await self.worker.send("respond", self.env_id, {"reply": reply})
        except InfraError as exc:
            if type(exc) is InfraError:  # the environment's own fault, as on reset
                raise RuntimeError(str(exc)) from exc
            raise
        self._tools = list(data["tools"])  # a user turn may offer new tools
        obs = data.get("observation")
        return None if obs is None else Observation.from_dict(obs)
