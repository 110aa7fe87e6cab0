"""What a run's pages say, computed from the store's aggregates (no I/O here).

pass@k comes from `engine.passk` with the same rule as `engine.api.Run.pass_at_k`
(a sample is correct when ``done`` with reward >= 1; ``error`` and unfinished
samples are left out of n); the reward spread counts the GRPO groups whose
rewards are all equal (zero advantage: they teach nothing).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.passk import PassAtK, compute_pass_at_k
from engine.view.queries import AttemptSpan, GroupStat

MAX_BY_VALUES = 10
"""A metadata key with more distinct values than this is not a default slice (``by=`` still is)."""


def ks_for(samples: int) -> list[int]:
    """k for a run of ``samples`` per task: 1, 2, 4, … up to and including ``samples``."""
    ks, k = [], 1
    while k < samples:
        ks.append(k)
        k *= 2
    return [*ks, max(1, samples)]


def parse_ks(text: str | None, samples: int) -> list[int]:
    """``?k=1,3,5`` (each 1 <= k <= samples), else `ks_for`; bad input falls back."""
    if text:
        try:
            ks = sorted({int(k) for k in text.split(",") if k.strip()})
        except ValueError:
            ks = []
        ks = [k for k in ks if 1 <= k <= samples]
        if ks:
            return ks
    return ks_for(samples)


def pass_at_k(
    groups: Iterable[GroupStat],
    ks: Iterable[int],
    metadata: Mapping[str, Mapping[str, Any]] | None = None,
    by: Iterable[str] = (),
) -> PassAtK:
    """pass@k of a run from its group aggregates (n = scored samples, c = correct)."""
    outcomes = {g.task_id: [True] * g.correct + [False] * (g.scored - g.correct) for g in groups}
    return compute_pass_at_k(outcomes, ks, metadata, by)


def slice_keys(metadata: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Metadata keys worth a pass@k row per value by default (GAIA's level): scalar
    values, 2 to MAX_BY_VALUES of them, each shared by three tasks or more on average."""
    values: dict[str, set[Any]] = {}
    tasks: dict[str, int] = {}
    unusable: set[str] = set()
    for meta in metadata.values():
        for key, value in meta.items():
            if not isinstance(value, str | int | float | bool) or key in unusable:
                unusable.add(key)
                continue
            seen = values.setdefault(key, set())
            seen.add(value)
            tasks[key] = tasks.get(key, 0) + 1
            if len(seen) > MAX_BY_VALUES:
                unusable.add(key)
    return sorted(
        k for k, v in values.items() if k not in unusable and 2 <= len(v) <= tasks[k] // 2
    )


@dataclass(slots=True)
class Spread:
    """How the rewards of a run's GRPO groups spread."""

    groups: int = 0
    with_rewards: int = 0  # groups with two or more rewards
    all_equal: int = 0  # of those, every reward the same: zero advantage
    all_zero: int = 0
    all_correct: int = 0
    complete: int = 0  # groups with every sample scored
    by_correct: dict[int, int] = field(default_factory=dict)  # complete groups by correct count

    @property
    def teach_nothing(self) -> float | None:
        return self.all_equal / self.with_rewards if self.with_rewards else None


def spread(groups: Iterable[GroupStat], samples: int) -> Spread:
    out = Spread(by_correct=dict.fromkeys(range(samples + 1), 0))
    for g in groups:
        out.groups += 1
        if g.rewarded >= 2:
            out.with_rewards += 1
            if g.min_reward == g.max_reward:
                out.all_equal += 1
                if g.max_reward == 0:
                    out.all_zero += 1
                elif g.correct == g.scored:
                    out.all_correct += 1
        if g.scored == samples:
            out.complete += 1
            out.by_correct[g.correct] = out.by_correct.get(g.correct, 0) + 1
    return out


@dataclass(slots=True)
class Lane:
    """One slot of one worker: attempts that never overlap, in start order."""

    label: str
    spans: list[AttemptSpan]


def lanes(spans: Iterable[AttemptSpan], now: float) -> list[Lane]:
    """Pack each worker's attempts into the fewest lanes (its slots), workers by name."""
    by_worker: dict[str, list[AttemptSpan]] = {}
    for s in spans:
        by_worker.setdefault(s.worker or "(no environment)", []).append(s)
    out: list[Lane] = []
    for worker in sorted(by_worker):
        free: list[tuple[float, int]] = []  # (ends at, lane index) of this worker's lanes
        mine: list[Lane] = []
        for s in sorted(by_worker[worker], key=lambda s: s.started_at):
            end = s.finished_at if s.finished_at is not None else now
            if free and free[0][0] <= s.started_at:
                _, index = heapq.heappop(free)
            else:
                index = len(mine)
                mine.append(Lane(f"{worker} · {index}", []))
            mine[index].spans.append(s)
            heapq.heappush(free, (end, index))
        out.extend(mine)
    return out
