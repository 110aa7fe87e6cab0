"""Where environments run: the `Backend` ABC and how one is chosen by name.

The lifecycle is split as in inspect_ai's sandboxes: `start`/`close` once per
engine, `acquire`/`release` once per rollout attempt. `lease` wraps the latter
so release always runs, shielded from cancellation: an environment cannot leak.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Self

import anyio

from engine import registry
from engine.environment import Environment, EnvSpec
from engine.errors import ConfigError
from engine.resources import AsyncResource

EnvFactory = Callable[[], Environment]
"""A zero-argument callable that builds an environment (in-process backends only)."""


@dataclass(slots=True)
class Slot:
    """An environment leased to one rollout attempt, and where it lives."""

    env: Environment
    worker: str
    handle: Any = None


class Backend(AsyncResource, ABC):
    """Hosts environments for rollouts. Subclasses register under a name."""

    name: ClassVar[str] = "backend"

    async def start(self) -> None:
        """Engine-level start: spawn workers, connect to a cluster."""

    async def close(self) -> None:
        """Engine-level close: stop everything `start` created."""

    @property
    @abstractmethod
    def slots(self) -> int | None:
        """How many environments can be live at once (None: no limit)."""

    @abstractmethod
    async def acquire(self, spec: EnvSpec | EnvFactory) -> Slot:
        """Build an environment for one attempt, waiting for a free slot."""

    @abstractmethod
    async def release(self, slot: Slot) -> None:
        """Close the environment and free its slot. Must not raise."""

    @asynccontextmanager
    async def lease(self, spec: EnvSpec | EnvFactory) -> AsyncIterator[Slot]:
        """Acquire an environment; release it on exit even when cancelled."""
        slot = await self.acquire(spec)
        try:
            yield slot
        finally:
            with anyio.CancelScope(shield=True):
                await self.release(slot)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def aclose(self) -> None:
        await self.close()


def create_backend(name: str, **config: Any) -> Backend:
    """Build a backend by its registered name, e.g. ``create_backend("inprocess", slots=8)``."""
    cls = registry.resolve("backends", name)
    try:
        backend = cls(**config)
    except TypeError as exc:
        raise ConfigError(
            f"backend '{name}'", f"bad option: {exc}", "see the backend's docs"
        ) from exc
    if not isinstance(backend, Backend):
        raise ConfigError(f"backend '{name}'", f"{cls!r} is not a Backend", None)
    return backend


def build_environment(spec: EnvSpec | EnvFactory) -> Environment:
    """Build an environment in this process from a registered name or a factory."""
    if not isinstance(spec, EnvSpec):
        return spec()
    factory = registry.resolve("environments", spec.name)
    try:
        env = factory(**spec.config)
    except TypeError as exc:
        raise ConfigError(
            f"environment '{spec.name}'", f"bad config {spec.config}: {exc}", "check its options"
        ) from exc
    if not isinstance(env, Environment):
        raise ConfigError(f"environment '{spec.name}'", f"{factory!r} did not build an Environment")
    return env
