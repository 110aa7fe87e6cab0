"""Trainer checkpoints into the policy's vLLM servers, within a staleness bound.

After an optimizer step the trainer writes a checkpoint and asks for it to be
served. `WeightSync.apply` checks the checkpoint (every safetensors file can
be opened, before any server is paused), waits while a batch still rolling
out would end up more than ``max_staleness`` policy versions behind the
weights it is trained against, then reloads it into every server (pause →
``reload_weights`` → reset prefix cache → resume, `engine.training.reload`)
and bumps the policy version, so every later model call records the new one.

Staleness: a rollout generated with policy version ``v`` and trained at step
``t`` lags ``t - v`` versions. Without overlap the trainer trains on a batch
at the version it was generated with (lag 0); with ``--async_generate`` the
next batch is generated while the current step trains (lag 1). A weight update
that would push a batch still in flight past the bound waits for that batch.

A checkpoint that fails to load stops the sync for good: the servers are put
back on the last weights that loaded, and every later request is refused with
the reason (`SyncStopped`), so training never goes on against half-updated
servers.
"""

from __future__ import annotations

import asyncio
import itertools
import time
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
    reload_s: dict[str, float] = field(default_factory=dict)

    @property
    def total_s(self) -> float:
        return self.waited_s + sum(self.reload_s.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "version": self.version,
            "weights_path": self.weights_path,
            "waited_s": round(self.waited_s, 4),
            "reload_s": self.reload_s,
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
        reloaders: list[WeightReloader],
        *,
        max_staleness: int = 1,
        wait_timeout: float = 600.0,
    ) -> None:
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.reloaders = reloaders
        self.max_staleness = max_staleness
        self.wait_timeout = wait_timeout
        self.step: int | None = None  # the trainer step of the weights being served
        self.overlap = False  # the trainer generates the next batch while it trains
        self.stopped: str | None = None
        self.last_good: Path | None = None
        self.history: list[SyncResult] = []
        self._in_flight: dict[int, int] = {}  # batch id -> version step it started on
        self._ids = itertools.count()
        self._changed = asyncio.Condition()

    # ---- batches ---------------------------------------------------------

    def check_running(self) -> None:
        if self.stopped is not None:
            raise SyncStopped(self.stopped)

    def train_step(self) -> int:
        """The trainer step a batch requested now will be trained at."""
        return (self.step or 0) + (1 if self.overlap else 0)

    def lag(self, version: str | None) -> int | None:
        """How many versions a rollout of ``version`` lags the step it is trained at."""
        ran = version_step(version)
        return None if ran is None else self.train_step() - ran

    async def batch_started(self) -> int:
        self.check_running()
        batch = next(self._ids)
        self._in_flight[batch] = self.step or 0
        return batch

    async def batch_ended(self, batch: int) -> None:
        async with self._changed:
            self._in_flight.pop(batch, None)
            self._changed.notify_all()

    # ---- weight updates --------------------------------------------------

    async def apply(self, weights_path: str | Path, step: int, overlap: bool) -> SyncResult:
        """Serve the checkpoint of trainer step ``step`` on every server."""
        self.check_running()
        path = Path(await anyio.Path(weights_path).resolve())
        await anyio.to_thread.run_sync(check_checkpoint, path)
        self.overlap = overlap
        trained_at = step + (1 if overlap else 0)
        t0 = time.perf_counter()

        def too_stale() -> bool:
            return any(trained_at - v > self.max_staleness for v in self._in_flight.values())

        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: not too_stale()),
                                       self.wait_timeout)  # fmt: skip
            except TimeoutError as exc:
                raise SyncStopped(
                    f"weights of step {step} waited {self.wait_timeout}s for rollouts that "
                    f"would lag more than {self.max_staleness} version(s)"
                ) from exc
        result = SyncResult(step, version_name(step), str(path), time.perf_counter() - t0)
        for reloader in self.reloaders:
            try:
                done = await reloader.reload(path, result.version)
            except ReloadError as exc:
                await self._stop(f"weights of step {step} from {path} failed to load on "
                                 f"{reloader.url}: {exc}")  # fmt: skip
                raise SyncStopped(self.stopped or str(exc)) from exc
            result.reload_s[reloader.url] = round(done.total_s, 4)
        self.step, self.last_good = step, path
        self.history.append(result)
        log.info("weights served", **result.to_dict())
        return result

    async def _stop(self, reason: str) -> None:
        """Put every server back on the last weights that loaded; refuse what follows."""
        self.stopped = reason
        log.error("weight sync stopped", reason=reason)
        if self.last_good is None:
            return
        version = version_name(self.step or 0)
        for reloader in self.reloaders:
            try:
                await reloader.reload(self.last_good, version)
            except ReloadError as exc:
                self.stopped += f"; restoring {self.last_good} on {reloader.url} failed too: {exc}"
