"""Kill the engine mid-run (kill -9, Ctrl-C): the store stays consistent and
`python -m engine resume` finishes the run with nothing lost or duplicated."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

RESULT = ("done", "failed", "timed_out", "error")
TASKS, SAMPLES = 30, 4


def start_run(store: Path, run_id: str, shards: int = 1) -> subprocess.Popen[bytes]:
    cmd = [
        sys.executable,
        "-m",
        "engine",
        "run",
        "--oracle",
        "--latency",
        "0.05",
        "--arithmetic",
        str(TASKS),
        "--samples",
        str(SAMPLES),
        "--max-rollouts",
        "8",
        "--store",
        str(store),
        "--run-id",
        run_id,
        "--no-progress",
        "--shards",
        str(shards),
    ]
    with (store.parent / f"{run_id}.stderr").open("wb") as err:
        return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)


def stderr_of(store: Path, run_id: str) -> str:
    return (store.parent / f"{run_id}.stderr").read_text()


def query(store: Path, sql: str, *params: object) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def wait_for_done(store: Path, proc: subprocess.Popen[bytes], at_least: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        if store.exists():
            try:
                done = query(store, "SELECT COUNT(*) FROM rollouts WHERE state='done'")[0][0]
            except sqlite3.OperationalError:  # schema not created yet
                done = 0
            if isinstance(done, int) and done >= at_least:
                return
        time.sleep(0.02)  # polling a condition, not synchronising on time
    pytest.fail("the run made no progress in 60 s")


def assert_consistent(store: Path) -> None:
    """Every rollout marked with a result has the messages that led to it."""
    for rid, state, num in query(store, "SELECT id, state, num FROM rollouts"):
        seqs = [
            r[0]
            for r in query(store, "SELECT seq FROM messages WHERE rollout_num=? ORDER BY seq", num)
        ]
        assert seqs == list(range(len(seqs))), f"{rid}: gap or duplicate in message seqs"
        if state in RESULT:
            last = query(
                store,
                "SELECT category, topic FROM messages WHERE rollout_num=?"
                " ORDER BY seq DESC LIMIT 1",
                num,
            )
            assert last == [("state", state)], f"{rid} is {state} but its last message is {last}"


def resume_and_check(store: Path, run_id: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "engine", "resume", run_id, "--store", str(store)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    rows = query(
        store,
        "SELECT task_id, sample_index, state, num, attempt FROM rollouts WHERE run_id=?",
        run_id,
    )
    assert len(rows) == TASKS * SAMPLES
    assert len({(r[0], r[1]) for r in rows}) == TASKS * SAMPLES  # no duplicates
    assert {r[2] for r in rows} == {"done"}
    assert_consistent(store)
    for _, _, _, num, attempt in rows:
        states = [
            r[0]
            for r in query(
                store,
                "SELECT topic FROM messages WHERE rollout_num=? AND"
                " category='state' AND attempt=? ORDER BY seq",
                num,
                attempt,
            )
        ]
        assert states[-5:] == ["generating", "acting", "generating", "scoring", "done"]
    assert query(store, "SELECT status FROM runs WHERE id=?", run_id) == [("finished",)]


def children_of(pid: int) -> list[int]:
    """The live processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("shards", [1, 2])
def test_kill_9_mid_run_then_resume(tmp_path: Path, shards: int) -> None:
    """With shards, the kill takes the shard processes with it (nothing writes
    behind the resume), and the resume is sharded as the run was."""
    store = tmp_path / "crash.db"
    proc = start_run(store, "crash", shards)
    try:
        wait_for_done(store, proc, at_least=16)
        children = children_of(proc.pid) if sys.platform == "linux" else []
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    if shards > 1 and sys.platform == "linux":
        assert len(children) >= shards  # the shards (and multiprocessing's resource tracker)
        deadline = time.monotonic() + 10
        while any(alive(c) for c in children) and time.monotonic() < deadline:
            time.sleep(0.02)  # polling a condition, not synchronising on time
        assert not any(alive(c) for c in children), "a shard outlived the engine"
    assert_consistent(store)
    unfinished = query(store, f"SELECT COUNT(*) FROM rollouts WHERE state NOT IN {RESULT}")[0][0]
    assert isinstance(unfinished, int) and unfinished > 0
    interrupted = query(
        store,
        "SELECT COUNT(*) FROM rollouts WHERE state IN"
        " ('starting', 'generating', 'acting', 'scoring')",
    )[0][0]
    resume_and_check(store, "crash")
    if interrupted:
        # the attempts cut by the kill are on record as such
        cut = query(
            store,
            "SELECT COUNT(*) FROM attempts WHERE state='cancelled' AND error LIKE 'interrupted%'",
        )[0][0]
        assert cut == interrupted


@pytest.mark.parametrize("shards", [1, 2])
def test_ctrl_c_mid_run_then_resume(tmp_path: Path, shards: int) -> None:
    store = tmp_path / "sigint.db"
    proc = start_run(store, "sigint", shards)
    try:
        wait_for_done(store, proc, at_least=16)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = stderr_of(store, "sigint")
    assert code == 130, stderr
    assert "resume" in stderr
    assert query(store, "SELECT status FROM runs") == [("interrupted",)]
    states = {r[0] for r in query(store, "SELECT state FROM rollouts")}
    assert states <= {"done", "cancelled", "queued"} and "cancelled" in states
    assert_consistent(store)
    resume_and_check(store, "sigint")
