"""`RolloutContext`: what an agent gets for one rollout attempt, and the one path
every model call and tool call of that attempt takes.

An app's agent reads ``task``, ``tools``, ``observation``, ``workspace``,
points its OpenAI client at ``base_url`` with ``api_key`` (the gateway;
`url_for` names one agent of several) and calls tools with `call_tool`. The
built-in loop and the gateway call `complete` and `act`. Whoever calls, a model
call is recorded (request, reply with token ids), held to the engine's limit on
model requests in flight and to the per-call deadline; a tool call is recorded
and held to the deadline. A fault of the infrastructure (a model server that
stays down, a lost environment) is kept as the attempt's cause and stops the
agent at once, so the driver classifies the attempt from the fault itself,
not from whatever exception the app's framework turned it into.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from engine import prompt_ids
from engine.deadlines import within
from engine.environment import Environment, Observation, ToolCall, ToolSpec
from engine.errors import InfraError
from engine.messages import Category
from engine.policy.base import Completion, Policy, SamplingParams, policy_affinity
from engine.policy.tokens import without_token_ids
from engine.policy.toolcalls import make_call
from engine.recording import RolloutState
from engine.tasks import TaskView
from engine.trajectory import continuation

if TYPE_CHECKING:
    from engine.rollout import Rollout

S = RolloutState
_OPEN_CALLS_KEPT = 256


class AttemptOver(RuntimeError):
    """A call on a context whose attempt has ended (or whose agent was stopped)."""


@dataclass(slots=True)
class _Speaker:
    """What the context remembers of one agent's last model call."""

    turn: int = 0
    messages: list[dict[str, Any]] = field(default_factory=list)
    tools: list[ToolSpec] | None = None
    sequences: list[list[int]] = field(default_factory=list)  # prompt + completion ids


