"""The order a run's rollouts start in: longest expected first shortens the run.

A started rollout can be neither split nor moved, so a run ends when its last
rollouts end: started last, long ones leave the other slots idle. Starting the
longest first and letting the short ones fill the gaps (LPT list scheduling)
is the classic cure; it needs an estimate of each task's duration:

- ``"given"``: as the tasks were passed (the default).
- ``"longest_first"``: each task's mean wall time over its attempts that ended
  normally in earlier runs in the same store (a training loop sees the same
  tasks every epoch), else its ``metadata["expected_s"]``; a task with neither
  is placed at the mean of the known ones. With nothing known, as given.
- a callable ``task -> expected seconds | None``: your own estimate (GAIA's
  annotator step count, a length predictor); None means unknown, as above.

Samples of one task keep their order, and ties keep the given order.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

from engine.errors import ConfigError
from engine.tasks import Task

if TYPE_CHECKING:
    from engine.store import TraceStore

TaskOrder = str | Callable[[Task], float | None]
ORDERS = ("given", "longest_first")
EXPECTED_KEY = "expected_s"

T = TypeVar("T")


def check_order(order: object) -> None:
    """Refuse an unknown order before anything runs."""
    if callable(order) or order in ORDERS:
        return
    raise ConfigError(
        "order",
        f"unknown order {order!r}",
        f"use one of {', '.join(repr(o) for o in ORDERS)} or a function task -> expected seconds",
    )


def _metadata_estimate(task: Task) -> float | None:
    value = task.metadata.get(EXPECTED_KEY)
    if value is None:
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"task {task.id}",
            f"metadata[{EXPECTED_KEY!r}] = {value!r} is not a number of seconds",
        ) from None


async def estimates(
    tasks: Sequence[Task], order: TaskOrder, store: TraceStore
) -> dict[str, float | None]:
    """Expected seconds per task id under ``order`` (None: unknown)."""
    if callable(order):
        out: dict[str, float | None] = {}
        for task in tasks:
            value = order(task)
            if value is not None and not (isinstance(value, int | float) and math.isfinite(value)):
                raise ConfigError(
                    "order",
                    f"the order function returned {value!r} for task {task.id}",
                    "return expected seconds as a finite number, or None when unknown",
                )
            out[task.id] = None if value is None else float(value)
        return out
    if order == "given":
        return {t.id: None for t in tasks}
    history = await store.task_durations(t.id for t in tasks)
    return {t.id: history[t.id][0] if t.id in history else _metadata_estimate(t) for t in tasks}


def longest_first(items: Sequence[T], task_of: Callable[[T], Task],
                  expected: dict[str, float | None]) -> list[T]:  # fmt: skip
    """``items`` by expected duration, longest first; unknown ones at the known mean."""
    known = [v for v in expected.values() if v is not None]
    if not known:
        return list(items)
    fill = statistics.fmean(known)

    def key(item: T) -> float:
        value = expected.get(task_of(item).id)
        return -(fill if value is None else value)

    return sorted(items, key=key)  # stable: samples and ties keep their order
