"""A run that grows batch by batch: a training job's rollouts, one run in the store.

`Engine.run` knows all its tasks up front. A trainer does not: it asks for a
batch of rollouts, trains on them, asks for the next. `LiveRun` keeps one run
open across batches; every batch goes through the engine's own scheduler and
rollout driver (the same limits, retries, backend and store as `Engine.run`),
so a fault ends the same way in evaluation and in training::

    live = await engine.live_run(agent, environment="secret_word", scorer="secret_share")
    results = await live.run_batch([BatchItem(task), BatchItem(task)], headers={"step": 0})
    await live.finish()
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from engine.agent import AnyAgent
from engine.backend import EnvFactory
from engine.environment import EnvSpec
from engine.recording import RolloutState
from engine.rollout import Outcome, Rollout, Scorer
from engine.scheduler import Pending, Scheduler
from engine.store import RolloutRecord
from engine.tasks import Task

if TYPE_CHECKING:
    from engine.api import Engine

log = structlog.get_logger("drillyard.live")


@dataclass(slots=True)
class BatchItem:
    """One rollout to run in a batch: its task (a GRPO group per task id), and
    optionally its own agent and the headers stamped on its messages."""

    task: Task
    agent: AnyAgent | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    rollout_id: str | None = None  # set when the batch adds the rollout to the store


@dataclass(slots=True)
class BatchResult:
    """How one rollout of a batch ended."""

    rollout_id: str
    task: Task
    sample_index: int
    outcome: Outcome
    attempts: int
    policy_version: str | None

    @property
    def state(self) -> RolloutState:
        return self.outcome.state


class LiveRun:
    """One open run of an `Engine` that rollouts are added to a batch at a time."""

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        agent: AnyAgent | None,
        environment: EnvSpec | EnvFactory,
        scorer: Scorer,
        *,
        counter: int = 0,
        groups: dict[str, int] | None = None,
    ) -> None:
        self.engine = engine
        self.id = run_id
        self.agent = agent
        self.environment = environment
        self.scorer = scorer
        self.batches = 0
        self.in_flight = 0
        self._counter = counter
        self._groups = dict(groups or {})
        self._known_tasks: set[str] = set(self._groups)
        self.closed = False

    @property
    def store(self) -> Any:
        return self.engine.store

    def _next_rollout(self, task: Task) -> tuple[str, int]:
        index = self._groups.get(task.id, 0)
        self._groups[task.id] = index + 1
        rollout_id = f"{self.id}.{self._counter}"
        self._counter += 1
        return rollout_id, index

    async def run_batch(
        self,
        items: Sequence[BatchItem],
        *,
        all_in_flight: bool = False,
        on_result: Callable[[int, BatchResult], None] | None = None,
    ) -> list[BatchResult]:
        """Run one rollout per item to a result, in the engine's scheduler; results in
        item order. ``all_in_flight`` starts every rollout at once, whatever the
        engine's ``max_rollouts`` (a trainer that drives each turn needs that);
        ``on_result(index, result)`` is called as each rollout ends."""
        if self.closed:
            raise RuntimeError(f"live run {self.id} is finished; open a new one")
        default = self.agent or next((i.agent for i in items if i.agent is not None), None)
        if default is None or (any(i.agent is None for i in items) and self.agent is None):
            raise ValueError(f"live run {self.id} has no agent: give every BatchItem one")
        store = self.engine.store
        new_tasks = [i.task for i in items if i.task.id not in self._known_tasks]
        if new_tasks:
            unique = list({t.id: t for t in new_tasks}.values())
            store.add_tasks(self.id, unique)
            self._known_tasks.update(t.id for t in unique)
        pending: list[Pending] = []
        for item in items:
            rid, index = self._next_rollout(item.task)
            item.rollout_id = rid
            store.add_rollout(rid, self.id, item.task.id, index, self.engine.backend.name)
            record = RolloutRecord.queued(rid, self.id, item.task.id, index)
            pending.append(Pending(record, item.task, agent=item.agent, headers=item.headers))
        await store.commit()
        ended: dict[str, BatchResult] = {}
        position = {p.record.id: i for i, p in enumerate(pending)}

        def ended_one(rollout: Rollout, outcome: Outcome) -> None:
            i = position[rollout.id]
            result = BatchResult(rollout.id, pending[i].task, pending[i].record.sample_index,
                                 outcome, rollout.attempt, rollout.policy_version)  # fmt: skip
            ended[rollout.id] = result
            if on_result is not None:
                on_result(i, result)

        agents = [self.agent, *(i.agent for i in items)]
        uses_gateway = any(a is not None and a.uses_gateway for a in agents)
        scheduler = Scheduler(
            run_id=self.id,
            store=store,
            backend=await self.engine.started_backend(),
            gateway=await self.engine.gateway() if uses_gateway else None,
            agent=default,
            environment=self.environment,
            scorer=self.scorer,
            model_limit=self.engine.model_limit,
            config=self.engine.scheduler_config,
            on_result=ended_one,
        )
        self.batches += 1
        self.in_flight += len(pending)
        try:
            await scheduler.run(pending, max_rollouts=len(pending) if all_in_flight else None)
        finally:
            self.in_flight -= len(pending)
            with anyio.CancelScope(shield=True):
                await store.commit()
        return [ended[p.record.id] for p in pending]

    async def finish(self, status: str = "finished") -> None:
        """Mark the run ended (idempotent); everything recorded is committed."""
        if self.closed:
            return
        self.closed = True
        with anyio.CancelScope(shield=True):
            self.engine.store.set_run_status(self.id, status)
            await self.engine.store.commit()
        log.info("live run ended", run=self.id, status=status, batches=self.batches)
