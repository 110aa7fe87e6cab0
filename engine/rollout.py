"""One rollout attempt as an explicit state machine, every transition recorded.

queued → starting → generating ⇄ acting → scoring → done
terminal: failed (the agent's fault: no answer, turn limit — reward 0),
          error (the infrastructure's fault — the scheduler may retry),
          timed_out (the rollout deadline), cancelled (stopped; resumable)
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import anyio
import structlog

from engine.agent import AnyAgent, AppAgent
from engine.backend import Backend, EnvFactory
from engine.context import RolloutContext
from engine.deadlines import within
from engine.environment import Environment, EnvSpec, Observation, tool_names
from engine.errors import AgentFailed, InfraError, NotRetryable
from engine.messages import Category
from engine.policy.base import policy_affinity
from engine.recording import TERMINAL, TRANSITIONS, Recorder, RolloutState
from engine.store import AttemptRecord, TraceStore
from engine.tasks import Task, TaskView

if TYPE_CHECKING:
    from engine.gateway import Gateway

__all__ = [
    "ENVIRONMENT_FAULTS",
    "RETRYABLE",
    "TERMINAL",
    "TRANSITIONS",
    "Limits",
    "Outcome",
    "Rollout",
    "RolloutState",
]

log = structlog.get_logger("drillyard.rollout")

Scorer = Callable[[Task, str | None], "float | bool | Awaitable[float | bool]"]
T = TypeVar("T")
_TRACEBACK_KEPT = 4000


S = RolloutState
RETRYABLE = (InfraError, OSError, aiohttp.ClientError, TimeoutError)
# what an environment's step may raise to say "I am gone" (retried) rather than
# "this tool call failed" (an observation): a FileNotFoundError is the agent's
ENVIRONMENT_FAULTS = (InfraError, ConnectionError, aiohttp.ClientError)


@dataclass(slots=True)
class Limits:
    """Per-attempt limits. ``step_timeout`` bounds one model call or one tool
    call; ``rollout_timeout`` bounds a whole attempt (None: no bound)."""

    step_timeout: float = 120.0
    rollout_timeout: float | None = None


@dataclass(slots=True)
class Outcome:
    state: RolloutState
    reward: float | None = None
    answer: str | None = None
    error: str | None = None
    retryable: bool = False
    detail: str | None = None  # a traceback, for the record


class Rollout(Recorder):
    """Drives one rollout (one sample of one task) through its attempts' states.

    The one driver, whatever the agent: the built-in loop (`Agent`) or an app's
    own (`AppAgent`, whose model calls come in through ``gateway``). Both get a
    `RolloutContext` through which every model and tool call is recorded and
    limited; the outcome of an attempt is classified in `_attempt`.
    """

    def __init__(
        self,
        *,
        rollout_id: str,
        run_id: str,
        task: Task,
        sample_index: int,
        agent: AnyAgent,
        environment: EnvSpec | EnvFactory,
        scorer: Scorer,
        backend: Backend,
        store: TraceStore,
        model_limit: asyncio.Semaphore,
        limits: Limits,
        next_seq: int = 0,
        state: RolloutState = S.QUEUED,
        headers: dict[str, Any] | None = None,
        gateway: Gateway | None = None,
    ) -> None:
        super().__init__(store, run_id, rollout_id, next_seq=next_seq, state=state)
        self._headers = headers or {}
        self.task = task
        self.sample_index = sample_index
        self.agent = agent
        self.environment = environment
        self.scorer = scorer
        self.backend = backend
        self.model_limit = model_limit
        self.limits = limits
        self.gateway = gateway
        self.turns = 0
        self.policy_version: str | None = None
        self.worker: str | None = None

    def headers(self) -> dict[str, Any]:
        """Stamped on every message of this rollout (a trainer's step, for example)."""
        return self._headers

    # ---- one attempt -----------------------------------------------------

    async def run_attempt(self, attempt: int) -> Outcome:
        """Run one attempt to a terminal state and record it."""
        if self.state in (S.ERROR, S.CANCELLED):
            self.transition(S.QUEUED, reason="retry" if self.state == S.ERROR else "resume")
        self.attempt = attempt
        started = time.time()
        self.store.update_rollout(self.id, attempt=attempt, started_at=started)
        outcome = Outcome(S.CANCELLED, error="cancelled")
        with (
            structlog.contextvars.bound_contextvars(
                run=self.run_id, rollout=self.id, attempt=attempt
            ),
            policy_affinity(self.id),
        ):
            try:
                outcome = await self._attempt()
            except anyio.get_cancelled_exc_class():
                outcome = Outcome(S.CANCELLED, error="cancelled (engine stopped or run cancelled)")
                raise
            finally:
                # enqueued after every message of the attempt, so the store can
                # never hold a terminal state without the messages that led to it
                self._finish(outcome, started)
            log.debug("attempt ended", state=str(outcome.state), reward=outcome.reward)
        return outcome

    def _finish(self, outcome: Outcome, started: float) -> None:
        if outcome.error and outcome.state is not S.CANCELLED:
            payload: dict[str, Any] = {"error": outcome.error, "retryable": outcome.retryable}
            if outcome.detail:
                payload["traceback"] = outcome.detail
            self.emit(Category.ERROR, "engine", "engine", str(outcome.state), payload)
        if self.state is not outcome.state:
            self.transition(outcome.state, reason=outcome.error)
        now = time.time()
        self.store.record_attempt(
            AttemptRecord(
                self.id, self.attempt, str(outcome.state), outcome.error, self.worker, started, now
            )
        )
        self.store.update_rollout(
            self.id,
            reward=outcome.reward,
            answer=outcome.answer,
            error=outcome.error,
            turns=self.turns,
            finished_at=now,
            worker=self.worker,
            policy_version=self.policy_version,
        )

    async def _attempt(self) -> Outcome:
        """One attempt; every fault is classified here, whichever agent ran."""
        self.turns = 0
        self.worker = None  # set when this attempt gets an environment
        self.transition(S.STARTING)
        try:
            with within(self.limits.rollout_timeout) as deadline:
                answer = await self._episode()
        except TimeoutError as exc:
            if not deadline.expired():  # some other deadline: the infrastructure's
                return Outcome(S.ERROR, error=f"TimeoutError: {exc}", retryable=True)
            return Outcome(S.TIMED_OUT, error=f"rollout deadline of {self.limits.rollout_timeout}s")
        except AgentFailed as exc:
            return Outcome(S.FAILED, reward=0.0, error=str(exc), detail=exc.detail)
        except NotRetryable as exc:
            return Outcome(S.ERROR, error=str(exc))
        except RETRYABLE as exc:
            return Outcome(S.ERROR, error=f"{type(exc).__name__}: {exc}", retryable=True)
        except Exception as exc:
            log.exception("rollout crashed")
            return Outcome(S.ERROR, error=f"unexpected {type(exc).__name__}: {exc}")
        return await self._score(answer)

    async def _episode(self) -> str:
        """Acquire an environment, reset it, let the agent solve the task."""
        view = self.task.view()
        async with self.backend.lease(self.environment) as slot:
            self.worker = slot.worker
            with structlog.contextvars.bound_contextvars(worker=slot.worker):
                obs = await self._reset(slot.env, view, slot.worker)
                ctx = RolloutContext(self, slot.env, view, obs, self.agent.policy, self.agent.name)
                try:
                    async with self._connected(ctx):
                        return await self._solve(ctx, view)
                finally:
                    ctx.close()

    async def _reset(self, env: Environment, view: TaskView, worker: str) -> Observation:
        self.emit(
            Category.TASK,
            "engine",
            "env",
            "reset",
            {"task": view.to_dict(), "worker": worker},
        )
        obs = await self.bounded(env.reset(view), "environment reset")
        self.emit(
            Category.OBSERVATION,
            "env",
            "agent",
            "reset",
            {**obs.to_dict(), "tools": tool_names(env.tools)},
        )
        return obs

    def _connected(self, ctx: RolloutContext) -> AbstractAsyncContextManager[object]:
        """The attempt's gateway session (an app's agent), or nothing (the built-in loop)."""
        if not isinstance(self.agent, AppAgent):
            return nullcontext()
        if self.gateway is None:
            raise RuntimeError("an AppAgent's rollout needs the engine's gateway")
        return self.gateway.session(ctx, self.agent)

    async def _solve(self, ctx: RolloutContext, view: TaskView) -> str:
        """Run the agent; the attempt's fault, when one was kept, is its outcome."""
        answer: str | None = None
        with anyio.CancelScope() as scope:
            ctx.scope = scope
            try:
                answer = await self.agent.solve(view, ctx)
            except Exception as exc:
                if ctx.fault is not None:  # whatever the app's framework made of it
                    raise ctx.fault  # noqa: B904 - keep the fault's own cause
                if isinstance(exc, AgentFailed) or not self.agent.uses_gateway:
                    raise
                raise AgentFailed(
                    f"the agent raised {type(exc).__name__}: {exc}",
                    "".join(traceback.format_exception(exc))[-_TRACEBACK_KEPT:],
                ) from exc
        if ctx.fault is not None:  # the agent was stopped by it
            raise ctx.fault
        if answer is None:
            answer = ctx.episode_answer
        if answer is None:
            raise AgentFailed("the agent returned no answer")
        if not isinstance(answer, str):
            raise AgentFailed(f"the agent returned a {type(answer).__name__}, not a str answer")
        return answer

    async def bounded(self, awaitable: Awaitable[T], what: str) -> T:
        """``awaitable`` within the step deadline; past it, an `InfraError`."""
        try:
            with within(self.limits.step_timeout):
                return await awaitable
        except TimeoutError as exc:
            raise InfraError(f"{what} took longer than {self.limits.step_timeout}s") from exc

    async def _score(self, answer: str) -> Outcome:
        self.transition(S.SCORING)
        try:
            value = self.scorer(self.task, answer)
            if inspect.isawaitable(value):
                value = await value
            reward = float(value)
        except Exception as exc:
            return Outcome(
                S.ERROR, answer=answer, error=f"scorer raised {type(exc).__name__}: {exc}"
            )
        self.emit(
            Category.SCORE, "scorer", "engine", "reward", {"answer": answer, "reward": reward}
        )
        return Outcome(S.DONE, reward=reward, answer=answer)