class RolloutContext:
    """One rollout attempt as its agent sees it (see the module docstring)."""

    def __init__(
        self,
        rollout: Rollout,
        env: Environment,
        task: TaskView,
        observation: Observation,
        policy: Policy,
        agent: str,
    ) -> None:
        self._rollout = rollout
        self._env = env
        self._policy = policy
        self.task = task
        self.observation = observation.content
        self.tools: list[ToolSpec] = list(env.tools)
        self.workspace = _workspace_of(env)
        self.agent = agent
        self.rollout_id = rollout.id
        self.attempt = rollout.attempt
        self.sample_index = rollout.sample_index
        self.base_url: str | None = None
        self.api_key: str | None = None
        self._gateway_url: str | None = None
        self.fault: BaseException | None = None
        self.episode_answer: str | None = None
        self.scope: anyio.CancelScope | None = None
        self._closed = False
        self._speakers: dict[str, _Speaker] = {}
        self._open_calls: dict[str, tuple[str, ToolCall]] = {}
        self._ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()  # made inside its attempt's task

    def __repr__(self) -> str:
        return f"RolloutContext({self.rollout_id!r}, attempt={self.attempt}, agent={self.agent!r})"

    # ---- for the app -----------------------------------------------------

    def url_for(self, agent: str) -> str:
        """The gateway base URL (``…/v1``) whose calls are recorded as ``agent``'s."""
        if self._gateway_url is None:
            raise RuntimeError("no gateway for this agent: only an AppAgent's rollouts get one")
        from urllib.parse import quote

        return f"{self._gateway_url}/agents/{quote(agent, safe='')}/v1"

    @property
    def turns(self) -> int:
        """Model calls made in this attempt so far (all agents)."""
        return self._rollout.turns

    async def call_tool(
        self, name: str, arguments: dict[str, Any] | str | None = None, *, agent: str | None = None
    ) -> str:
        """Run one of the environment's tools; return what it said (errors included, as text).

        The call is recorded like the built-in loop's; when the model asked for
        this very call (same name and arguments) through the gateway, the
        record carries the model's call id and agent. A tool that ends the
        episode (``done``) leaves its answer as ``episode_answer``, the answer
        used when ``solve`` returns None.
        """
        call = make_call(f"app_{next(self._ids)}", name, arguments)
        linked = self._link(call) if agent is None else None
        if linked is not None:
            agent, call.id = linked
        obs = await self.act(call, agent=agent)
        if obs.done and obs.answer is not None:
            self.episode_answer = obs.answer
        return obs.content

    # ---- for the built-in loop and the gateway ---------------------------

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None = None,
        params: SamplingParams | None = None,
        n: int = 1,
        *,
        agent: str | None = None,
        extra: Callable[[int], dict[str, Any]] | None = None,
        request: dict[str, Any] | None = None,
    ) -> list[Completion]:
        """One model call of ``agent``, recorded and limited; ``extra(turn)`` adds request
        fields, ``request`` adds fields to the recorded request (e.g. ``stream``)."""
        self._check_open()
        agent = agent or self.agent
        speaker = self._speakers.get(agent)
        if speaker is None:
            speaker = self._speakers[agent] = _Speaker()
        speaker.turn += 1
        turn = speaker.turn
        self._rollout.turns += 1
        params = params or SamplingParams()
        if extra is not None:
            try:
                params = replace(params, extra={**params.extra, **extra(turn)})
            except Exception as exc:  # the engine's configuration, not the agent's fault
                self.fail(exc)
                raise
        if self._rollout.state is not S.GENERATING:
            self._rollout.transition(S.GENERATING)
        payload = {"turn": turn, "agent": agent, "n": n, "seed": params.seed, **(request or {})}
        payload.update(_delta(speaker, messages, tools))
        self._rollout.emit(Category.MODEL_REQUEST, agent, "policy", f"turn {turn}", payload)
        limits = self._rollout.limits
        try:
            async with self._rollout.model_limit:
                with policy_affinity(self._rollout.id):
                    try:
                        with within(limits.step_timeout, self._loop):
                            choices = await self._policy.complete(messages, tools, params, n)
                    except TimeoutError as exc:
                        raise InfraError(
                            f"model call took longer than {limits.step_timeout}s"
                        ) from exc
            if not choices:
                raise InfraError("the policy returned no choices")
        except Exception as exc:
            self.fail(exc)
            raise
        self._check_open()
        first = choices[0]
        self._rollout.policy_version = first.policy_version or self._rollout.policy_version
        reply: dict[str, Any] = {**first.to_dict(), "agent": agent, "turn": turn}
        if len(choices) > 1:
            # the same prompt: its token ids are recorded once, on the first choice
            reply["others"] = [{**c.to_dict(), "prompt_token_ids": None} for c in choices[1:]]
        reply.update(_check_extension(speaker, choices))
        self._rollout.emit(Category.MODEL_REPLY, "policy", agent, f"turn {turn}", reply)
        for c in choices:
            for call in c.tool_calls:
                self._open_calls[call.id] = (agent, call)
        while len(self._open_calls) > _OPEN_CALLS_KEPT:
            del self._open_calls[next(iter(self._open_calls))]
        return choices

    async def act(self, call: ToolCall, *, agent: str | None = None) -> Observation:
        """Run one tool call in the environment, recorded; a tool's own failure (or its
        deadline) is an error observation, a lost environment a fault."""
        self._check_open()
        agent = agent or self.agent
        self._open_calls.pop(call.id, None)
        if self._rollout.state is not S.ACTING:
            self._rollout.transition(S.ACTING)
        self._rollout.emit(Category.TOOL_CALL, agent, "env", call.name or "?", call.to_dict())
        timeout = self._rollout.limits.step_timeout
        if call.error is not None:
            result = Observation.error(
                f'{call.error}. Call a tool as {{"name": "<tool>", "arguments": {{...}}}}'
            )
        else:
            from engine.rollout import ENVIRONMENT_FAULTS

            try:
                with within(timeout, self._loop):
                    result = await self._env.step(call)
            except TimeoutError:
                result = Observation.error(f"tool {call.name} did not finish within {timeout}s")
            except ENVIRONMENT_FAULTS as exc:
                self.fail(exc)
                raise
            except Exception as exc:  # the tool's fault: the agent sees it
                result = Observation.error(f"tool {call.name} raised {type(exc).__name__}: {exc}")
        self._check_open()
        self._rollout.emit(
            Category.TOOL_RESULT,
            "env",
            agent,
            call.name or "?",
            {"call_id": call.id, **result.to_dict()},
        )
        return result

    async def respond(self, reply: str | None) -> Observation | None:
        """The environment's answer to a reply without tool calls, where it has
        ``respond`` (a simulated user): None ends the episode with the reply."""
        respond = getattr(self._env, "respond", None)
        if respond is None:
            return None
        self._check_open()
        if self._rollout.state is not S.ACTING:
            self._rollout.transition(S.ACTING)
        try:
            obs: Observation | None = await self._rollout.bounded(
                respond(reply), "environment respond"
            )
        except Exception as exc:  # the environment's fault, never the agent's
            self.fail(exc)
            raise
        self._check_open()
        if obs is not None:  # a user turn may offer new tools
            self.tools = list(self._env.tools)
            names = [t["function"]["name"] for t in self.tools]
            self._rollout.emit(Category.OBSERVATION, "env", self.agent, "respond",
                               {**obs.to_dict(), "tools": names})  # fmt: skip
        return obs

    # ---- the driver's side -----------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """Keep ``exc`` as the attempt's cause (the first one wins) and stop the agent."""
        if self.fault is None:
            self.fault = exc
        if self.scope is not None:
            self.scope.cancel()

    def connect(self, gateway_url: str, api_key: str) -> None:
        """Point the app at its gateway path (``…/rollouts/{id}``) with its key."""
        self._gateway_url = gateway_url
        self.base_url = f"{gateway_url}/v1"
        self.api_key = api_key

    def close(self) -> None:
        """The attempt is over: every later call raises `AttemptOver`."""
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise AttemptOver(f"rollout {self.rollout_id} attempt {self.attempt} is over")
        if self.fault is not None:
            raise AttemptOver(
                f"rollout {self.rollout_id} attempt {self.attempt} failed ({self.fault!r});"
                " it will be run again from the start"
            )

    def _link(self, call: ToolCall) -> tuple[str, str] | None:
        """The (agent, call id) of the model's open call this app call runs, if any."""
        for call_id, (agent, asked) in self._open_calls.items():
            if asked.name == call.name and asked.parsed is not None and asked.parsed == call.parsed:
                del self._open_calls[call_id]
                return agent, call_id
        return None


