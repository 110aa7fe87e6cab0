"""Stores recorded by real runs of the engine, and real Chromium, for the viewer's tests."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from engine import (
    Agent,
    Completion,
    Engine,
    EnvironmentLost,
    FunctionEnvironment,
    Observation,
    ScriptedPolicy,
    Task,
    TaskView,
)
from engine.policy.toolcalls import make_call

HOSTILE = (
    '<script>window.__pwned = "script"</script><img src=x onerror="window.__pwned = \'img\'">'
    '<svg onload="window.__pwned = \'svg\'"></svg></pre></textarea><iframe src="/"></iframe>'
    '<a href="javascript:window.__pwned=1">link</a> {{7*7}} ${7*7}'
)
"""Recorded text that would run script if a page did not escape it."""
SECRET = "GT-SECRET-9071"
"""A ground truth the agent never answers: it must not show unless asked for."""
HOSTILE_RUN = 'run-"><script>window.__pwned = "run id"</script>'


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def lookup(q: str) -> str:
    """Look something up (returns hostile HTML, as a web page might)."""
    return f"result for {q}: {HOSTILE}"


class Environment(FunctionEnvironment):
    """``lookup``; the environment of task ``flaky`` is lost on every reset (an
    infrastructure fault: retried, then ``error``), the reason in hostile text."""

    def __init__(self) -> None:
        super().__init__([lookup])

    async def reset(self, task: TaskView) -> Observation:
        if task.id == "flaky":
            raise EnvironmentLost(f"worker 10.0.0.{len(task.prompt)}:8{task.id[:1]} gone {HOSTILE}")
        return await super().reset(task)


def make_tasks() -> list[Task]:
    tasks = [
        Task(f"t{i}", f"Question {i} {HOSTILE}", str(i), metadata={"level": 1 + i % 3})
        for i in range(6)
    ]
    tasks.append(Task("secret", "What is the secret?", SECRET, metadata={"level": 1}))
    tasks.append(Task("flaky", "flaky", "0", metadata={"level": 2}))
    tasks.append(Task("loops", "loops", "0", metadata={"level": 3}))
    return tasks


def scripted_agent(gate: asyncio.Event | None = None) -> Agent:
    """Calls ``lookup`` with the task's first word, then answers; wrong on every
    other reply of a task, so groups split; keeps calling on ``loops`` (turn limit)."""
    seen: dict[str, int] = {}

    async def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        prompt = next(m["content"] for m in messages if m["role"] == "user")
        words = prompt.split()
        key = words[0] if words[0] != "Question" else words[1]
        if messages[-1]["role"] == "tool" and key != "loops":
            if gate is not None:
                await gate.wait()
            n = seen[key] = seen.get(key, 0) + 1
            answer = key if n % 2 else "wrong"
            return Completion(
                content=f"Thinking {HOSTILE}\n<answer>{answer}</answer>",
                finish_reason="stop",
                usage={"prompt_tokens": 120, "completion_tokens": 17},
                policy_version="v7",
            )
        call = make_call(f"c{len(messages)}", "lookup", {"q": key})
        return Completion(
            content=None,
            tool_calls=[call],
            finish_reason="tool_calls",
            usage={"prompt_tokens": 100, "completion_tokens": 9},
            policy_version="v7",
        )

    return Agent(ScriptedPolicy(handler), max_turns=3, name="scripted")


@dataclass
class Recorded:
    store: Path
    run_id: str
    other_id: str
    run_ids: list[str] = field(default_factory=list)


async def record_run(
    store: Path,
    run_id: str,
    samples: int = 4,
    gate: asyncio.Event | None = None,
    tasks: list[Task] | None = None,
) -> None:
    async with Engine(store=store, progress=False, retry_backoff=0.01, max_attempts=2) as engine:
        await engine.run(
            tasks or make_tasks(),
            scripted_agent(gate),
            environment=Environment,
            samples=samples,
            scorer="exact",
            run_id=run_id,
        )


@pytest.fixture
async def recorded(tmp_path: Path) -> Recorded:
    """A store with two finished runs of the same tasks: one with a hostile run id."""
    store = tmp_path / "runs.db"
    await record_run(store, HOSTILE_RUN)
    await record_run(store, "run-b", samples=2)
    return Recorded(store, HOSTILE_RUN, "run-b", [HOSTILE_RUN, "run-b"])


@pytest.fixture
def browser_installed() -> None:
    """playwright and Debian's Chromium are there (skipped otherwise, unless
    DRILLYARD_REQUIRE_BROWSER=1, as in CI, where that fails)."""
    require = pytest.fail if os.environ.get("DRILLYARD_REQUIRE_BROWSER") == "1" else pytest.skip
    try:
        import playwright  # noqa: F401

        from tools.browser import CHROMIUM
    except ModuleNotFoundError as exc:
        require(f"needs {exc.name}: pip install -e '.[browser]'")
        raise
    if not os.path.exists(CHROMIUM):
        require("Debian's chromium is not installed: apt-get install -y chromium")


@pytest.fixture
async def chromium(browser_installed: None) -> AsyncIterator[Any]:
    """Debian's Chromium through playwright, as the browser tool launches it."""
    from playwright.async_api import async_playwright

    from tools.browser import CHROMIUM, CHROMIUM_ARGS

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()
