"""Real agent frameworks, unchanged but for their base URL, as Drillyard rollouts
through the gateway against a real vLLM server (the tiny local model).

A random model never calls a tool by itself, so the engine adds a vLLM
``structured_outputs`` regex to each of the app's calls (`AppAgent.request_extra`,
by agent and turn), and drops the tools' ``strict`` flag there: vLLM answers a
strict tool with its own grammar, which would replace the regex.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from engine import (
    AppAgent,
    Engine,
    ModelCall,
    OpenAIPolicy,
    RolloutRecord,
    Run,
    Task,
    TaskView,
    compute_pass_at_k,
)
from engine.trajectory import TokenTrajectory
from tests.support.frameworks import require

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

TASKS = [Task("add", "What is 2 + 3?", "5"), Task("mul", "What is 4 * 5?", "20")]


def tool_call(name: str, arguments: str) -> str:
    return f'<tool_call>\\n\\{{"name": "{name}", "arguments": {arguments}\\}}\\n</tool_call>'


CALCULATOR = tool_call("calculator", '\\{"expression": "(2 \\+ 3|4 \\* 5)"\\}')
HANDOFF = tool_call("transfer_to_math", "\\{\\}")
FINAL = tool_call("final_answer", '\\{"answer": "(5|20)"\\}')
NUMBER = "(5|20)"


def constrained(regex: str, call: ModelCall) -> dict[str, Any]:
    tools = [
        {**t, "function": {k: v for k, v in t["function"].items() if k != "strict"}}
        for t in call.tools
    ]
    return {
        "structured_outputs": {"regex": regex},
        "skip_special_tokens": False,  # the hermes parser needs <tool_call> in the text
        "tool_choice": "auto",
        "tools": tools,
        "max_tokens": 96,
    }


def handoff_then_calculator(call: ModelCall) -> dict[str, Any]:
    if call.agent == "triage":
        return constrained(HANDOFF, call)
    return constrained(CALCULATOR if call.turn == 1 else NUMBER, call)


def calculator_then_final_answer(call: ModelCall) -> dict[str, Any]:
    return constrained(CALCULATOR if call.turn == 1 else FINAL, call)


async def openai_agents_solve(task: TaskView, ctx: Any) -> str | None:
    """A triage agent that hands arithmetic to a math agent with a calculator tool."""
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool
    from openai import AsyncOpenAI

    @function_tool
    async def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        return await ctx.call_tool("calculator", {"expression": expression})

    async with (
        AsyncOpenAI(base_url=ctx.url_for("triage"), api_key=ctx.api_key) as triage_client,
        AsyncOpenAI(base_url=ctx.url_for("math"), api_key=ctx.api_key) as math_client,
    ):
        math = Agent(name="math", instructions="Use the calculator, then answer with the number.",
                     tools=[calculator], model=OpenAIChatCompletionsModel("tiny", math_client))
        triage = Agent(name="triage", instructions="Hand arithmetic questions to math.",
                       handoffs=[math], model=OpenAIChatCompletionsModel("tiny", triage_client))
        result = await Runner.run(triage, task.prompt, max_turns=6)
    return str(result.final_output)


async def smolagents_solve(task: TaskView, ctx: Any) -> str | None:
    """A smolagents tool-calling agent (synchronous: it runs in a worker thread)."""
    from smolagents import OpenAIServerModel, Tool, ToolCallingAgent

    class Calculator(Tool):  # type: ignore[misc]
        name = "calculator"
        description = "Evaluate an arithmetic expression."
        inputs = {"expression": {"type": "string", "description": "the expression"}}
        output_type = "string"

        def forward(self, expression: str) -> str:
            result: str = anyio.from_thread.run(ctx.call_tool, "calculator",
                                                {"expression": expression})  # fmt: skip
            return result

    model = OpenAIServerModel(model_id="tiny", api_base=ctx.base_url, api_key=ctx.api_key)
    agent = ToolCallingAgent(tools=[Calculator()], model=model, max_steps=3, verbosity_level=0)
    try:
        return str(await anyio.to_thread.run_sync(agent.run, task.prompt))
    finally:
        model.client.close()


def check_trajectory(t: TokenTrajectory, replies: list[dict[str, Any]]) -> None:
    """A trajectory is trainable exactly when every call continued the one before,
    and then it is the last prompt + completion with the completions masked in."""
    continued = all(r.get("continues", {"extends": True})["extends"] for r in replies)
    assert t.trainable == continued, (t.reason, [r.get("continues") for r in replies])
    if t.trainable:
        last = replies[-1]
        assert t.token_ids == last["prompt_token_ids"] + last["token_ids"]
        assert sum(t.loss_mask) == sum(len(r["token_ids"]) for r in replies)
        assert t.logprobs is not None and len(t.logprobs) == len(t.token_ids)
    else:
        assert t.problem == "not_continued" and t.token_ids == []


@asynccontextmanager
async def run_app(
    vllm_server: Any,
    make_engine: Callable[..., Engine],
    solve: Callable[[TaskView, Any], Any],
    request_extra: Callable[[ModelCall], dict[str, Any]],
) -> AsyncIterator[tuple[Run, list[RolloutRecord]]]:
    """Run the app against the vLLM server on the tasks; every rollout must end
    ``done``; after the caller's checks, pass@k from the store must match the rewards."""
    async with OpenAIPolicy(vllm_server.base_url, vllm_server.model, timeout=60) as policy:
        app = AppAgent(solve, policy, request_extra=request_extra)
        async with make_engine(max_rollouts=4) as engine:
            run = await engine.run(TASKS, app, environment="arithmetic", samples=2,
                                   scorer="numeric")  # fmt: skip
            rollouts = await run.rollouts()
            assert {r.state for r in rollouts} == {"done"}, [r.error for r in rollouts]
            yield run, rollouts
            groups = await engine.store.rewards_by_group(run.id)
            expected = compute_pass_at_k(
                {task: [rw == 1.0 for _, rw in samples] for task, samples in groups.items()},
                [1, 2],
            )
            assert (await run.pass_at_k([1, 2])).overall == expected.overall


