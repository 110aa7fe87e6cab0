"""The scheduler: rollouts under explicit limits, infrastructure faults retried.

Limits: rollouts in flight (``max_rollouts`` workers pull from one queue),
model requests in flight (a semaphore around every policy call), environment
slots (the backend's own). An attempt that ends ``error`` for a retryable
reason runs again after a jittered backoff, up to ``max_attempts``; every
attempt is a row in the store with its reason.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from engine.agent import AnyAgent
from engine.backend import Backend, EnvFactory
from engine.environment import EnvSpec
from engine.recording import RolloutState
from engine.rollout import Limits, Outcome, Rollout, Scorer
from engine.store import RolloutRecord, TraceStore
from engine.tasks import Task

if TYPE_CHECKING:
    from engine.gateway import Gateway

log = structlog.get_logger("drillyard.scheduler")

START_CHUNK = 16
_MID_ATTEMPT = frozenset({"starting", "generating", "acting", "scoring"})


@dataclass(slots=True)
class SchedulerConfig:
    """How much runs at once and how faults are retried."""

    max_rollouts: int = 64
    max_attempts: int = 3
    retry_backoff: float = 0.2
    limits: Limits = field(default_factory=Limits)

    def __post_init__(self) -> None:
        if self.max_rollouts < 1:
            raise ValueError(f"max_rollouts must be >= 1, got {self.max_rollouts}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")


@dataclass(slots=True)
class Pending:
    """A rollout to run: its stored record, its task and its next message seq;
    optionally its own agent (else the scheduler's) and headers for its messages."""

    record: RolloutRecord
    task: Task
    next_seq: int = 0
    agent: AnyAgent | None = None
    headers: dict[str, Any] | None = None


class Scheduler:
    """Runs a batch of rollouts of one run to a result each."""

    def __init__(
        self,
        *,
        run_id: str,
        store: TraceStore,
        backend: Backend,
        agent: AnyAgent,
        environment: EnvSpec | EnvFactory,
        scorer: Scorer,
        model_limit: asyncio.Semaphore,
        config: SchedulerConfig,
        on_result: Callable[[Rollout, Outcome], None] | None = None,
        gateway: Gateway | None = None,
    ) -> None:
        self.run_id = run_id
        self.store = store
        self.backend = backend
        self.agent = agent
        self.environment = environment
        self.scorer = scorer
        self.model_limit = model_limit
        self.config = config
        self.on_result = on_result
        self.gateway = gateway
        self.retries = 0

    async def run(self, pending: list[Pending], *, max_rollouts: int | None = None) -> None:
        """Run every pending rollout to a result; ``max_rollouts`` overrides the
        configured number in flight (a trainer's batch must all be in flight)."""
        queue = deque(pending)
        workers = min(max_rollouts or self.config.max_rollouts, len(queue))
        log.info("scheduling", run=self.run_id, rollouts=len(queue), workers=workers)
        async with anyio.create_task_group() as tg:
            for i in range(workers):
                tg.start_soon(self._worker, queue)
                if i % START_CHUNK == START_CHUNK - 1:
                    # let the rollouts just started take their first steps before
                    # starting more: a burst of thousands would stall the loop
                    await asyncio.sleep(0)

    async def _worker(self, queue: deque[Pending]) -> None:
        while queue:
            await self._run_one(queue.popleft())

    def _rollout(self, item: Pending) -> Rollout:
        rec = item.record
        rollout = Rollout(
            rollout_id=rec.id,
            run_id=self.run_id,
            task=item.task,
            sample_index=rec.sample_index,
            agent=item.agent or self.agent,
            environment=self.environment,
            scorer=self.scorer,
            backend=self.backend,
            store=self.store,
            model_limit=self.model_limit,
            limits=self.config.limits,
            next_seq=item.next_seq,
            state=RolloutState(rec.state),
            headers=item.headers,
            gateway=self.gateway,
        )
        if rec.state in _MID_ATTEMPT:
            # the engine died mid-attempt: close that attempt as cancelled first
            rollout.attempt = rec.attempt
            rollout.worker = rec.worker
            rollout._finish(
                Outcome(
                    RolloutState.CANCELLED, error="interrupted: the engine stopped mid-attempt"
                ),
                rec.started_at or time.time(),
            )
        return rollout

    async def _run_one(self, item: Pending) -> None:
        rollout = self._rollout(item)
        attempt = item.record.attempt
        errors = 0
        while True:
            attempt += 1
            outcome = await rollout.run_attempt(attempt)
            if (
                outcome.state is RolloutState.ERROR
                and outcome.retryable
                and errors + 1 < self.config.max_attempts
            ):
                errors += 1
                self.retries += 1
                delay = self.config.retry_backoff * 2 ** (errors - 1)
                log.info("retrying", rollout=rollout.id, attempt=attempt, error=outcome.error)
                await anyio.sleep(delay * (0.5 + random.random()))
                continue
            break
        if self.on_result is not None:
            self.on_result(rollout, outcome)
