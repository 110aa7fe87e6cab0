"""BFCL v4 multi-turn through Drillyard, scored by BFCL's own checker."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from bfcl import package
from bfcl.agent import bfcl_agent, parse_call, replay_policy
from bfcl.loader import load_bfcl
from bfcl.scorer import check
from engine import Agent, Engine, ScriptedPolicy
from engine.policy.base import Completion, SamplingParams
from engine.policy.toolcalls import make_call

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]
CATEGORIES = ("base", "miss_func", "miss_param", "long_context")


async def test_replaying_the_possible_answers_is_correct_on_every_task(
        make_engine: EngineFactory) -> None:
    """Every multi-turn task BFCL ships, replayed, passes BFCL's checker."""
    async with make_engine(max_rollouts=32) as engine:
        for category in CATEGORIES:
            tasks = load_bfcl([category])
            assert len(tasks) == 200
            run = await engine.run(tasks, bfcl_agent(replay_policy(tasks), tasks),
                                   environment="bfcl", scorer="bfcl")
            report = await run.pass_at_k([1], by=["category"])
            wrong = [(r.task_id, r.state, r.error) for r in await run.rollouts()
                     if r.reward != 1.0]
            assert wrong == [] and report.by["category"] == {category: {1: 1.0}}
    held = package.module("eval_checker.multi_turn_eval.multi_turn_utils")
    assert not [k for k in vars(held) if k.startswith("drillyard_")]  # backends released


async def test_a_wrong_call_scores_wrong_with_bfcls_reason(make_engine: EngineFactory) -> None:
    tasks = load_bfcl(["base"], ids=["multi_turn_base_0", "multi_turn_base_102"])
    right = replay_policy(tasks)

    async def wrong(messages: list[dict[str, Any]], tools: Any) -> Any:
        [reply] = await right.complete(messages, tools)
        if reply.tool_calls and len([m for m in messages if m["role"] == "user"]) == 1:
            first = reply.tool_calls[0]
            args = {**(first.parsed or {})}
            key = next(iter(args))
            args[key] = str(args[key]) + "_typo"
            reply.tool_calls[0] = make_call(first.id, first.name, args)
        return reply

    async with make_engine() as engine:
        run = await engine.run(tasks, bfcl_agent(ScriptedPolicy(wrong), tasks),
                               environment="bfcl", scorer="bfcl")
        rollouts = await run.rollouts()
        assert [(r.state, r.reward) for r in rollouts] == [("done", 0.0)] * 2
        by_id = {t.id: t for t in tasks}
        verdicts = [check(by_id[r.task_id], r.answer) for r in rollouts]
        assert {v["error_type"] for v in verdicts} <= {
            "multi_turn:instance_state_mismatch", "multi_turn:execution_response_mismatch"}


class HalfWrong:
    """Replays the possible answer; odd samples (by seed) misname a folder. All
    samples make their first calls before any goes on (they wait for each other)."""

    def __init__(self, tasks: list[Any], samples: int) -> None:
        self.right = replay_policy(tasks)
        self.samples, self.waiting = samples, 0
        self.all_in = anyio.Event()

    async def complete(self, messages: list[dict[str, Any]], tools: Any = None,
                       params: SamplingParams | None = None, n: int = 1) -> list[Completion]:
        assert params is not None and params.seed is not None
        [reply] = await self.right.complete(messages, tools)
        if messages[-1]["role"] == "tool" and len(messages) <= 4:
            self.waiting += 1
            if self.waiting == self.samples:
                self.all_in.set()
            await self.all_in.wait()
        if params.seed % 2 and reply.tool_calls and reply.tool_calls[0].name == "cd":
            reply.tool_calls[0] = make_call(reply.tool_calls[0].id, "mkdir",
                                            {"dir_name": "intruder"})
        return [reply]


@pytest.mark.parametrize("backend", ["inprocess", "subprocess"])
async def test_concurrent_rollouts_of_one_task_never_share_backend_state(
        make_engine: EngineFactory, backend: str) -> None:
    tasks = load_bfcl(ids=["multi_turn_base_0"])
    samples = 6
    agent = Agent(HalfWrong(tasks, samples), max_turns=40,  # type: ignore[arg-type]
                  sampling=SamplingParams(seed=0))
    options = {"workers": 2, "slots_per_worker": 3} if backend == "subprocess" else {}
    async with make_engine(backend=backend, backend_options=options,
                           max_rollouts=samples) as engine:
        run = await engine.run(tasks, agent, environment="bfcl", scorer="bfcl",
                               samples=samples)
        rewards = {r.sample_index: r.reward for r in await run.rollouts()}
    assert rewards == {i: 1.0 if i % 2 == 0 else 0.0 for i in range(samples)}


async def test_out_of_process_miss_func_offers_the_held_out_function_on_its_turn(
        make_engine: EngineFactory) -> None:
    tasks = load_bfcl(["miss_func"], limit=3)
    async with make_engine(backend="subprocess",
                           backend_options={"workers": 1, "slots_per_worker": 3}) as engine:
        run = await engine.run(tasks, bfcl_agent(replay_policy(tasks), tasks),
                               environment="bfcl", scorer="bfcl")
        rollouts = await run.rollouts()
        assert {r.reward for r in rollouts} == {1.0}
        r = rollouts[0]
        entry = package.entry(r.task_id)
        [(turn, [doc])] = list(entry["missed_function"].items())
        held = doc["name"]
        msgs = await run.messages(r.id)
        offered = [m.payload for m in msgs if m.category == "observation"]
        assert held not in offered[0]["tools"]
        assert held in offered[int(turn)]["tools"]  # reset is turn 0, respond n is turn n
        assert offered[int(turn)]["content"] == package.extra_functions_prompt()


def test_possible_answers_parse_with_positional_arguments_named() -> None:
    assert parse_call("sort('final_report.pdf')", ["GorillaFileSystem"]) == (
        "sort", {"file_name": "final_report.pdf"})
    assert parse_call("mv(source='a', destination='b')", ["GorillaFileSystem"]) == (
        "mv", {"source": "a", "destination": "b"})


def test_an_answer_that_is_not_the_environments_is_an_inference_error() -> None:
    [task] = load_bfcl(ids=["multi_turn_base_0"])
    assert check(task, "hello")["error_type"] == "multi_turn:inference_error"
    short = json.dumps({"id": task.id, "turns": [[]]})
    assert check(task, short)["error_type"] == "multi_turn:force_terminated"
