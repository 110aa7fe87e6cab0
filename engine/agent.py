"""The agents the driver runs: the built-in loop (`Agent`) or an app's own (`AppAgent`).

Both are solved the same way, ``await agent.solve(task, ctx)`` with a
`engine.context.RolloutContext`: `Agent` is a policy, a prompt, a turn budget
and how to read its answer, run by the built-in loop (`engine.loop`);
`AppAgent` wraps an app's ``async def solve(task, ctx) -> str`` that runs its
own loop, in any framework, against the gateway at ``ctx.base_url``.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from engine.environment import ToolSpec
from engine.errors import ConfigError
from engine.loop import builtin_loop
from engine.policy.base import Policy, SamplingParams
from engine.tasks import TaskView

if TYPE_CHECKING:
    from engine.context import RolloutContext

_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FINAL = re.compile(r"FINAL ANSWER:", re.IGNORECASE)


def extract_answer(text: str | None) -> str | None:
    """The answer in a final reply: whichever comes last of ``<answer>…</answer>``
    and ``FINAL ANSWER: …`` (to the end of the reply), else the whole reply
    stripped; None when there is nothing."""
    if text is None:
        return None
    candidates: list[tuple[int, str]] = []
    tagged = list(_TAGGED.finditer(text))
    if tagged:
        candidates.append((tagged[-1].start(), tagged[-1].group(1)))
    finals = list(_FINAL.finditer(text))
    if finals:
        rest = text[finals[-1].end() :]
        candidates.append((finals[-1].start(), rest.split("</answer>", 1)[0]))
    chosen = max(candidates)[1] if candidates else text
    return chosen.strip() or None


def function_name(fn: Callable[..., Any] | None) -> str | None:
    """``module:qualname`` of a module-level function (importable again), else None."""
    if fn is None or not inspect.isfunction(fn):  # a bound method or a partial: not by name
        return None
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or not qualname or "<" in qualname:  # a lambda or a local function
        return None
    return f"{module}:{qualname}"


def function_by_name(name: str) -> Callable[..., Any]:
    """The function `function_name` named; ImportError/AttributeError when it is gone."""
    module_name, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise AttributeError(f"{name} is not callable")
    return cast(Callable[..., Any], obj)


@dataclass
class Agent:
    """What the engine needs to drive one rollout; plug in your own parts.

    ``policy`` is any object with the `Policy` ``complete`` method.
    ``request_extra(turn)`` may add per-turn request fields (for example a
    vLLM ``structured_outputs`` constraint). ``render_task`` turns the task
    view and the environment's first observation into the first user message.
    ``text_tool`` names a tool that takes a plain reply (one without tool calls)
    as ``{"text": reply}``, for text-action environments; without it a plain
    reply is the final answer.
    """

    policy: Policy
    system_prompt: str | None = None
    max_turns: int = 8
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_extra: Callable[[int], dict[str, Any]] | None = None
    answer_from: Callable[[str | None], str | None] = extract_answer
    render_task: Callable[[TaskView, str], str] | None = None
    name: str = "agent"
    text_tool: str | None = None

    def first_messages(self, task: TaskView, observation: str) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        user = self.render_task(task, observation) if self.render_task else observation
        msgs.append({"role": "user", "content": user})
        return msgs

    uses_gateway = False

    async def solve(self, task: TaskView, ctx: RolloutContext) -> str:
        """Run the built-in loop (`engine.loop.builtin_loop`) to an answer."""
        return await builtin_loop(self, task, ctx)

    def describe(self) -> dict[str, Any]:
        """A JSON description, stored with the run (and used by `resume` from the CLI)."""
        return {
            "name": self.name,
            "policy": describe_policy(self.policy),
            "system_prompt": self.system_prompt,
            "max_turns": self.max_turns,
            "sampling": self.sampling.to_dict(),
            # module-level functions by import name, so `resume` can rebuild them
            "answer_from": function_name(self.answer_from),
            "render_task": function_name(self.render_task),
            "text_tool": self.text_tool,
        }


def describe_policy(policy: Policy) -> dict[str, Any]:
    describe = getattr(policy, "describe", None)
    return describe() if callable(describe) else {"kind": type(policy).__name__}


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One model call of an app's agent, as `AppAgent.request_extra` sees it.

    ``turn`` counts that agent's model calls in the attempt, this one included.
    """

    agent: str
    turn: int
    messages: list[dict[str, Any]]
    tools: list[ToolSpec]


