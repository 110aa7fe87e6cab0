"""The staleness bound and the order of weight updates (no model server needed)."""

from __future__ import annotations

from pathlib import Path

import anyio
import numpy as np
import pytest
from anyio import wait_all_tasks_blocked
from anyio.lowlevel import checkpoint

from engine.training.sync import SyncStopped, WeightSync

pytestmark = pytest.mark.anyio


def checkpoint_dir(root: Path, step: int) -> Path:
    from safetensors.numpy import save_file

    folder = root / f"step-{step}"
    folder.mkdir()
    save_file({"w": np.ones((2, 2), dtype=np.float32)}, str(folder / "model.safetensors"))
    return folder


async def test_a_batch_too_far_ahead_waits_for_newer_weights(tmp_path: Path) -> None:
    sync = WeightSync(None, max_staleness=1)
    started: list[int] = []

    async def batch(b: int) -> None:
        await sync.batch_started(b)
        started.append(b)
        await sync.batch_ended()

    async with anyio.create_task_group() as tg:
        tg.start_soon(batch, 1)  # one version behind at most: starts at once
        tg.start_soon(batch, 2)  # two behind the weights of step 0: waits
        await wait_all_tasks_blocked()
        assert started == [1]
        result = await sync.apply(checkpoint_dir(tmp_path, 1), step=1, overlap=True)
        assert result.version == "step-1"
    assert started == [1, 2]
    assert sync.lag("step-1", 2) == 1 and sync.lag("step-0", 0) == 0


async def test_weights_wait_for_the_batch_in_flight(tmp_path: Path) -> None:
    sync = WeightSync(None, max_staleness=0)
    await sync.batch_started(0)
    applied: list[int] = []

    async def update() -> None:
        applied.append((await sync.apply(checkpoint_dir(tmp_path, 1), 1, False)).step)

    async with anyio.create_task_group() as tg:
        tg.start_soon(update)
        await wait_all_tasks_blocked()
        assert applied == []  # a rollout never mixes two policy versions
        await sync.batch_ended()
    assert applied == [1] and sync.step == 1


async def test_a_stopped_sync_releases_waiting_batches(tmp_path: Path) -> None:
    sync = WeightSync(None, max_staleness=0)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"garbage")
    errors: list[str] = []

    async def batch() -> None:
        try:
            await sync.batch_started(1)
        except SyncStopped as exc:
            errors.append(str(exc))

    async with anyio.create_task_group() as tg:
        tg.start_soon(batch)
        await wait_all_tasks_blocked()
        with pytest.raises(SyncStopped, match="cannot be read"):
            await sync.apply(broken, 1, False)
        await checkpoint()
    assert errors and "cannot be read" in errors[0]
    assert sync.step == 0
