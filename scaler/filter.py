"""AgentScaler's three-stage filter over stored trajectories, and its exports.

A trajectory (a rollout's last attempt, from the trace store) is kept only if
it passes, in order:

1. **validity** — it terminated (state ``done``: not failed on the turn
   budget, not timed out), within ``max_turns`` model calls (default: the
   run's agent budget); every tool call was well-formed (its arguments parsed
   as a JSON object); and no error was left unanswered: every error
   observation is followed by a later successful tool call;
2. **state alignment** — the final state equals the gold final state
   (`tools.stateful.scoring.check_state`);
3. **function-call exact match** — the successful calls equal the gold
   sequence (`check_calls`, tolerances in `tools.stateful.scoring`).

Rollouts that ended in ``error`` or ``cancelled`` (the infrastructure's fault,
or unfinished) are not trajectories and are not counted. `filter_runs`
reports, per domain (the task's ``metadata["domain"]``), how many passed each
stage; `export_sft` writes the kept ones as swift SFT rows (through
`engine.training.sft`), `export_tasks` their tasks as a task file for GRPO.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engine.messages import Category, Message
from engine.store import RolloutRecord, TraceStore
from engine.tasks import Task
from engine.training import sft
from scaler.sampling import task_line
from tools.stateful.scoring import check_calls, check_state

STAGES = ("valid", "aligned", "matched")


@dataclass
class StageCounts:
    trajectories: int = 0
    valid: int = 0
    aligned: int = 0
    matched: int = 0

    def row(self) -> list[int]:
        return [self.trajectories, self.valid, self.aligned, self.matched]


@dataclass(frozen=True, slots=True)
class Judged:
    rollout: RolloutRecord
    task: Task
    stage: str | None  # the first stage it failed; None: kept
    reason: str


@dataclass
class FilterResult:
    judged: list[Judged] = field(default_factory=list)

    @property
    def kept(self) -> list[Judged]:
        return [j for j in self.judged if j.stage is None]

    def by_domain(self) -> dict[str, StageCounts]:
        out: dict[str, StageCounts] = {}
        for j in self.judged:
            counts = out.setdefault(str(j.task.metadata.get("domain", "?")), StageCounts())
            counts.trajectories += 1
            passed = STAGES if j.stage is None else STAGES[: STAGES.index(j.stage)]
            for stage in passed:
                setattr(counts, stage, getattr(counts, stage) + 1)
        return dict(sorted(out.items()))

    def total(self) -> StageCounts:
        total = StageCounts()
        for c in self.by_domain().values():
            for stage in ("trajectories", *STAGES):
                setattr(total, stage, getattr(total, stage) + getattr(c, stage))
        return total


def validity(rollout: RolloutRecord, messages: Sequence[Message], max_turns: int | None) -> str:
    """Why a trajectory is not valid ('' when it is)."""
    if rollout.state != "done":
        return f"did not terminate ({rollout.state}: {rollout.error or 'no answer'})"
    if max_turns is not None and rollout.turns > max_turns:
        return f"{rollout.turns} model calls, over the budget of {max_turns}"
    unanswered: str | None = None
    for m in messages:
        if m.category == Category.TOOL_CALL and m.payload.get("error"):
            return f"malformed call to {m.payload.get('name') or '?'}: {m.payload['error']}"
        if m.category == Category.TOOL_RESULT:
            if m.payload.get("is_error"):
                unanswered = unanswered or f"{m.topic}: {str(m.payload.get('content'))[:120]}"
            else:
                unanswered = None
    return f"error left unanswered ({unanswered})" if unanswered else ""


def judge(rollout: RolloutRecord, task: Task, messages: Sequence[Message],
          max_turns: int | None) -> Judged:
    why = validity(rollout, messages, max_turns)
    if why:
        return Judged(rollout, task, "valid", why)
    state = check_state(task, rollout.answer)
    if not state.ok:
        return Judged(rollout, task, "aligned", state.reason)
    calls = check_calls(task, rollout.answer)
    if not calls.ok:
        return Judged(rollout, task, "matched", calls.reason)
    return Judged(rollout, task, None, "kept")


async def filter_runs(store: TraceStore, run_ids: Iterable[str],
                      max_turns: int | None = None) -> FilterResult:
    """Judge every finished trajectory of the runs (see the module doc)."""
    result = FilterResult()
    for run_id in run_ids:
        record = await store.run(run_id)
        budget = max_turns if max_turns is not None else (
            (record.config.get("agent") or {}).get("max_turns"))
        tasks = {t.id: t for t in await store.tasks(run_id)}
        for r in await store.rollouts(run_id, ("done", "failed", "timed_out")):
            messages = [m for m in await store.messages(r.id) if m.attempt == r.attempt]
            result.judged.append(judge(r, tasks[r.task_id], messages, budget))
    return result


async def export_sft(store: TraceStore, result: FilterResult, path: str | Path) -> int:
    """The kept trajectories as swift SFT JSONL (`engine.training.sft`), run by run."""
    path = Path(path)
    runs: dict[str, set[str]] = {}
    for j in result.kept:
        runs.setdefault(j.rollout.run_id, set()).add(j.rollout.id)
    lines: list[str] = []
    for run_id, ids in sorted(runs.items()):
        part = path.with_name(f".{path.name}.{run_id}.part")
        await sft.export_sft(store, run_id, part, threshold=float("-inf"), rollout_ids=ids)
        lines += part.read_text().splitlines()
        part.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return len(lines)


def export_tasks(result: FilterResult, path: str | Path) -> int:
    """The tasks with at least one kept trajectory, as a task file for GRPO."""
    tasks = {j.task.id: j.task for j in result.kept}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(task_line(t)) + "\n" for t in tasks.values()))
    return len(tasks)
