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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
import anyio
import structlog

from engine.agent import Agent
from engine.backend import Backend, EnvFactory
from engine.environment import EnvSpec, Observation, ToolCall
from engine.errors import InfraError, NotRetryable
from engine.messages import Category
from engine.policy.base import Completion, policy_affinity
from engine.policy.toolcalls import make_call
from engine.recording import TERMINAL, TRANSITIONS, Recorder, RolloutState
from engine.store import AttemptRecord, TraceStore
from engine.tasks import Task, TaskView

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


S = RolloutState
_T = TypeVar("_T")
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


class _AgentFailed(Exception):
    """The agent ended without a scorable answer (turn limit, no answer)."""


class Rollout(Recorder):
    """Drives one rollout (one sample of one task) through its attempts' states."""

    def __init__(
        self,
        *,
        rollout_id: str,
        run_id: str,
        task: Task,
        sample_index: int,
        agent: Agent,
        environment: EnvSpec | EnvFactory,
        scorer: Scorer,
        backend: Backend,
        store: TraceStore,
        model_limit: asyncio.Semaphore,
        limits: Limits,
        next_seq: int = 0,
        state: RolloutState = S.QUEUED,
        headers: dict[str, Any] | None = None,
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
            policy_affinity(self.id),  # a multi-server policy keeps this rollout on one server
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
            self.emit(
                Category.ERROR,
                "engine",
                "engine",
                str(outcome.state),
                {"error": outcome.error, "retryable": outcome.retryable},
            )
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
        self.turns = 0
        self.worker = None  # set when this attempt gets an environment
        self.transition(S.STARTING)
        try:
            deadline = asyncio.timeout(self.limits.rollout_timeout)
            async with deadline:
                answer = await self._episode()
        except TimeoutError:
            if not deadline.expired():
                raise
            return Outcome(S.TIMED_OUT, error=f"rollout deadline of {self.limits.rollout_timeout}s")
        except _AgentFailed as exc:
            return Outcome(S.FAILED, reward=0.0, error=str(exc))
        except NotRetryable as exc:
            return Outcome(S.ERROR, error=str(exc))
        except RETRYABLE as exc:
            return Outcome(S.ERROR, error=f"{type(exc).__name__}: {exc}", retryable=True)
        except Exception as exc:
            log.exception("rollout crashed")
            return Outcome(S.ERROR, error=f"unexpected {type(exc).__name__}: {exc}")
        return await self._score(answer)

    async def _episode(self) -> str:
        """Acquire an environment, converse until an answer; return the answer."""
        view = self.task.view()
        async with self.backend.lease(self.environment) as slot:
            self.worker = slot.worker
            with structlog.contextvars.bound_contextvars(worker=slot.worker):
                return await self._converse(slot.env, view, slot.worker)

    async def _converse(self, env: Any, view: TaskView, worker: str) -> str:
        """Reset the environment, then alternate model and tools until an answer."""
        self.emit(
            Category.TASK,
            "engine",
            "env",
            "reset",
            {"task": view.to_dict(), "worker": worker},
        )
        obs = await self._bounded(env.reset(view), "environment reset")
        # a text tool takes the agent's plain replies: it is not the model's to call
        tools = [t for t in env.tools if t["function"]["name"] != self.agent.text_tool]
        self.emit(
            Category.OBSERVATION,
            "env",
            "agent",
            "reset",
            {**obs.to_dict(), "tools": [t["function"]["name"] for t in env.tools]},
        )
        messages = self.agent.first_messages(view, obs.content)
        while self.turns < self.agent.max_turns:
            self.turns += 1
            self.transition(S.GENERATING)
            reply = await self._generate(messages, tools)
            messages.append(reply.assistant_message())
            text_tool = self.agent.text_tool
            if not reply.tool_calls and text_tool is None:
                user = await self._user_turn(env, reply.content)
                if user is None:  # no (more) user turns: the reply is the final answer
                    answer = self.agent.answer_from(reply.content)
                    if answer is None:
                        raise _AgentFailed("the final reply holds no answer")
                    return answer
                if user.done:
                    if user.answer is None:
                        raise _AgentFailed("the environment ended the episode with no answer")
                    return user.answer
                messages.append({"role": "user", "content": user.content})
                tools = env.tools  # a user turn may offer new tools
                continue
            self.transition(S.ACTING)
            if not reply.tool_calls:  # a text action: the plain reply goes to the text tool
                assert text_tool is not None
                said = make_call(f"text_{self.turns}", text_tool, {"text": reply.content or ""})
                result = await self._act(env, said)
                messages.append({"role": "user", "content": result.content})
                if result.done:
                    if result.answer is None:
                        raise _AgentFailed(f"tool {text_tool} ended the episode with no answer")
                    return result.answer
                continue
            for call in reply.tool_calls:
                result = await self._act(env, call)
                messages.append(
                    {
                        "role": "tool",
                        "tool_call_id": call.id,
                        "name": call.name,
                        "content": result.content,
                    }
                )
                if result.done:
                    if result.answer is None:
                        raise _AgentFailed(f"tool {call.name} ended the episode with no answer")
                    return result.answer
        raise _AgentFailed(f"turn limit of {self.agent.max_turns} reached without an answer")

    async def _user_turn(self, env: Any, reply: str | None) -> Observation | None:
        """The environment's next user turn after a reply without tool calls
        (`Environment.respond`, optional); None when it has none."""
        respond = getattr(env, "respond", None)
        if respond is None:
            return None
        self.transition(S.ACTING)  # the environment (a user) takes its turn
        obs: Observation | None = await self._bounded(respond(reply), "environment respond")
        if obs is not None:
            names = [t["function"]["name"] for t in env.tools]
            self.emit(
                Category.OBSERVATION, "env", "agent", "respond", {**obs.to_dict(), "tools": names}
            )
        return obs

    async def _bounded(self, awaitable: Awaitable[_T], what: str) -> _T:
        try:
            async with asyncio.timeout(self.limits.step_timeout):
                return await awaitable
        except TimeoutError as exc:
            raise InfraError(f"{what} took longer than {self.limits.step_timeout}s") from exc

    async def _generate(self, messages: list[dict[str, Any]], tools: list[Any]) -> Completion:
        params = self.agent.sampling
        if params.seed is not None:
            params = params.with_seed(params.seed + self.sample_index)
        if self.agent.request_extra is not None:
            params = replace(params, extra={**params.extra, **self.agent.request_extra(self.turns)})
        self.emit(
            Category.MODEL_REQUEST,
            "agent",
            "policy",
            f"turn {self.turns}",
            {
                "turn": self.turns,
                "n_messages": len(messages),
                "last": messages[-1],
                "seed": params.seed,
            },
        )
        async with self.model_limit:
            try:
                async with asyncio.timeout(self.limits.step_timeout):
                    choices = await self.agent.policy.complete(messages, tools, params, 1)
            except TimeoutError as exc:
                raise InfraError(
                    f"model call took longer than {self.limits.step_timeout}s"
                ) from exc
        reply = choices[0]
        self.policy_version = reply.policy_version or self.policy_version
        self.emit(Category.MODEL_REPLY, "policy", "agent", f"turn {self.turns}", reply.to_dict())
        return reply

    async def _act(self, env: Any, call: ToolCall) -> Observation:
        self.emit(Category.TOOL_CALL, "agent", "env", call.name or "?", call.to_dict())
        if call.error is not None:
            result = Observation.error(
                f'{call.error}. Call a tool as {{"name": "<tool>", "arguments": {{...}}}}'
            )
        else:
            try:
                async with asyncio.timeout(self.limits.step_timeout):
                    result = await env.step(call)
            except TimeoutError:
                result = Observation.error(
                    f"tool {call.name} did not finish within {self.limits.step_timeout}s"
                )
            except ENVIRONMENT_FAULTS:
                raise
            except Exception as exc:  # the tool's fault: the agent sees it
                result = Observation.error(f"tool {call.name} raised {type(exc).__name__}: {exc}")
        self.emit(
            Category.TOOL_RESULT,
            "env",
            "agent",
            call.name or "?",
            {"call_id": call.id, **result.to_dict()},
        )
        return result

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