async def test_openai_agents_with_a_handoff(
    vllm_server: Any, make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    require("agents")
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")  # no trace export off the machine
    async with run_app(
        vllm_server, make_engine, openai_agents_solve, handoff_then_calculator
    ) as (run, rollouts):
        for r in rollouts:
            msgs = await run.messages(r.id)
            talk = [(m.sender, m.receiver, str(m.category)) for m in msgs
                    if m.category in ("model_request", "model_reply", "tool_call")]  # fmt: skip
            assert talk == [
                ("triage", "policy", "model_request"),
                ("policy", "triage", "model_reply"),  # the handoff
                ("math", "policy", "model_request"),
                ("policy", "math", "model_reply"),
                ("math", "env", "tool_call"),
                ("math", "policy", "model_request"),
                ("policy", "math", "model_reply"),
            ]
            replies = [m.payload for m in msgs if m.category == "model_reply"]
            assert replies[0]["tool_calls"][0]["name"] == "transfer_to_math"
            assert replies[1]["tool_calls"][0]["name"] == "calculator"
            call = next(m.payload for m in msgs if m.category == "tool_call")
            assert call["id"] == replies[1]["tool_calls"][0]["id"]
            result = next(m.payload for m in msgs if m.category == "tool_result")
            assert result["content"] in ("5", "20") and not result["is_error"]
            assert r.answer == replies[2]["content"] and r.answer in ("5", "20")
            truth = next(t.ground_truth for t in TASKS if t.id == r.task_id)
            assert r.reward == (1.0 if r.answer == truth else 0.0)
            for reply in replies:  # asked for on the app's behalf
                assert reply["token_ids"] and reply["prompt_token_ids"]
                assert len(reply["logprobs"]) == len(reply["token_ids"])
            trajectories = {t.agent: t for t in await run.token_trajectories(r.id)}
            assert set(trajectories) == {"triage", "math"}
            assert trajectories["triage"].trainable  # one call: its own trajectory
            check_trajectory(trajectories["math"], replies[1:])


async def test_smolagents_tool_calling_agent(
    vllm_server: Any, make_engine: Callable[..., Engine]
) -> None:
    require("smolagents")
    async with run_app(
        vllm_server, make_engine, smolagents_solve, calculator_then_final_answer
    ) as (run, rollouts):
        for r in rollouts:
            msgs = await run.messages(r.id)
            replies = [m.payload for m in msgs if m.category == "model_reply"]
            assert [c["name"] for rep in replies for c in rep["tool_calls"]] == [
                "calculator", "final_answer",
            ]  # fmt: skip
            call = next(m.payload for m in msgs if m.category == "tool_call")
            assert call["id"] == replies[0]["tool_calls"][0]["id"]
            result = next(m.payload for m in msgs if m.category == "tool_result")
            assert result["content"] in ("5", "20")
            assert r.answer in ("5", "20") and f'"{r.answer}"' in replies[1]["tool_calls"][0][
                "arguments"
            ]
            (t,) = await run.token_trajectories(r.id)
            check_trajectory(t, replies)


async def test_the_app_gets_only_what_it_asked_for(
    vllm_server: Any, make_engine: Callable[..., Engine]
) -> None:
    openai = require("openai")
    seen: dict[str, Any] = {}

    async def asks(task: TaskView, ctx: Any) -> str | None:
        async with openai.AsyncOpenAI(base_url=ctx.base_url, api_key=ctx.api_key) as client:
            messages = [{"role": "user", "content": task.prompt}]
            plain = await client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=4
            )
            seen["plain"] = plain.model_dump()
            with_lp = await client.chat.completions.create(
                model="tiny", messages=messages, max_tokens=4, logprobs=True, top_logprobs=2
            )
            seen["logprobs"] = with_lp.choices[0].logprobs
            models = await client.models.list()
            seen["models"] = [m.id for m in models.data]
        return "5"

    async with OpenAIPolicy(vllm_server.base_url, vllm_server.model, timeout=60) as policy:
        async with make_engine() as engine:
            run = await engine.run(TASKS[:1], asks, policy=policy, environment="arithmetic",
                                   scorer="numeric")  # fmt: skip
            (r,) = await run.rollouts()
            replies = [m.payload for m in await run.messages(r.id) if m.category == "model_reply"]
    assert r.state == "done"
    plain = seen["plain"]
    assert "prompt_token_ids" not in plain and plain["choices"][0]["logprobs"] is None
    assert "token_ids" not in plain["choices"][0]
    tokens = seen["logprobs"].content
    assert len(tokens) == len(replies[1]["token_ids"]) and all(len(t.top_logprobs) == 2
                                                                for t in tokens)  # fmt: skip
    assert [t.logprob for t in tokens] == replies[1]["logprobs"]
    assert all(rep["token_ids"] and rep["logprobs"] for rep in replies)  # recorded all the same
    assert seen["models"] == ["tiny"]
