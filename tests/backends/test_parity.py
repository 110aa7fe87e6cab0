"""The same engine-level scenarios on every backend: only the backend name changes.

Each test takes ``make_backend``, parametrised over inprocess, subprocess,
kubernetes (the fake cluster) and ray (a real Ray cluster of a head and two
worker nodes), and must see the same states, rewards, observations and
attempt records on all four.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from engine import Agent, Engine, EnvSpec, PolicyError, ScriptedPolicy, Task
from engine.envs.arithmetic import arithmetic_tasks
from tests.backends.conftest import BackendFactory, eventually
from tests.support.scripted import calculator_then_answer

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]


async def states_of(engine: Engine, rollout_id: str) -> list[str]:
    return [m.payload["to"] for m in await engine.store.messages(rollout_id, category="state")]


def scripted(replies: list[Any], seen: list[str]) -> ScriptedPolicy:
    queue = iter(replies)

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "tool":
            seen.append(messages[-1]["content"])
        return next(queue)

    return ScriptedPolicy(handler)


async def test_happy_path(make_backend: BackendFactory, make_engine: EngineFactory) -> None:
    tasks = arithmetic_tasks(3)
    backend = make_backend()
    async with make_engine(backend=backend) as engine:
        run = await engine.run(tasks, Agent(calculator_then_answer()), environment="probe",
                               samples=2, scorer="arithmetic")
        rollouts = await run.rollouts()
        assert {r.state for r in rollouts} == {"done"} and len(rollouts) == 6
        assert all(r.reward == 1.0 and r.attempt == 1 for r in rollouts)
        prefix = {"inprocess": "inprocess", "subprocess": "subprocess-", "kubernetes": "pod/",
                  "ray": "ray-"}
        assert all((r.worker or "").startswith(prefix[backend.name]) for r in rollouts)
        assert await states_of(engine, rollouts[0].id) == [
            "starting", "generating", "acting", "generating", "scoring", "done"]
        msgs = await run.messages(rollouts[0].id)
        assert [m.seq for m in msgs] == list(range(len(msgs)))
        result = next(m for m in msgs if m.category == "tool_result")
        assert result.payload["content"] == tasks[0].ground_truth
        assert (await run.pass_at_k([1, 2])).overall == {1: 1.0, 2: 1.0}


async def test_tool_errors_are_observations(make_backend: BackendFactory,
                                            make_engine: EngineFactory) -> None:
    seen: list[str] = []
    policy = scripted([
        '<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"</tool_call>',
        {"tool_calls": [{"name": "boom", "arguments": {}}]},
        {"tool_calls": [{"name": "nope", "arguments": {}}]},
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "1/0"}}]},
        {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+3"}}]},
        "5",
    ], seen)
    async with make_engine(backend=make_backend()) as engine:
        run = await engine.run([Task("t", "What is 2+3?", "5")], Agent(policy, max_turns=8),
                               environment="probe", scorer="numeric")
        (r,) = await run.rollouts()
    assert r.state == "done" and r.reward == 1.0 and r.attempt == 1
    assert seen[0].startswith("Error:") and "not valid JSON" in seen[0]
    assert seen[1] == "Error: tool boom raised ValueError: boom on request"
    assert "unknown tool 'nope'" in seen[2]
    assert seen[3].startswith("Error: cannot evaluate '1/0'")
    assert seen[4] == "5"


async def test_a_hanging_tool_is_cut_at_the_step_deadline(
        make_backend: BackendFactory, make_engine: EngineFactory) -> None:
    seen: list[str] = []
    policy = scripted([{"tool_calls": [{"name": "hang", "arguments": {}}]},
                       {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}]},
                       "4"], seen)
    async with make_engine(backend=make_backend(), step_timeout=0.5) as engine:
        run = await engine.run([Task("t", "What is 2+2?", "4")], Agent(policy),
                               environment="probe", scorer="numeric")
        (r,) = await run.rollouts()
    assert r.state == "done" and r.reward == 1.0
    assert seen == ["Error: tool hang did not finish within 0.5s", "4"]


async def test_infra_faults_are_retried_and_recorded(make_backend: BackendFactory,
                                                    make_engine: EngineFactory) -> None:
    failures = {"left": 2}

    def flaky(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "user" and failures["left"] > 0:
            failures["left"] -= 1
            raise PolicyError("model server at http://x failed: HTTP 503")
        return calculator_then_answer().handler(messages, tools)

    async with make_engine(backend=make_backend(), max_attempts=3, max_rollouts=1) as engine:
        run = await engine.run(arithmetic_tasks(1), Agent(ScriptedPolicy(flaky)),
                               environment="probe", scorer="arithmetic")
        (r,) = await run.rollouts()
        attempts = await engine.store.attempts(r.id)
    assert r.state == "done" and r.attempt == 3
    assert [a.state for a in attempts] == ["error", "error", "done"]
    assert all("HTTP 503" in (a.error or "") for a in attempts[:2])


async def test_an_environment_that_says_it_is_lost_is_retried(
        make_backend: BackendFactory, make_engine: EngineFactory) -> None:
    lost = {"left": 1}

    def policy(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "user" and lost["left"] > 0:
            lost["left"] -= 1
            return {"tool_calls": [{"name": "lost", "arguments": {}}]}
        return calculator_then_answer().handler(messages, tools)

    async with make_engine(backend=make_backend(), max_attempts=3) as engine:
        run = await engine.run(arithmetic_tasks(1), Agent(ScriptedPolicy(policy)),
                               environment="probe", scorer="arithmetic")
        (r,) = await run.rollouts()
        attempts = await engine.store.attempts(r.id)
        msgs = await run.messages(r.id)
    assert r.state == "done" and r.reward == 1.0 and r.attempt == 2
    assert [a.state for a in attempts] == ["error", "done"]
    assert "browser died" in (attempts[0].error or "")
    # the agent never saw the loss as an observation: the attempt ended instead
    results = [m.payload.get("content", "") for m in msgs if m.category == "tool_result"]
    assert not any("browser died" in c for c in results)


async def test_a_tools_os_error_is_the_agents_observation(
        make_backend: BackendFactory, make_engine: EngineFactory) -> None:
    seen: list[str] = []
    policy = scripted([{"tool_calls": [{"name": "missing", "arguments": {}}]}, "5"], seen)
    async with make_engine(backend=make_backend()) as engine:
        run = await engine.run([Task("t", "What is 2+3?", "5")], Agent(policy),
                               environment="probe", scorer="numeric")
        (r,) = await run.rollouts()
    assert r.state == "done" and r.attempt == 1  # not retried: the agent's call failed
    assert seen == ["Error: tool missing raised FileNotFoundError: no such file: data.csv"]


async def test_environments_never_see_the_ground_truth(make_backend: BackendFactory,
                                                       make_engine: EngineFactory) -> None:
    secret = "the-secret-answer-8812"
    seen: list[str] = []
    policy = scripted([{"tool_calls": [{"name": "whoami", "arguments": {}}]}, secret], seen)
    async with make_engine(backend=make_backend()) as engine:
        run = await engine.run([Task("t", "guess", secret, metadata={"level": 1})], Agent(policy),
                               environment="probe", scorer="exact")
        (r,) = await run.rollouts()
    assert r.reward == 1.0
    hosted = json.loads(seen[0])
    assert hosted["view"] == {"id": "t", "prompt": "guess", "attachments": [],
                              "metadata": {"level": 1}}
    assert secret not in seen[0]


async def test_slots_are_a_limit(make_backend: BackendFactory,
                                 make_engine: EngineFactory) -> None:
    live = {"now": 0, "peak": 0}

    async def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "user":
            live["now"] += 1
            live["peak"] = max(live["peak"], live["now"])
        reply = calculator_then_answer().handler(messages, tools)
        if messages[-1]["role"] == "tool":
            live["now"] -= 1
        await anyio.sleep(0.02)
        return reply

    backend = make_backend(slots=2)
    async with make_engine(backend=backend, max_rollouts=8) as engine:
        run = await engine.run(arithmetic_tasks(4), Agent(ScriptedPolicy(handler)),
                               environment=EnvSpec("probe", {"tool_delay": 0.02}), samples=2,
                               scorer="arithmetic")
        assert await run.counts() == {"done": 8}
    assert backend.slots == 2 and live["peak"] == 2


async def test_cancel_then_resume_finishes_each_rollout_once(
        make_backend: BackendFactory, make_engine: EngineFactory) -> None:
    gate = anyio.Event()
    started = {"n": 0}

    async def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if not gate.is_set():
            started["n"] += 1
            await anyio.sleep_forever()
        return calculator_then_answer().handler(messages, tools)

    tasks = arithmetic_tasks(2)
    async with make_engine(backend=make_backend()) as engine:
        async with anyio.create_task_group() as tg:
            async def run_until_stopped() -> None:
                await engine.run(tasks, Agent(ScriptedPolicy(handler)), environment="probe",
                                 samples=2, scorer="arithmetic", run_id="r1")

            tg.start_soon(run_until_stopped)
            await eventually(lambda: started["n"] == 4, 30, "every rollout mid-attempt")
            tg.cancel_scope.cancel()
        run = engine.open_run("r1")
        assert await run.counts() == {"cancelled": 4}
        gate.set()
        await engine.resume("r1", Agent(ScriptedPolicy(handler)))
        rollouts = await run.rollouts()
        assert {r.state for r in rollouts} == {"done"} and len(rollouts) == 4
        for r in rollouts:
            assert [a.state for a in await engine.store.attempts(r.id)] == ["cancelled", "done"]
