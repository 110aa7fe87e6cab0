"""The start order of a run's rollouts: as given, longest first (history or
metadata), or by the user's own estimate; bad orders are refused up front."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from engine import Agent, Engine, ScriptedPolicy, Task
from engine.errors import ConfigError

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]


def recording_policy(starts: list[str], slow: dict[str, float] | None = None) -> ScriptedPolicy:
    """Answers at once (after ``slow[task prompt]`` seconds of simulated model time),
    noting each rollout's prompt on its first call: the order rollouts start in."""

    async def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        prompt = messages[-1]["content"].split("\n", 1)[0]  # the task's own prompt
        starts.append(prompt)
        await asyncio.sleep((slow or {}).get(prompt, 0.0))
        return "ok"

    return ScriptedPolicy(handler)


def tasks(*names: str, **metadata: dict[str, Any]) -> list[Task]:
    return [Task(n, n, "ok", metadata=metadata.get(n, {})) for n in names]


async def test_given_order_is_the_default(make_engine: EngineFactory) -> None:
    starts: list[str] = []
    async with make_engine(max_rollouts=1) as engine:
        run = await engine.run(tasks("a", "b", "c"), Agent(recording_policy(starts)),
                               environment="arithmetic", samples=2)
        assert (await engine.store.run(run.id)).config["order"] == "given"
    assert starts == ["a", "a", "b", "b", "c", "c"]


async def test_longest_first_learns_from_earlier_runs(make_engine: EngineFactory) -> None:
    slow = {"long": 0.9, "mid": 0.3}  # gaps far above a loaded machine's jitter
    async with make_engine(max_rollouts=1) as engine:
        first: list[str] = []
        await engine.run(tasks("short", "mid", "long"), Agent(recording_policy(first, slow)),
                         environment="arithmetic", samples=2)
        assert first == ["short", "short", "mid", "mid", "long", "long"]
        durations = await engine.store.task_durations(["short", "mid", "long", "never"])
        assert set(durations) == {"short", "mid", "long"}
        assert durations["long"][1] == 2 and durations["long"][0] >= 0.9
        # the next epoch: the same tasks plus a new one with no history and no hint
        second: list[str] = []
        run = await engine.run(tasks("short", "new", "mid", "long"),
                               Agent(recording_policy(second)), environment="arithmetic",
                               samples=2, order="longest_first")
        assert (await engine.store.run(run.id)).config["order"] == "longest_first"
    # long, mid, short by history; the unknown task at the mean of the known ones
    # (~0.4 s: after long, before mid); samples of one task stay together
    assert second == ["long", "long", "new", "new", "mid", "mid", "short", "short"]


async def test_longest_first_uses_expected_seconds_without_history(
    make_engine: EngineFactory,
) -> None:
    starts: list[str] = []
    ts = tasks("a", "b", "c", b={"expected_s": 30}, c={"expected_s": 90})
    async with make_engine(max_rollouts=1) as engine:
        await engine.run(ts, Agent(recording_policy(starts)), environment="arithmetic",
                         order="longest_first")
    assert starts == ["c", "a", "b"]  # a has no estimate: the mean of 30 and 90, 60 s


async def test_an_own_estimate_orders_the_run(make_engine: EngineFactory) -> None:
    starts: list[str] = []
    steps = {"x": 3, "y": 12, "z": 7}
    async with make_engine(max_rollouts=1) as engine:
        run = await engine.run(tasks("x", "y", "z"), Agent(recording_policy(starts)),
                               environment="arithmetic", order=lambda t: steps[t.id])
        assert "lambda" in (await engine.store.run(run.id)).config["order"]
    assert starts == ["y", "z", "x"]


async def test_resume_keeps_the_runs_order(make_engine: EngineFactory) -> None:
    slow = {"c": 0.6, "b": 0.3}
    async with make_engine(max_rollouts=1) as engine:
        first: list[str] = []
        await engine.run(tasks("a", "b", "c"), Agent(recording_policy(first, slow)),
                         environment="arithmetic")  # history: c longest, then b, then a
        run = await engine.run(tasks("a", "b", "c"), Agent(recording_policy([])),
                               environment="arithmetic", order="longest_first")
        for r in await run.rollouts():  # as if the engine had died before any result
            engine.store.update_rollout(r.id, state="queued", attempt=0)
        await engine.store.commit()
        starts: list[str] = []
        await engine.resume(run.id, Agent(recording_policy(starts)))
    assert first == ["a", "b", "c"]
    assert starts == ["c", "b", "a"]


@pytest.mark.parametrize(
    ("order", "words"),
    [
        ("fastest", ["unknown order 'fastest'", "'longest_first'"]),
        (lambda t: "soon", ["returned 'soon' for task a", "finite number"]),
        (lambda t: float("nan"), ["returned nan"]),
    ],
)
async def test_bad_orders_are_refused_before_anything_runs(
    make_engine: EngineFactory, order: Any, words: list[str]
) -> None:
    starts: list[str] = []
    async with make_engine() as engine:
        with pytest.raises(ConfigError) as err:
            await engine.run(tasks("a"), Agent(recording_policy(starts)),
                             environment="arithmetic", order=order)
    assert all(w in str(err.value) for w in words)
    assert starts == []


async def test_a_bad_expected_seconds_names_the_task(make_engine: EngineFactory) -> None:
    async with make_engine() as engine:
        with pytest.raises(ConfigError, match=r"task b.*expected_s.*'later'"):
            await engine.run(tasks("a", "b", b={"expected_s": "later"}),
                             Agent(recording_policy([])), environment="arithmetic",
                             order="longest_first")
