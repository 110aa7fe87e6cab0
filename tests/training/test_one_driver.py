"""One driver for evaluation and training: the same fault ends the same way on every path.

The same environment, the same tool calls, through `Engine.run`, the colocate
feed (the trainer generates) and the rollout server (swift server mode): a
tool that hangs past its deadline and a tool that raises FileNotFoundError are
observations the agent sees; an environment whose connection is lost fails
the attempt, which is retried on a fresh environment.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import anyio
import pytest

from engine import Agent, Engine, Observation, ScriptedPolicy, Task, TaskView, ToolCall
from engine.integrations.config import FeedConfig
from engine.integrations.feed import Feed
from engine.integrations.rollout_server import RolloutServer
from engine.registry import register
from engine.toolkit import FunctionEnvironment

pytestmark = pytest.mark.anyio
STEP_TIMEOUT = 0.5


class HazardEnvironment(FunctionEnvironment):
    """``hang`` never returns; ``read`` raises FileNotFoundError (tool faults);
    the first ``flaky`` call of each task loses the environment's connection."""

    lost: ClassVar[set[str]] = set()

    def __init__(self) -> None:
        super().__init__([self.hang, self.read, self.flaky])
        self.task = ""

    async def reset(self, task: TaskView) -> Observation:
        self.task = task.id
        return Observation(task.prompt)

    async def hang(self) -> str:
        """Wait for ever."""
        await anyio.Event().wait()
        return "never"

    def read(self, path: str) -> str:
        """Read a file."""
        raise FileNotFoundError(f"no such file: {path}")

    def flaky(self) -> str:
        """Works, once the environment is reachable."""
        return "ok"

    async def step(self, call: ToolCall) -> Observation:
        if call.name == "flaky" and self.task not in self.lost:
            self.lost.add(self.task)
            raise ConnectionResetError("connection to the environment lost")
        return await super().step(call)


CALLS = {
    "hang": '<tool_call>{"name": "hang", "arguments": {}}</tool_call>',
    "read": '<tool_call>{"name": "read", "arguments": {"path": "/nope"}}</tool_call>',
    "flaky": '<tool_call>{"name": "flaky", "arguments": {}}</tool_call>',
}


@pytest.fixture(autouse=True)
def hazard() -> Iterator[None]:
    register("environments", "hazard", HazardEnvironment)
    HazardEnvironment.lost.clear()
    yield
    HazardEnvironment.lost.clear()


def scripted(tool: str) -> ScriptedPolicy:
    def reply(messages: list[dict[str, Any]], tools: Any) -> str:
        return CALLS[tool] if messages[-1]["role"] == "user" else "done"

    return ScriptedPolicy(reply)


def outcome(observation: str, attempts: int, state: str) -> dict[str, Any]:
    kind = "timeout" if "did not finish within" in observation else observation
    return {"observation": kind, "attempts": attempts, "state": state}


async def via_engine_run(tool: str, store: Path) -> dict[str, Any]:
    async with Engine(store=store, step_timeout=STEP_TIMEOUT, retry_backoff=0.0,
                      progress=False) as engine:  # fmt: skip
        run = await engine.run([Task(f"t-{tool}", "go", "done")], Agent(scripted(tool)),
                               environment="hazard")  # fmt: skip
        (r,) = await run.rollouts()
        results = await engine.store.messages(r.id, "tool_result")
        attempts = await engine.store.attempts(r.id)
    return outcome(results[-1].payload["content"], len(attempts), r.state)


def via_colocate_feed(tool: str, store: Path) -> dict[str, Any]:
    config = FeedConfig(store=str(store), environment="hazard", scorer="exact",
                        step_timeout=STEP_TIMEOUT, retry_backoff=0.0)  # fmt: skip
    feed = Feed(config)
    try:
        data = {"task_id": f"t-{tool}", "ground_truth": "done"}
        feed.loop.call(feed.start_many([("u", [{"role": "user", "content": "go"}], data)], 4))
        acted = feed.loop.call(feed.turn_end("u", 1, CALLS[tool], [], [1, 2], [], "stop"))
        assert not acted.done
        (observation,) = acted.next_messages
        ended = feed.loop.call(feed.turn_end("u", 2, "done", [], [3], [], "stop"))
        return outcome(observation["content"], ended.infos["attempts"], ended.infos["state"])
    finally:
        feed.close()


async def via_rollout_server(tool: str, store: Path) -> dict[str, Any]:
    config = FeedConfig(store=str(store), environment="hazard", scorer="exact", port=0,
                        step_timeout=STEP_TIMEOUT, retry_backoff=0.0)  # fmt: skip
    async with RolloutServer(config, policy=scripted(tool)) as server:
        request = {"messages": [{"role": "user", "content": "go"}],
                   "data_dict": {"task_id": f"t-{tool}", "ground_truth": "done"}}  # fmt: skip
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{server.url}/infer/", json={"infer_requests": [request]}) as r:
                assert r.status == 200, await r.text()
                (out,) = await r.json()
    info = out["rollout_infos"]["drillyard"]
    observation = next(m for m in out["messages"] if m["role"] == "tool")
    return outcome(observation["content"], info["attempts"], info["state"])


@pytest.mark.parametrize(
    ("tool", "expected"),
    [
        ("hang", {"observation": "timeout", "attempts": 1, "state": "done"}),
        ("read", {"observation": "Error: read raised FileNotFoundError: no such file: /nope",
                  "attempts": 1, "state": "done"}),
        ("flaky", {"observation": "ok", "attempts": 2, "state": "done"}),
    ],
)  # fmt: skip
async def test_the_same_fault_ends_the_same_way_on_every_path(
    tool: str, expected: dict[str, Any], tmp_path: Path
) -> None:
    evaluated = await via_engine_run(tool, tmp_path / "run.db")
    HazardEnvironment.lost.clear()
    colocated = await anyio.to_thread.run_sync(via_colocate_feed, tool, tmp_path / "feed.db")
    HazardEnvironment.lost.clear()
    served = await via_rollout_server(tool, tmp_path / "server.db")
    assert evaluated == colocated == served == expected, json.dumps(
        {"engine.run": evaluated, "colocate": colocated, "server": served}, indent=1
    )
