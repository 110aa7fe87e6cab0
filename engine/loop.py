"""The built-in agent loop: one agent among others, written against the same
`RolloutContext` an app's own loop gets.

Model, tools, model, … until a reply without tool calls (whose answer is
read with ``agent.answer_from``), a tool that ends the episode, or the turn
budget. A reply without tool calls goes, when the agent names a
``text_tool``, to that tool as ``{"text": reply}`` (a text-action
environment; its observation is the next user message). Otherwise an
environment with ``respond`` (a simulated user) answers it: None ends the
episode with that reply; an observation not ``done`` is the next user
message; one ``done`` ends it with its answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from engine.errors import AgentFailed
from engine.policy.toolcalls import make_call
from engine.tasks import TaskView

if TYPE_CHECKING:
    from engine.agent import Agent
    from engine.context import RolloutContext


async def builtin_loop(agent: Agent, task: TaskView, ctx: RolloutContext) -> str:
    """Converse until an answer; `AgentFailed` when there is none."""
    messages = agent.first_messages(task, ctx.observation)
    params = agent.sampling
    if params.seed is not None:
        params = params.with_seed(params.seed + ctx.sample_index)
    # a text tool takes the agent's plain replies: it is not the model's to call
    tools = [t for t in ctx.tools if t["function"]["name"] != agent.text_tool]
    while ctx.turns < agent.max_turns:
        (reply,) = await ctx.complete(messages, tools, params, 1, extra=agent.request_extra)
        messages.append(reply.assistant_message())
        if not reply.tool_calls and agent.text_tool is not None:
            said = make_call(f"text_{ctx.turns}", agent.text_tool, {"text": reply.content or ""})
            obs = await ctx.act(said)
            messages.append({"role": "user", "content": obs.content})
            if obs.done:
                if obs.answer is None:
                    raise AgentFailed(f"tool {agent.text_tool} ended the episode with no answer")
                return obs.answer
            continue
        if not reply.tool_calls:
            respond = await ctx.respond(reply.content)
            if respond is None:
                answer = agent.answer_from(reply.content)
                if answer is None:
                    raise AgentFailed("the final reply holds no answer")
                return answer
            if respond.done:
                if respond.answer is None:
                    raise AgentFailed("the environment ended the episode with no answer")
                return respond.answer
            messages.append({"role": "user", "content": respond.content})
            tools = [t for t in ctx.tools if t["function"]["name"] != agent.text_tool]
            continue
        for call in reply.tool_calls:
            result = await ctx.act(call)
            messages.append(_tool_message(call.id, call.name, result.content))
            if result.done:
                if result.answer is None:
                    raise AgentFailed(f"tool {call.name} ended the episode with no answer")
                return result.answer
    raise AgentFailed(f"turn limit of {agent.max_turns} reached without an answer")


def _tool_message(call_id: str, name: str, content: str) -> dict[str, Any]:
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}
