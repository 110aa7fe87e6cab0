"""Environments hosted out of the engine's process: slots, bounded calls, faults sorted.

`EnvHost` is what a worker process (`backends.worker`, over HTTP) and a Ray
actor (`backends.ray_actor`, over Ray calls) both are underneath: up to
``slots`` environments built from registered names, each reset and step
bounded by ``call_timeout``. What a call may end in is the same everywhere:

- a tool that raises, hangs past the deadline, or gets a malformed call:
  an error *observation* the agent sees (the step succeeds);
- an environment that raises an `ENVIRONMENT_FAULTS` error (its browser or
  sandbox died): `HostError` ``lost``, which the engine retries elsewhere;
- a refusal: ``busy`` (no free slot, or draining), ``config`` (the spec names
  no registered environment, or bad options), ``unknown`` (no such
  environment id), ``failed`` (building or resetting it raised), ``timeout``
  (reset past the deadline).

The transport maps `HostError.kind` to its own vocabulary (HTTP statuses in
the worker, engine exceptions in the Ray backend).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from engine.backend import build_environment
from engine.deadlines import within
from engine.environment import (
    Environment,
    EnvSpec,
    Observation,
    Responsive,
    ToolCall,
    ToolSpec,
    responds,
)
from engine.errors import ConfigError
from engine.rollout import ENVIRONMENT_FAULTS
from engine.tasks import TaskView

T = TypeVar("T")

BUSY, CONFIG, UNKNOWN = "busy", "config", "unknown"
FAILED, LOST, TIMEOUT = "failed", "lost", "timeout"


class HostError(Exception):
    """A call the host refused or could not serve; ``kind`` says which (see the module)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)  # both in args: it pickles (Ray) as it is
        self.kind, self.message = kind, message

    def __str__(self) -> str:
        return self.message


@dataclass(slots=True)
class Hosted:
    env: Environment
    spec: EnvSpec
    created: float = field(default_factory=time.monotonic)


