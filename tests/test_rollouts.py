"""Rollouts end to end on the in-process backend with scripted policies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio
import pytest

from engine import (
    Agent,
    Engine,
    EnvSpec,
    FunctionEnvironment,
    Observation,
    PolicyError,
    ScriptedPolicy,
    Task,
    TaskView,
    ToolCall,
)
from engine.envs.arithmetic import ArithmeticEnvironment, CalculatorOracle, arithmetic_tasks
from tests.support.scripted import calculator_then_answer

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]


async def states_of(engine: Engine, rollout_id: str) -> list[str]:
    msgs = await engine.store.messages(rollout_id, category="state")
    return [m.payload["to"] for m in msgs]


async def test_happy_path_records_every_transition(make_engine: EngineFactory) -> None:
    tasks = arithmetic_tasks(3)
    async with make_engine() as engine:
        run = await engine.run(
            tasks,
            Agent(calculator_then_answer()),
            environment="arithmetic",
            samples=2,
            scorer="arithmetic",
        )
        rollouts = await run.rollouts()
        assert len(rollouts) == 6
        assert {r.state for r in rollouts} == {"done"}
        assert all(r.reward == 1.0 for r in rollouts)
        assert await states_of(engine, rollouts[0].id) == [
            "starting",
            "generating",
            "acting",
            "generating",
            "scoring",
            "done",
        ]
        msgs = await run.messages(rollouts[0].id)
        assert [m.seq for m in msgs] == list(range(len(msgs)))
        cats = [m.category for m in msgs]
        for needed in (
            "task",
            "observation",
            "model_request",
            "model_reply",
            "tool_call",
            "tool_result",
            "score",
        ):
            assert needed in cats
        result = next(m for m in msgs if m.category == "tool_result")
        assert result.payload["content"] == tasks[0].ground_truth
        report = await run.pass_at_k([1, 2])
        assert report.overall == {1: 1.0, 2: 1.0}


async def test_wrong_answers_score_zero_and_pass_at_k_counts_them(
    make_engine: EngineFactory,
) -> None:
    async with make_engine() as engine:
        run = await engine.run(
            arithmetic_tasks(2),
            Agent(calculator_then_answer("-1")),
            environment="arithmetic",
            samples=3,
            scorer="arithmetic",
        )
        assert {r.state for r in await run.rollouts()} == {"done"}
        assert all(r.reward == 0.0 for r in await run.rollouts())
        assert (await run.pass_at_k([1, 3])).overall == {1: 0.0, 3: 0.0}


async def test_broken_tool_call_json_is_an_observation(make_engine: EngineFactory) -> None:
    seen: list[str] = []
    good = '{"name": "calculator", "arguments": {"expression": "2+3"}}'

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "tool":
            seen.append(messages[-1]["content"])
            if len(seen) == 1:  # second try: a good call
                return f"<tool_call>{good}</tool_call>"
            return "5"
        return f"<tool_call>{good[:-2]}</tool_call>"  # cut short: not valid JSON

    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "What is 2+3?", "5")],
            Agent(ScriptedPolicy(handler)),
            environment="arithmetic",
            scorer="numeric",
        )
        (r,) = await run.rollouts()
    assert r.state == "done" and r.reward == 1.0
    assert seen[0].startswith("Error:") and "not valid JSON" in seen[0]
    assert seen[1] == "5"


async def test_unknown_tool_and_bad_arguments_are_observations(make_engine: EngineFactory) -> None:
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    replies = iter(
        [
            {"tool_calls": [{"name": "multiply", "arguments": {"a": 1}}]},
            {"tool_calls": [{"name": "add", "arguments": {"a": "x", "b": 2}}]},
            {"tool_calls": [{"name": "add", "arguments": '{"a": 1, "b": 2}'}]},
            "3",
        ]
    )
    observations: list[str] = []

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "tool":
            observations.append(messages[-1]["content"])
        return next(replies)

    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "add 1 and 2", "3")],
            Agent(ScriptedPolicy(handler)),
            environment=lambda: FunctionEnvironment([add]),
            scorer="exact",
        )
        (r,) = await run.rollouts()
    assert r.state == "done" and r.reward == 1.0
    assert "unknown tool 'multiply'" in observations[0] and "add" in observations[0]
    assert "bad arguments for add" in observations[1] and "a" in observations[1]
    assert observations[2] == "3"


async def test_turn_limit_is_failed_with_reward_zero(make_engine: EngineFactory) -> None:
    always_call = ScriptedPolicy(
        lambda m, t: {"tool_calls": [{"name": "calculator", "arguments": {"expression": "1+1"}}]}
    )
    async with make_engine() as engine:
        run = await engine.run(
            arithmetic_tasks(1),
            Agent(always_call, max_turns=3),
            environment="arithmetic",
            scorer="arithmetic",
        )
        (r,) = await run.rollouts()
    assert r.state == "failed" and r.reward == 0.0 and r.turns == 3
    assert "turn limit of 3" in (r.error or "")


async def test_empty_final_reply_is_failed(make_engine: EngineFactory) -> None:
    async with make_engine() as engine:
        run = await engine.run(
            arithmetic_tasks(1),
            Agent(ScriptedPolicy(lambda m, t: "   ")),
            environment="arithmetic",
            scorer="arithmetic",
        )
        (r,) = await run.rollouts()
    assert r.state == "failed" and "no answer" in (r.error or "")


class HangingEnvironment(ArithmeticEnvironment):
    async def step(self, call: ToolCall) -> Observation:
        if (call.parsed or {}).get("expression") == "hang":
            await anyio.sleep_forever()
        return await super().step(call)


async def test_a_hanging_tool_is_cut_at_its_deadline(make_engine: EngineFactory) -> None:
    replies = iter(
        [
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "hang"}}]},
            {"tool_calls": [{"name": "calculator", "arguments": {"expression": "2+2"}}]},
            "4",
        ]
    )
    seen: list[str] = []

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "tool":
            seen.append(messages[-1]["content"])
        return next(replies)

    async with make_engine(step_timeout=0.2) as engine:
        run = await engine.run(
            [Task("t", "What is 2+2?", "4")],
            Agent(ScriptedPolicy(handler)),
            environment=HangingEnvironment,
            scorer="numeric",
        )
        (r,) = await run.rollouts()
    assert r.state == "done" and r.reward == 1.0
    assert "did not finish within 0.2s" in seen[0]


async def test_rollout_deadline_is_timed_out(make_engine: EngineFactory) -> None:
    async def slow(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        await anyio.sleep_forever()

    async with make_engine(rollout_timeout=0.2, step_timeout=10) as engine:
        run = await engine.run(
            arithmetic_tasks(2),
            Agent(ScriptedPolicy(slow)),
            environment="arithmetic",
            scorer="arithmetic",
        )
        rollouts = await run.rollouts()
        assert {r.state for r in rollouts} == {"timed_out"}
        assert (await run.pass_at_k([1])).overall == {1: 0.0}
        assert (await states_of(engine, rollouts[0].id))[-1] == "timed_out"


async def test_infra_faults_are_retried_and_every_attempt_recorded(
    make_engine: EngineFactory,
) -> None:
    failures = {"left": 2}

    def flaky(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "user" and failures["left"] > 0:
            failures["left"] -= 1
            raise PolicyError("model server at http://x failed: HTTP 503")
        return calculator_then_answer().handler(messages, tools)

    async with make_engine(max_attempts=3, max_rollouts=1) as engine:
        run = await engine.run(
            arithmetic_tasks(1),
            Agent(ScriptedPolicy(flaky)),
            environment="arithmetic",
            scorer="arithmetic",
        )
        (r,) = await run.rollouts()
        attempts = await engine.store.attempts(r.id)
        states = await states_of(engine, r.id)
    assert r.state == "done" and r.attempt == 3
    assert [a.state for a in attempts] == ["error", "error", "done"]
    assert all("HTTP 503" in (a.error or "") for a in attempts[:2])
    assert states.count("queued") == 2  # error → queued once per retry


async def test_retries_are_capped_and_the_run_goes_on(make_engine: EngineFactory) -> None:
    def down_for_one_task(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if "(51 - 99)" in messages[-1]["content"]:
            raise PolicyError("connection refused")
        return calculator_then_answer().handler(messages, tools)

    tasks = arithmetic_tasks(3)
    async with make_engine(max_attempts=2) as engine:
        run = await engine.run(
            tasks,
            Agent(ScriptedPolicy(down_for_one_task)),
            environment="arithmetic",
            scorer="arithmetic",
            samples=2,
        )
        by_task = {r.task_id: r for r in await run.rollouts()}
        counts = await run.counts()
        bad = by_task[tasks[0].id]
        attempts = await engine.store.attempts(bad.id)
        report = await run.pass_at_k([1])
    assert counts == {"error": 2, "done": 4}
    assert bad.state == "error" and "connection refused" in (bad.error or "")
    assert [a.state for a in attempts] == ["error", "error"]
    # infrastructure errors are left out of pass@k, not counted as wrong answers
    assert report.samples[tasks[0].id] == (0, 0) and report.overall == {1: 1.0}


async def test_a_scorer_that_raises_is_an_error_not_retried(make_engine: EngineFactory) -> None:
    def bad_scorer(task: Task, answer: str | None) -> float:
        raise ValueError("boom")

    async with make_engine() as engine:
        run = await engine.run(
            arithmetic_tasks(1),
            Agent(calculator_then_answer()),
            environment="arithmetic",
            scorer=bad_scorer,
        )
        (r,) = await run.rollouts()
    assert (
        r.state == "error"
        and r.attempt == 1
        and "scorer raised ValueError: boom" in (r.error or "")
    )


async def test_environments_never_see_the_ground_truth(make_engine: EngineFactory) -> None:
    secret = "the-secret-answer-8812"
    received: list[Any] = []

    class Spy(FunctionEnvironment):
        async def reset(self, task: TaskView) -> Observation:
            received.append(task)
            return await super().reset(task)

        async def step(self, call: ToolCall) -> Observation:
            received.append(call)
            return await super().step(call)

    def echo(text: str) -> str:
        """Echo."""
        return text

    policy = ScriptedPolicy(
        lambda m, t: (
            {"tool_calls": [{"name": "echo", "arguments": {"text": "hi"}}]}
            if m[-1]["role"] == "user"
            else secret
        )
    )
    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "guess", secret, metadata={"level": 1, "_steps": f"answer {secret}"})],
            Agent(policy),
            environment=lambda: Spy([echo]),
            scorer="exact",
        )
        (r,) = await run.rollouts()
    assert r.reward == 1.0  # the agent guessed it; the environment was never told
    view = received[0]
    assert isinstance(view, TaskView) and not hasattr(view, "ground_truth")
    assert view.metadata == {"level": 1}  # driver-only "_" keys stay in the driver
    assert all(secret not in repr(x) for x in received)


async def test_concurrency_limits_hold(make_engine: EngineFactory) -> None:
    live = {"model": 0, "model_max": 0}

    async def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        live["model"] += 1
        live["model_max"] = max(live["model_max"], live["model"])
        await anyio.sleep(0.01)
        live["model"] -= 1
        return calculator_then_answer().handler(messages, tools)

    from backends.inprocess import InProcessBackend

    backend = InProcessBackend(slots=3)
    envs = {"live": 0, "max": 0}

    class Counted(ArithmeticEnvironment):
        def __init__(self) -> None:
            super().__init__()
            envs["live"] += 1
            envs["max"] = max(envs["max"], envs["live"])

        async def close(self) -> None:
            envs["live"] -= 1

    async with make_engine(backend=backend, max_rollouts=8, max_model_requests=2) as engine:
        run = await engine.run(
            arithmetic_tasks(6),
            Agent(ScriptedPolicy(handler)),
            environment=Counted,
            samples=2,
            scorer="arithmetic",
        )
        assert (await run.counts()) == {"done": 12}
    assert live["model_max"] == 2
    assert envs["max"] == 3 and envs["live"] == 0 and backend.live == 0


async def test_cancelling_a_run_then_resuming_finishes_it_once(make_engine: EngineFactory) -> None:
    gate, all_waiting = anyio.Event(), anyio.Event()
    waiting = {"n": 0}

    async def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if not gate.is_set():
            waiting["n"] += 1
            if waiting["n"] == 8:  # every rollout is generating: cancel the run now
                all_waiting.set()
            await anyio.sleep_forever()
        return calculator_then_answer().handler(messages, tools)

    tasks = arithmetic_tasks(4)
    async with make_engine() as engine:
        async with anyio.create_task_group() as tg:
            async def run_it() -> None:
                await engine.run(
                    tasks,
                    Agent(ScriptedPolicy(handler)),
                    environment="arithmetic",
                    samples=2,
                    scorer="arithmetic",
                    run_id="r1",
                )

            tg.start_soon(run_it)
            await all_waiting.wait()
            tg.cancel_scope.cancel()
        run = engine.open_run("r1")
        assert await run.counts() == {"cancelled": 8}
        assert (await engine.store.run("r1")).status == "interrupted"
        gate.set()
        await engine.resume("r1", Agent(ScriptedPolicy(handler)))
        rollouts = await run.rollouts()
        assert len(rollouts) == 8 and {r.state for r in rollouts} == {"done"}
        assert len({(r.task_id, r.sample_index) for r in rollouts}) == 8
        attempts = await engine.store.attempts(rollouts[0].id)
        assert [a.state for a in attempts] == ["cancelled", "done"]
        states = await states_of(engine, rollouts[0].id)
        assert states == [
            "starting",
            "generating",
            "cancelled",
            "queued",
            "starting",
            "generating",
            "acting",
            "generating",
            "scoring",
            "done",
        ]
        assert (await engine.store.run("r1")).status == "finished"


async def test_resume_of_a_finished_run_changes_nothing(make_engine: EngineFactory) -> None:
    async with make_engine() as engine:
        run = await engine.run(
            arithmetic_tasks(2),
            Agent(CalculatorOracle()),
            environment=EnvSpec("arithmetic"),
            scorer="arithmetic",
            samples=2,
        )
        before = await engine.store.count_messages(run.id)
        await engine.resume(run.id, Agent(CalculatorOracle()))
        assert await engine.store.count_messages(run.id) == before


async def test_export_jsonl_has_one_trajectory_per_rollout(
    make_engine: EngineFactory, tmp_path: Any
) -> None:
    import json

    async with make_engine() as engine:
        run = await engine.run(
            arithmetic_tasks(2),
            Agent(CalculatorOracle()),
            environment="arithmetic",
            scorer="arithmetic",
            samples=3,
        )
        n = await run.export_jsonl(tmp_path / "out.jsonl")
    lines = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert n == len(lines) == 6
    assert {x["state"] for x in lines} == {"done"}
    for x in lines:
        assert x["messages"][0]["payload"]["to"] == "starting"
        assert x["messages"][-1]["payload"]["to"] == "done"
        assert "ground_truth" not in json.dumps(x["messages"][1]["payload"])
