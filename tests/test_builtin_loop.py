"""The built-in loop as one agent: its hooks (a simulated user's ``respond``,
a text-action tool) and the policy affinity every model call carries."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from engine import Agent, Engine, Observation, ScriptedPolicy, Task
from engine.envs.arithmetic import ArithmeticEnvironment
from tests.support.scripted import calculator_then_answer
from tests.test_gateway import solve

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]


class AsksTheUser(ArithmeticEnvironment):
    """A simulated user: asks for the product after the first answer."""

    async def respond(self, reply: str | None) -> Observation | None:
        if reply == "5":
            return Observation("Now multiply it by 3.")
        return Observation("thanks", done=True, answer=reply)


async def test_the_built_in_loop_lets_the_environment_respond(make_engine: EngineFactory) -> None:
    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        last = messages[-1]
        if last["role"] == "user" and "multiply" in last["content"]:
            return {"tool_calls": [{"name": "calculator", "arguments": {"expression": "5*3"}}]}
        return calculator_then_answer().handler(messages, tools)

    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "What is 2+3?", "15")], Agent(ScriptedPolicy(handler)),
            environment=AsksTheUser, scorer="numeric",
        )  # fmt: skip
        (r,) = await run.rollouts()
        msgs = await run.messages(r.id)
    assert r.state == "done" and r.answer == "15" and r.turns == 4
    said = [m.payload["content"] for m in msgs if m.topic == "respond"]
    assert said == ["Now multiply it by 3.", "thanks"]


async def test_every_model_call_carries_its_rollout_as_policy_affinity(
    make_engine: EngineFactory,
) -> None:
    from engine.policy.base import affinity

    keys: list[str | None] = []

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        keys.append(affinity.get())  # what a multi-server policy keys its sticky choice on
        return calculator_then_answer().handler(messages, tools)

    task = [Task("t", "What is 1+1?", "2")]
    async with make_engine() as engine:
        app = await engine.run(task, solve, policy=ScriptedPolicy(handler),
                               environment="arithmetic")  # fmt: skip
        built_in = await engine.run(task, Agent(ScriptedPolicy(handler)), environment="arithmetic")
        ids = [(await run.rollouts())[0].id for run in (app, built_in)]
    assert keys == [ids[0], ids[0], ids[1], ids[1]]


async def test_the_built_in_loop_sends_plain_replies_to_a_text_tool(
    make_engine: EngineFactory,
) -> None:
    from engine.training.secret_env import SecretWordEnvironment, secret_share, secret_tasks

    offered: list[list[str]] = []

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        offered.append([t["function"]["name"] for t in tools])
        last = messages[-1]["content"]
        return "paris paris" if "The word is" in last else "hello"

    async with make_engine() as engine:
        run = await engine.run(
            secret_tasks(1), Agent(ScriptedPolicy(handler), text_tool="say"),
            environment=SecretWordEnvironment, scorer=secret_share,
        )  # fmt: skip
        (r,) = await run.rollouts()
        said = [m.payload for m in await run.messages(r.id) if m.category == "tool_call"]
    assert r.state == "done" and r.answer == "paris paris" and r.reward == 1.0
    assert offered == [[], []]  # the text tool is not the model's to call
    assert [json.loads(c["arguments"]) for c in said] == [{"text": "hello"},
                                                          {"text": "paris paris"}]  # fmt: skip
