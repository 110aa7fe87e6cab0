"""A synthesized domain end to end with a scripted policy, and the three-stage
filter: it keeps a correct trajectory and drops each kind of wrong one."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from engine import Agent, Engine, EnvSpec, ScriptedPolicy
from engine.tasks import load_tasks
from scaler.agents import GoldReplay
from scaler.data import SPECS
from scaler.filter import export_sft, export_tasks, filter_runs
from scaler.synthesize import synthesize
from tests.scaler import notes

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]


def replaying(tasks: list[Any], spoil: str = "none") -> ScriptedPolicy:
    replay = GoldReplay(tasks)
    return ScriptedPolicy(lambda messages, tools: replay.reply(messages, tools, spoil))


async def test_a_synthesized_domain_end_to_end_with_a_scripted_policy(
        tmp_path: Path, make_engine: EngineFactory) -> None:
    report = await synthesize(SPECS, tmp_path / "synth", seed=0, tasks_per_domain=4)
    runs = []
    async with make_engine(max_rollouts=8) as engine:
        for d in report.domains:
            tasks = load_tasks(tmp_path / "synth" / "tasks" / f"{d.name}.jsonl")
            domain = str(tmp_path / "synth" / "domains" / f"{d.name}.json")
            run = await engine.run(tasks, Agent(replaying(tasks), max_turns=10,
                                                system_prompt="Operate the tools."),
                                   environment=EnvSpec("stateful", {"domain": domain}),
                                   samples=2, scorer="state_alignment")
            rollouts = await run.rollouts()
            assert {(r.state, r.reward) for r in rollouts} == {("done", 1.0)}
            runs.append(run.id)
        result = await filter_runs(engine.store, runs)
        total = result.total()
        assert total.row() == [report.tasks * 2] * 4  # every stage keeps every trajectory
        assert set(result.by_domain()) == {d.name for d in report.domains}
        n = await export_sft(engine.store, result, tmp_path / "sft.jsonl")
    rows = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert n == len(rows) == report.tasks * 2
    multi = next(r for r in rows if sum(m["role"] == "user" for m in r["messages"]) == 2)
    roles = [m["role"] for m in multi["messages"]]
    assert roles[:2] == ["system", "user"] and roles[-1] == "assistant"
    assert "tool_call" in roles and json.loads(multi["tools"])
    assert export_tasks(result, tmp_path / "grpo.jsonl") == report.tasks
    again = load_tasks(tmp_path / "grpo.jsonl")  # a task file the engine runs as it is
    assert again[0].ground_truth["calls"] and again[0].metadata["initial_state"]


EXPECTED = {  # spoil -> the first stage it fails (None: kept)
    "none": None,
    "malformed": "valid",
    "unanswered": "valid",
    "budget": "valid",
    "wrong_argument": "aligned",
    "skip_last": "matched",  # the last gold call only reads: the state still aligns
    "extra_read": "matched",
}


async def test_the_filter_keeps_the_correct_trajectory_and_drops_each_wrong_kind(
        make_engine: EngineFactory, tmp_path: Path) -> None:
    task = notes.task()
    env = EnvSpec("stateful", {"domain": notes.DOMAIN})
    runs: dict[str, str] = {}
    async with make_engine() as engine:
        for spoil in EXPECTED:
            agent = Agent(replaying([task], "none" if spoil == "budget" else spoil),
                          max_turns=3 if spoil == "budget" else 10)
            run = await engine.run([task], agent, environment=env, scorer="call_match")
            runs[spoil] = run.id
        result = await filter_runs(engine.store, runs.values())
        by_run = {j.rollout.run_id: j for j in result.judged}
        got = {spoil: by_run[rid].stage for spoil, rid in runs.items()}
        assert got == EXPECTED, {s: by_run[r].reason for s, r in runs.items()}
        reasons = {spoil: by_run[rid].reason for spoil, rid in runs.items()}
        assert reasons["malformed"].startswith("malformed call to create_note")
        assert reasons["unanswered"].startswith("error left unanswered (no_such_tool")
        assert reasons["budget"].startswith("did not terminate (failed: turn limit of 3")
        assert reasons["wrong_argument"] == "final state differs in notes"
        assert reasons["extra_read"] == "4 successful calls, the gold sequence has 3"
        counts = result.by_domain()["notes"]
        assert counts.row() == [7, 4, 3, 1]
        assert await export_sft(engine.store, result, tmp_path / "kept.jsonl") == 1
    [row] = [json.loads(x) for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    calls = [json.loads(m["content"])["name"] for m in row["messages"]
             if m["role"] == "tool_call"]
    assert calls == ["create_note", "update_note", "get_note"]