Solve = Callable[[TaskView, "RolloutContext"], Awaitable[str | None]]


@dataclass
class AppAgent:
    """An app's own agent loop, run unchanged as Drillyard rollouts.

    ``solve(task, ctx)`` is the app's ``async`` function: it points its
    framework's OpenAI client at ``ctx.base_url`` with ``ctx.api_key`` (the
    gateway, unique to the rollout attempt), calls the environment's tools
    through ``ctx.call_tool``, and returns the answer the scorer sees. Every
    model call goes to ``policy`` through the gateway, recorded and limited.
    ``name`` is the agent's name in the trace (a multi-agent app names each
    agent by its base URL, `RolloutContext.url_for`). ``request_extra(call)``
    adds fields to every model request (they win over the app's: for example
    a vLLM ``structured_outputs`` constraint). With ``token_ids`` the gateway
    asks the server for token ids and logprobs on the app's behalf (vLLM's
    ``return_token_ids``, ``logprobs``) and hands the app only what it asked for.
    """

    solve: Solve
    policy: Policy
    name: str = "agent"
    request_extra: Callable[[ModelCall], dict[str, Any]] | None = None
    token_ids: bool = True

    uses_gateway = True

    def __post_init__(self) -> None:
        fn = self.solve
        is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
            getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
        )
        if not callable(fn) or not is_async:
            raise ConfigError(
                "agent",
                f"{fn!r} is not an async function",
                "pass `async def solve(task: TaskView, ctx: RolloutContext) -> str`, or an Agent",
            )
        if not callable(getattr(self.policy, "complete", None)):
            raise ConfigError(
                "policy",
                f"{self.policy!r} has no complete() method",
                "pass a Policy: OpenAIPolicy(base_url, model), ScriptedPolicy(handler), ...",
            )
        if not self.name:
            raise ConfigError("agent name", "is empty", 'name the agent, e.g. "agent"')

    def describe(self) -> dict[str, Any]:
        """A JSON description, stored with the run; `resume` from the CLI rebuilds
        it when ``solve`` (and ``request_extra``) are module-level functions."""
        return {
            "kind": "function",
            "name": self.name,
            "solve": function_name(self.solve),
            "policy": describe_policy(self.policy),
            "request_extra": function_name(self.request_extra),
            "token_ids": self.token_ids,
        }


AnyAgent = Agent | AppAgent
"""What the driver runs: the built-in loop or an app's own."""


def as_agent(agent: Any, policy: Policy | None = None) -> AnyAgent:
    """The agent ``engine.run`` was given, checked: an `Agent`, an `AppAgent`, or
    an async ``solve(task, ctx)`` function with ``policy``."""
    if isinstance(agent, Agent | AppAgent):
        if policy is not None:
            raise ConfigError(
                "policy",
                f"given both policy= and an {type(agent).__name__} that has its own",
                "drop policy= (the agent's policy is used)",
            )
        return agent
    if callable(agent):
        if policy is None:
            raise ConfigError(
                "policy",
                "a function agent needs the policy its model calls go to",
                "engine.run(tasks, solve, policy=OpenAIPolicy(base_url, model), ...)",
            )
        return AppAgent(agent, policy)
    raise ConfigError(
        "agent",
        f"{agent!r} is not an agent",
        "pass Agent(policy, ...), AppAgent(solve, policy) or an async solve(task, ctx) function",
    )