class EnvHost:
    """Up to ``slots`` environments; every reset/step bounded by ``call_timeout``."""

    def __init__(self, slots: int = 4, call_timeout: float | None = 300.0) -> None:
        if slots < 1:
            raise ConfigError("worker", f"slots must be >= 1, got {slots}")
        self.slots = slots
        self.call_timeout = call_timeout
        self.envs: dict[str, Hosted] = {}
        self.draining = False
        self.calls = 0  # resets and steps running now
        self._reserved = 0  # slots taken by environments still being built
        self._empty = asyncio.Event()
        self._empty.set()

    @property
    def free(self) -> int:
        return self.slots - len(self.envs) - self._reserved

    def health(self) -> dict[str, Any]:
        return {"ok": not self.draining, "draining": self.draining, "slots": self.slots,
                "free": self.free, "live": len(self.envs), "calls": self.calls,
                "pid": os.getpid()}

    async def create(self, spec: EnvSpec) -> tuple[str, list[ToolSpec]]:
        """Build a registered environment in a free slot; return its id and tools."""
        if self.draining:
            raise HostError(BUSY, "worker is draining")
        if self.free <= 0:
            raise HostError(BUSY, f"all {self.slots} slots are in use")
        self._reserved += 1
        self._empty.clear()
        try:
            env = build_environment(spec)
            tools = env.tools
        except ConfigError as exc:
            raise HostError(CONFIG, str(exc)) from exc
        except Exception as exc:
            raise HostError(FAILED, f"building environment '{spec.name}' raised "
                                    f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._reserved -= 1
            self._check_empty()
        env_id = secrets.token_hex(8)
        self.envs[env_id] = Hosted(env, spec)
        self._empty.clear()
        return env_id, tools

    async def reset(self, env_id: str, view: TaskView) -> Observation:
        hosted = self._get(env_id)
        try:
            return _observation(await self._bounded(hosted.env.reset(view)))
        except Exception as exc:
            raise self._fault("reset", exc) from exc

    def tools(self, env_id: str) -> list[ToolSpec]:
        """An environment's tools now (a reset may change them: BFCL's depend on the task)."""
        return list(self._get(env_id).env.tools)

    def responds(self, env_id: str) -> bool:
        """Whether the environment answers plain replies with user turns (`respond`)."""
        return responds(self._get(env_id).env)

    async def respond(self, env_id: str, reply: str | None) -> Observation | None:
        """The environment's user turn after a plain reply (`Environment.respond`)."""
        hosted = self._get(env_id)
        if not responds(hosted.env):
            raise HostError(CONFIG, f"environment '{hosted.spec.name}' has no respond")
        env = cast(Responsive, hosted.env)
        try:
            obs = await self._bounded(env.respond(reply))
        except Exception as exc:
            raise self._fault("respond", exc) from exc
        if obs is not None and not isinstance(obs, Observation):
            raise HostError(FAILED, f"respond returned {type(obs).__name__}, not an Observation")
        return obs

    async def step(self, env_id: str, call: ToolCall) -> Observation:
        """One tool call; only ``unknown`` and ``lost`` raise, the rest is an observation."""
        hosted = self._get(env_id)
        if call.error is not None:  # a malformed call never reaches the environment
            return Observation.error(call.error)
        try:
            return _observation(await self._bounded(hosted.env.step(call)))
        except TimeoutError:
            return Observation.error(
                f"tool {call.name} did not finish within {self.call_timeout}s")
        except ENVIRONMENT_FAULTS as exc:  # the environment is gone: the engine retries
            raise HostError(LOST, f"environment lost: {type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # the tool's fault: the agent sees it
            return Observation.error(f"tool {call.name} raised {type(exc).__name__}: {exc}")

    async def close(self, env_id: str) -> None:
        """Close an environment and free its slot (``unknown`` if there is none)."""
        hosted = self.envs.pop(env_id, None)
        if hosted is None:
            raise HostError(UNKNOWN, f"no environment {env_id}")
        try:
            await asyncio.shield(self._close(hosted))
        finally:
            self._check_empty()

    async def drain(self, grace: float) -> None:
        """Refuse new environments; wait for live ones to be closed, then close the rest."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), grace)
        for env_id in list(self.envs):
            await self._close(self.envs.pop(env_id))

    # ---- helpers ---------------------------------------------------------

    def _get(self, env_id: str) -> Hosted:
        hosted = self.envs.get(env_id)
        if hosted is None:
            raise HostError(UNKNOWN, f"no environment {env_id}")
        return hosted

    async def _bounded(self, awaitable: Awaitable[T]) -> T:
        """One environment call, counted in ``calls`` and held to ``call_timeout``."""
        self.calls += 1
        try:
            with within(self.call_timeout):  # no task, and no timer of its own, per call
                return await awaitable
        finally:  # done, failed, or cancelled (the engine gave up on it)
            self.calls -= 1

    def _fault(self, what: str, exc: Exception) -> HostError:
        """What a failed reset or respond answers: timed out, environment lost, or failed."""
        if isinstance(exc, TimeoutError):
            return HostError(TIMEOUT, f"{what} did not finish within {self.call_timeout}s")
        if isinstance(exc, ENVIRONMENT_FAULTS):  # the environment is gone: the engine retries
            return HostError(LOST, f"environment lost: {type(exc).__name__}: {exc}")
        return HostError(FAILED, f"{what} raised {type(exc).__name__}: {exc}")

    async def _close(self, hosted: Hosted) -> None:
        try:
            await asyncio.wait_for(hosted.env.close(), self.call_timeout)
        except Exception as exc:
            print(f"worker: closing {hosted.spec.name} failed: {exc!r}", file=sys.stderr)

    def _check_empty(self) -> None:
        if not self.envs and not self._reserved:
            self._empty.set()


def _observation(obs: object) -> Observation:
    if not isinstance(obs, Observation):
        raise TypeError(f"environment returned {type(obs).__name__}, not an Observation")
    return obs
