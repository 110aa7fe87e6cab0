"""The pytest plugin, as a user meets it: an ordinary test file run by pytest
(in a child process, with only this plugin loaded)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Task
from gaia.pytest_plugin import Expectation

REPO = Path(__file__).resolve().parents[2]

USER_TESTS = '''
from gaia.loader import load_gaia
from gaia import BUNDLED
from tests.gaia.oracle import SolutionPolicy

TOOLS = {"tools": ["calculator", "files", "search"]}


def env():
    from gaia.agent import gaia_environment
    return gaia_environment(**TOOLS)


def test_good_enough(drillyard_passk):
    report = drillyard_passk(tasks="gaia", policy=SolutionPolicy(wrong_from=3), samples=2,
                             expect="pass@2 >= 0.9", environment=env(), limit=LIMIT)
    assert report.overall[2] == 1.0


def test_missed(drillyard_passk):
    from engine import SamplingParams
    from gaia.agent import gaia_agent

    # every odd sample wrong (the sample index comes from the seed)
    agent = gaia_agent(SolutionPolicy(wrong_from=1), sampling=SamplingParams(seed=0))
    drillyard_passk(tasks=str(BUNDLED), agent=agent, samples=2,
                    expect=["pass@1 >= 0.9", "pass@2 >= 0.5"], environment=env(), limit=LIMIT)
'''


def run_pytest(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_user.py").write_text(source)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "gaia.pytest_plugin", "-q",
         "-p", "no:cacheprovider", "test_user.py", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240, check=False)


def test_a_user_test_passes_and_a_missed_threshold_fails_with_a_table(
        tmp_path: Path, bundled: list[Task]) -> None:
    limit = 6
    keep = tmp_path / "stores"
    result = run_pytest(tmp_path, USER_TESTS.replace("LIMIT", str(limit)),
                        "--drillyard-store", str(keep))
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "1 failed, 1 passed" in out
    assert "drillyard: expected pass@1 >= 0.9 and pass@2 >= 0.5, got pass@1 = 0.500, " \
           f"pass@2 = 1.000 over {limit} tasks x 2 samples" in out
    assert "task" in out and "pass@1" in out and "answers" in out
    for t in bundled[:limit]:
        assert t.id in out
    stores = sorted(keep.glob("*.db"))
    assert [s.name for s in stores] == ["test_good_enough-1.db", "test_missed-1.db"]
    assert f"store: {stores[1]}" in out
    assert "Traceback" not in out  # a clean failure, not a crash


@pytest.mark.parametrize(("text", "parsed"), [
    ("pass@8 >= 0.5", Expectation(8, ">=", 0.5)), (" pass@1>.25 ", Expectation(1, ">", 0.25)),
    ("pass@4 == 1", Expectation(4, "==", 1.0)),
])
def test_expectations(text: str, parsed: Expectation) -> None:
    assert Expectation.parse(text) == parsed
    assert parsed.holds(1.0) and str(Expectation.parse(str(parsed))) == str(parsed)


@pytest.mark.parametrize("text", ["pass@k >= 0.5", "pass@8 => 0.5", "accuracy >= 1", ""])
def test_bad_expectations_say_how_to_write_them(text: str) -> None:
    with pytest.raises(ValueError, match=r"write it like 'pass@8 >= 0\.5'"):
        Expectation.parse(text)


def test_the_fixture_in_this_suite(drillyard_passk: object, bundled: list[Task]) -> None:
    from gaia.agent import gaia_environment
    from tests.gaia.oracle import SolutionPolicy

    check: Any = drillyard_passk
    report = check(tasks=bundled[:3], policy=SolutionPolicy(), samples=1, expect="pass@1 == 1",
                   environment=gaia_environment(["calculator", "files", "search"]))
    assert report.samples == {t.id: (1, 1) for t in bundled[:3]}


@pytest.fixture
def model_server(bundled: list[Task]) -> Iterator[str]:
    """An OpenAI-format chat server on loopback (in its own thread and loop)
    that answers each bundled question with its ground truth."""
    import asyncio
    import threading

    from tests.support.chat_server import ChatServer, reply

    answers = {t.prompt: t.ground_truth for t in bundled}

    def answer(body: dict[str, Any]) -> dict[str, Any]:
        question = body["messages"][1]["content"].split("\n\nAttached files", 1)[0]
        return reply(f"FINAL ANSWER: {answers[question]}")

    urls: list[str] = []
    ready = threading.Event()
    state: dict[str, Any] = {}

    async def serve() -> None:
        state["loop"], state["stop"] = asyncio.get_running_loop(), asyncio.Event()
        async with ChatServer([answer]).running() as server:
            urls.append(server.url)
            ready.set()
            await state["stop"].wait()

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10)
    yield urls[0]
    state["loop"].call_soon_threadsafe(state["stop"].set)
    thread.join(10)


def test_sync_checks_with_a_real_http_policy(drillyard_passk: Any, model_server: str) -> None:
    from engine import OpenAIPolicy
    from gaia.agent import gaia_environment

    policy = OpenAIPolicy(model_server, "stub", timeout=10)
    for limit in (2, 3):  # one policy over two event loops: its client is closed after each
        report = drillyard_passk(tasks="gaia", policy=policy, samples=2, limit=limit,
                                 expect="pass@2 == 1", environment=gaia_environment(["calculator"]))
        assert len(report.per_task) == limit
    assert policy._transport is None  # closed with the loop it was opened in