def _delta(
    speaker: _Speaker, messages: list[dict[str, Any]], tools: list[ToolSpec] | None
) -> dict[str, Any]:
    """The request as recorded: the messages after those it shares with the agent's
    previous request (``keep`` of them), and the tools when they changed. The
    token ids an assistant message carries for the next prompt are not recorded
    again (its model reply holds them)."""
    previous = speaker.messages  # as the agent sent them, token ids included
    keep = 0
    for a, b in zip(previous, messages, strict=False):
        # the same dict (most of them): no copy and no deep compare
        if a is not b and without_token_ids([a]) != without_token_ids([b]):
            break
        keep += 1
    out: dict[str, Any] = {
        "n_messages": len(messages),
        "keep": keep,
        "messages": without_token_ids(messages[keep:]),
    }
    if keep < len(previous):
        out["rewritten"] = True  # earlier messages changed or were dropped
    tools = tools or []
    if tools != speaker.tools:
        out["tools"] = tools
    speaker.messages, speaker.tools = list(messages), tools
    return out


def _check_extension(speaker: _Speaker, choices: list[Completion]) -> dict[str, Any]:
    """Whether this call's prompt tokens extend the agent's previous call (see
    `engine.trajectory.continuation`), and then only the ids after it as the
    recorded prompt (`engine.prompt_ids`); remembers this call's sequences."""
    out: dict[str, Any] = {}
    prompt = choices[0].prompt_token_ids
    if prompt is not None and speaker.sequences:
        cont = continuation(speaker.sequences, prompt)
        out["continues"] = cont.to_dict()
        if cont.extends and cont.choice is not None:
            out.update(prompt_ids.tail(speaker.sequences[cont.choice], prompt))
    speaker.sequences = prompt_ids.sequences(prompt, [c.token_ids for c in choices])
    return out


def _workspace_of(env: Environment) -> Path | None:
    """The environment's workspace folder, where it has one in this process."""
    ws = getattr(env, "workspace", None)
    path = getattr(ws, "path", ws)
    return Path(path) if isinstance(path, str | Path) else None
