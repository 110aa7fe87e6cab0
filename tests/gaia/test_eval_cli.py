"""``eval gaia`` from the command line, on the bundled set with a scripted agent."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest

from engine import Agent, ConfigError, Task
from gaia.cli import main

ORACLE = "tests.gaia.oracle:make_agent"  # levels 2-3 wrong on odd samples


def expected(bundled: list[Task], samples: int) -> tuple[float, float]:
    """pass@1 and pass@n the oracle must score: level 1 always right, levels
    2-3 right on even samples only."""
    odd = samples // 2
    per_task = [1.0 if t.metadata["level"] == 1 else (samples - odd) / samples for t in bundled]
    return sum(per_task) / len(per_task), 1.0


def test_eval_prints_pass_at_k_and_writes_store_and_submission(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], bundled: list[Task]) -> None:
    store = tmp_path / "runs" / "gaia.db"
    code = main(["--store", str(store), "-n", "2", "--k", "1,2", "--policy", ORACLE,
                 "--tools", "calculator,files,search", "--run-id", "cli-test", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    pass1, pass2 = expected(bundled, 2)
    lines = {line.split("│")[1].strip(): line for line in out.splitlines() if line.count("│") > 3}
    assert f"{pass1:.3f}" in lines["all"] and f"{pass2:.3f}" in lines["all"]
    assert "1.000 │  1.000" in lines["level=1"]
    assert "0.500 │  1.000" in lines["level=2"] and "0.500 │  1.000" in lines["level=3"]
    submission = tmp_path / "runs" / "cli-test.submission.jsonl"
    assert f"submission: {submission}" in out.replace("\n", "")
    rows = [orjson.loads(x) for x in submission.read_bytes().splitlines()]
    assert [r["task_id"] for r in rows] == [t.id for t in bundled]
    assert [r["model_answer"] for r in rows] == [t.ground_truth for t in bundled]  # sample 0
    assert all(set(r) == {"task_id", "model_answer", "reasoning_trace"} for r in rows)
    assert "[tool] " in rows[0]["reasoning_trace"] and "FINAL ANSWER:" in rows[0]["reasoning_trace"]
    with sqlite3.connect(store) as db:
        (n,) = db.execute("SELECT COUNT(*) FROM rollouts WHERE run_id='cli-test'").fetchone()
        (config,) = db.execute("SELECT config FROM runs WHERE id='cli-test'").fetchone()
    assert n == 2 * len(bundled)
    assert orjson.loads(config)["order"] == "annotator_steps"  # the default start order


def test_eval_on_one_level_with_a_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--store", str(tmp_path / "s.db"), "--level", "3", "--limit", "2",
                 "--policy", ORACLE, "--tools", "calculator,files,search", "--no-progress",
                 "--submission", str(tmp_path / "sub.jsonl")])
    out = capsys.readouterr().out
    assert code == 0 and "2 tasks from" in out and "level=3" in out and "level=1" not in out
    assert len((tmp_path / "sub.jsonl").read_bytes().splitlines()) == 2


@pytest.mark.parametrize(("argv", "problem"), [
    (["-n", "2", "--k", "1,8"], "k=8 needs at least 8 samples"),
    (["--data", "/nonexistent/gaia"], "no 2023/validation/metadata.jsonl"),
    ([], "no policy given"),
    (["--policy", "tests.gaia.oracle:nothing"], "cannot load tests.gaia.oracle:nothing"),
    (["--policy", "no-colon"], "is not module:attr"),
    (["--split", "test"], "no 2023/test/metadata.jsonl"),
    (["--tools", "calculator,no.such.tool"], "environment 'no.such.tool': unknown name"),
    (["--policy-url", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env", "NO_SUCH_KEY_X"],
     "the variable NO_SUCH_KEY_X is not set"),
])
def test_bad_input_is_a_clear_error(argv: list[str], problem: str, tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    if "--policy" not in argv and "--policy-url" not in argv and problem != "no policy given":
        argv = [*argv, "--policy", ORACLE]
    code = main(["--store", str(tmp_path / "s.db"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and problem in err


def test_python_m_engine_eval_gaia(tmp_path: Path) -> None:
    """The command as users type it."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "engine", "eval", "gaia", "--store", str(tmp_path / "s.db"),
         "--limit", "3", "-n", "2", "--k", "1,2", "--policy", ORACLE,
         "--tools", "calculator,files,search", "--no-progress"],
        cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=120,
        check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pass@2" in result.stdout and "submission:" in result.stdout


def last_line(text: str | None) -> str | None:
    """A custom answer reader, defined at module level so a run can name it."""
    return text.strip().splitlines()[-1] if text else None


def test_an_agent_is_rebuilt_for_resume_from_its_stored_description() -> None:
    from engine.config import agent_from_description
    from engine.policy.openai import OpenAIPolicy
    from gaia.agent import SYSTEM_PROMPT

    agent = Agent(OpenAIPolicy("http://127.0.0.1:9/v1", "tiny"), system_prompt=SYSTEM_PROMPT,
                  max_turns=5, answer_from=last_line, name="gaia")  # fmt: skip
    desc = orjson.loads(orjson.dumps(agent.describe()))  # as the store keeps it
    assert desc["answer_from"] == f"{__name__}:last_line"
    again = agent_from_description(desc)
    assert again.answer_from is last_line
    assert (again.name, again.system_prompt, again.max_turns) == ("gaia", agent.system_prompt, 5)
    # a lambda is not stored by name: resume falls back to the default reader
    agent.answer_from = lambda text: text
    assert agent.describe()["answer_from"] is None
    with pytest.raises(ConfigError, match=rf"agent\.answer_from.*{__name__}:gone"):
        agent_from_description({**desc, "answer_from": f"{__name__}:gone"})
