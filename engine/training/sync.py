"""Trainer checkpoints into the policy's vLLM servers, within a staleness bound.

After an optimizer step the trainer writes a checkpoint and asks for it to be
served. `WeightSync.apply` checks the checkpoint (every safetensors file can
be opened, before any server is paused), waits until no batch is rolling out
(a rollout never mixes two policy versions), then reloads it into every
server (pause → ``reload_weights`` → reset prefix cache → resume,
`engine.training.reload`) and bumps the policy version, so every later model
call records the new one.

Staleness: batch ``b`` (the ``b``-th the trainer asked for) is trained at
step ``b``; generated with the weights of step ``v`` it lags ``b - v``
versions. Without overlap every batch is generated right after its step's
weights arrived (lag 0); with ``--async_generate`` the next batch is generated
while the current step trains (lag 1). A batch that would lag more than
``max_staleness`` waits, before it starts, for newer weights.

A checkpoint that fails to load stops the sync for good: the reloader puts
every server back on the weights it served before (`WeightReloader.reload` is
all or none), and every later request is refused with the reason
(`SyncStopped`), so training never goes on against half-updated servers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import structlog

from engine.errors import DrillyardError
from engine.training.reload import ReloadError, WeightReloader

log = structlog.get_logger("drillyard.sync")


class SyncStopped(DrillyardError):
    """A weight update failed; the run stopped rather than train on mixed weights."""


@dataclass(slots=True)
class SyncResult:
    """What one weight update did and how long each part took."""

    step: int
    version: str
    weights_path: str
    waited_s: float
    reload_s: dict[str, float] = field(default_factory=dict)  # per server
    reload_wall_s: float = 0.0  # all servers, from the first pause to the last resume

    @property
    def total_s(self) -> float:
        return self.waited_s + self.reload_wall_s

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "version": self.version,
            "weights_path": self.weights_path,
            "waited_s": round(self.waited_s, 4),
            "reload_s": self.reload_s,
            "reload_wall_s": self.reload_wall_s,
            "total_s": round(self.total_s, 4),
        }


def version_name(step: int) -> str:
    return f"step-{step}"


def version_step(version: str | None) -> int | None:
    """The trainer step a version name stands for (None: not a trainer version)."""
    if version and version.startswith("step-") and version[5:].isdigit():
        return int(version[5:])
    return None


def check_checkpoint(path: Path) -> None:
    """Raise `ReloadError` unless ``path`` is a folder of loadable safetensors."""
    if not path.is_dir():
        raise ReloadError(f"checkpoint folder {path} does not exist")
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ReloadError(f"checkpoint folder {path} holds no *.safetensors file")
    try:
        from safetensors import safe_open
    except ImportError:  # the server's own load is then the only check
        return
    for file in files:
        try:
            with safe_open(str(file), framework="numpy") as fh:
                for name in fh.keys():  # noqa: SIM118 (a safetensors handle, not a dict)
                    fh.get_slice(name)
        except Exception as exc:
            raise ReloadError(f"checkpoint file {file} cannot be read: {exc}") from exc


class WeightSync:
    """Serves trainer checkpoints on every vLLM server of one training run."""

    def __init__(
        self,
        reloader: WeightReloader | None,
        *,
        max_staleness: int = 1,
        wait_timeout: float = 600.0,
    ) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.reloader = reloader  # None: no model server to update (tests, scripted policies)
        self.max_staleness = max_staleness
        self.wait_timeout = wait_timeout
        self.step = 0  # the trainer step of the weights being served
        self.overlap = False  # the trainer generates the next batch while it trains
        self.stopped: str | None = None
        self.history: list[SyncResult] = []
        self.in_flight = 0
        self._changed = asyncio.Condition()

    def check_running(self) -> None:
        if self.stopped is not None:
            raise SyncStopped(self.stopped)

    def lag(self, version: str | None, batch: int) -> int | None:
        """How many versions a rollout of ``version`` in batch ``batch`` lags its step."""
        ran = version_step(version)
        return None if ran is None else batch - ran

    async def _wait(self, ready: Callable[[], bool], what: str) -> float:
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(self._changed.wait_for(ready), self.wait_timeout)
        except TimeoutError as exc:
            raise SyncStopped(f"{what} waited {self.wait_timeout}s") from exc
        return time.perf_counter() - t0

    # ---- batches ---------------------------------------------------------

    async def batch_started(self, batch: int) -> float:
        """Wait until batch ``batch`` would lag no more than ``max_staleness``
        versions, then count it in flight; the seconds waited."""
        self.check_running()
        async with self._changed:
            waited = await self._wait(
                lambda: batch - self.step <= self.max_staleness or self.stopped is not None,
                f"batch {batch} (weights of step {self.step}, bound {self.max_staleness})",
            )
            self.check_running()
            self.in_flight += 1
        return waited

    async def batch_ended(self) -> None:
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    # ---- weight updates --------------------------------------------------

    async def apply(self, weights_path: str | Path, step: int, overlap: bool) -> SyncResult:
        """Serve the checkpoint of trainer step ``step`` on every server."""
        self.check_running()
        path = Path(await anyio.Path(weights_path).resolve())
        try:
            await anyio.to_thread.run_sync(check_checkpoint, path)
        except ReloadError as exc:  # nothing was touched: the servers keep their weights
            await self._stop(f"weights of step {step}: {exc}")
            raise SyncStopped(self.stopped or str(exc)) from exc
        self.overlap = overlap
        async with self._changed:
            what = f"weights of step {step} (for the rollouts in flight)"
            waited = await self._wait(lambda: self.in_flight == 0, what)
            result = SyncResult(step, version_name(step), str(path), waited)
            if self.reloader is not None:
                try:  # all servers or none; a failure leaves each on its old weights
                    done = await self.reloader.reload(path, result.version)
                except ReloadError as exc:
                    await self._stop(f"weights of step {step} from {path} failed to load: {exc}")
                    raise SyncStopped(self.stopped or str(exc)) from exc
                result.reload_s = {url: round(sum(t.values()), 4)
                                   for url, t in done.per_server.items()}  # fmt: skip
                result.reload_wall_s = round(done.total_s, 4)
            self.step = step
            self._changed.notify_all()
        self.history.append(result)
        log.info("weights served", **result.to_dict())
        return result

    async def _stop(self, reason: str) -> None:
        """Refuse every later batch and update, naming ``reason``."""
        self.stopped = reason
        log.error("weight sync stopped", reason=reason)
        async with self._changed:
            self._changed.notify_all()
