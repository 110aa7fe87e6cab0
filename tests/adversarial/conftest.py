"""The adversarial suite's harness: a hostile agent's tool calls driven through
the real engine while a ticker measures the event loop and the host.

Every attack test runs its tool calls as one rollout (`hostile_rollout`) and
checks the same four things: the event loop kept ticking (`Watch.max_lag`),
the host was not exhausted (engine memory, what the attack left on disk), the
rollout ended with the attack as an error observation or as ``failed``, and
nothing was left behind (`assert_nothing_left`: the workspace is gone, no
process of the run is alive, the temp dir the run used is empty).
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from anyio.abc import Process

from engine import Agent, Engine, ScriptedPolicy, Task
from engine.environment import Environment
from engine.store import RolloutRecord
from tests.tools.conftest import needs_bwrap, needs_chromium

__all__ = ["needs_bwrap", "needs_chromium"]


LAG_BOUND = 2.0
"""Seconds the loop may lag while an attack runs. A blocked loop lags by the
attack's whole length (tens of seconds, or forever); a healthy one by
milliseconds, so a noisy shared machine stays far below this."""

ANSWER = "done"
Call = tuple[str, dict[str, Any]]
Step = Call | Callable[["Hostile"], Call | Awaitable[Call]]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass
class Watch:
    """What the ticker saw: the worst lag of the loop and the engine's memory."""

    period: float = 0.02
    max_lag: float = 0.0
    ticks: int = 0
    start_rss: int = 0
    peak_rss: int = 0
    peak_tree_rss: int = 0  # the engine and every process under it

    @property
    def rss_growth(self) -> int:
        return self.peak_rss - self.start_rss


def tree_rss(proc: psutil.Process) -> int:
    total = proc.memory_info().rss
    for child in proc.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            continue
    return total


@asynccontextmanager
async def watch_loop(period: float = 0.02) -> AsyncIterator[Watch]:
    """Tick every ``period`` seconds on this loop, recording how late each tick is."""
    me = psutil.Process()
    watch = Watch(period, start_rss=me.memory_info().rss)
    watch.peak_rss = watch.start_rss

    async def tick() -> None:
        while True:
            before = time.monotonic()
            await anyio.sleep(period)
            watch.max_lag = max(watch.max_lag, time.monotonic() - before - period)
            watch.ticks += 1
            if watch.ticks % 5 == 0:
                watch.peak_rss = max(watch.peak_rss, me.memory_info().rss)
                watch.peak_tree_rss = max(watch.peak_tree_rss, tree_rss(me))

    async with anyio.create_task_group() as tg:
        tg.start_soon(tick)
        try:
            yield watch
        finally:
            tg.cancel_scope.cancel()


@dataclass
class Hostile:
    """One hostile rollout: its record, what every tool call answered, what was watched."""

    envs: list[Any] = field(default_factory=list)
    workspaces: list[Path] = field(default_factory=list)
    jail_uids: set[int] = field(default_factory=set)
    results: list[dict[str, Any]] = field(default_factory=list)
    rollout: RolloutRecord | None = None
    watch: Watch = field(default_factory=Watch)
    children_before: set[int] = field(default_factory=set)

    @property
    def env(self) -> Any:
        return self.envs[-1]

    @property
    def workspace(self) -> Path:
        return self.workspaces[-1]

    def result(self, tool: str, index: int = -1) -> dict[str, Any]:
        """The ``index``-th result of calls to ``tool``."""
        return [r for r in self.results if r["tool"] == tool][index]


def _note_env(h: Hostile) -> None:
    env = h.envs[-1] if h.envs else None
    ws = getattr(env, "workspace", None)
    if ws is not None and ws.path not in h.workspaces:
        h.workspaces.append(ws.path)
    for box in getattr(env, "toolboxes", []):
        jail = getattr(box, "jail", None)
        if jail is not None and jail.uid is not None:
            h.jail_uids.add(jail.uid)


async def hostile_rollout(store: Path, environment: Callable[[], Environment],
                          steps: Sequence[Step], *, step_timeout: float = 120.0,
                          attachments: Sequence[str] = ()) -> Hostile:
    """Drive ``steps`` (one tool call a turn) through a real engine, then answer.

    A step is ``(tool, arguments)`` or a function of the `Hostile` so far (to
    use the workspace path or the web server's URL) returning one."""
    h = Hostile(children_before={p.pid for p in psutil.Process().children(recursive=True)})

    def factory() -> Environment:
        env = environment()
        h.envs.append(env)
        return env

    turn = 0

    async def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        nonlocal turn
        _note_env(h)
        if messages[-1]["role"] == "tool":
            h.results[-1]["content"] = messages[-1]["content"]
        if turn >= len(steps):
            return f"<answer>{ANSWER}</answer>"
        step = steps[turn]
        made = step(h) if callable(step) else step
        name, arguments = await made if inspect.isawaitable(made) else made
        turn += 1
        h.results.append({"tool": name, "arguments": arguments})
        return {"tool_calls": [{"name": name, "arguments": arguments}]}

    agent = Agent(ScriptedPolicy(handler), max_turns=len(steps) + 1)
    task = Task("hostile", "Do as you are told.", ANSWER, tuple(attachments))
    async with watch_loop() as w, Engine(store=store, progress=False, max_attempts=1,
                                         step_timeout=step_timeout) as engine:
        run = await engine.run([task], agent, environment=factory)
        [h.rollout] = await run.rollouts()
        flags = [m.payload.get("is_error") for m in await run.messages(h.rollout.id)
                 if m.category == "tool_result"]
    for result, is_error in zip(h.results, flags, strict=False):
        result["is_error"] = bool(is_error)
    h.watch = w
    _report(h)
    return h


def _report(h: Hostile) -> None:
    """With DRILLYARD_ADVERSARIAL_REPORT=FILE, append what was watched (one JSON line)."""
    target = os.environ.get("DRILLYARD_ADVERSARIAL_REPORT")
    if not target:
        return
    line = {"test": os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0],
            "max_lag_s": round(h.watch.max_lag, 3), "rss_growth_mib": h.watch.rss_growth >> 20,
            "tree_growth_mib": max(0, h.watch.peak_tree_rss - h.watch.start_rss) >> 20,
            "state": h.rollout.state if h.rollout else None,
            "errors": [r["tool"] for r in h.results if r.get("is_error")]}
    with open(target, "a") as out:
        out.write(json.dumps(line) + "\n")


def assert_nothing_left(h: Hostile, tmp: Path | None = None) -> None:
    """The workspace is gone, no process of the rollout lives on, the temp dir is empty."""
    for ws in h.workspaces:
        assert not os.path.lexists(ws), f"workspace {ws} survived its rollout"
    for env in h.envs:
        assert getattr(env, "workspace", None) is None
    new = [p for p in psutil.Process().children(recursive=True)
           if p.pid not in h.children_before]
    _, alive = psutil.wait_procs(new, timeout=10)
    alive = [p for p in alive if _status(p) not in (psutil.STATUS_ZOMBIE, None)]
    assert not alive, f"processes outlived the rollout: {[_describe(p) for p in alive]}"
    from tools.sandbox import _pids_of

    for uid in h.jail_uids:
        assert _pids_of(uid) == [], f"processes of the jail's uid {uid} outlived the rollout"
    if tmp is not None:
        left = sorted(os.listdir(tmp))
        assert not left, f"left in the temp dir: {left[:10]}"


def _status(p: psutil.Process) -> str | None:
    try:
        return str(p.status())
    except psutil.Error:
        return None


def _describe(p: psutil.Process) -> str:
    try:
        return f"{p.pid} {' '.join(p.cmdline())[:120]}"
    except psutil.Error:
        return str(p.pid)


def assert_responsive(h: Hostile, bound: float = LAG_BOUND) -> None:
    assert h.watch.ticks > 0
    assert h.watch.max_lag < bound, (
        f"the event loop stalled for {h.watch.max_lag:.2f} s while the attack ran")


def assert_contained(h: Hostile, attack: str, index: int = -1) -> None:
    """The attack's call (the ``index``-th call of that tool) came back as an error
    observation; the rollout still ended as the agent's result (done or failed),
    not as an infrastructure error."""
    assert h.rollout is not None
    assert h.rollout.state in ("done", "failed"), (h.rollout.state, h.rollout.error)
    assert h.result(attack, index)["is_error"], h.result(attack, index)


@pytest.fixture
def run_tmp(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh temp dir (reachable by a jail's uid) that the run's workspaces,
    parser files and downloads go to; the suite checks it is empty afterwards."""
    path = Path(tempfile.mkdtemp(prefix="drillyard-adv-"))
    path.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(path))
    yield path
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False)


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "trace.db"


@contextmanager
def unjam_fifo(path_of: Callable[[], Path | None], after: float = 15.0) -> Iterator[list[str]]:
    """A safety net for a FIFO attack on an engine that blocks on it: after
    ``after`` seconds, open the FIFO for reading (and drain it) so the blocked
    open returns and the test fails on its lag instead of hanging forever."""
    fired: list[str] = []
    stop = threading.Event()

    def unjam() -> None:
        if stop.wait(after):
            return
        path = path_of()
        if path is None or not path.exists():
            return
        fired.append(str(path))
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            while not stop.wait(0.05):
                try:
                    if os.read(fd, 1 << 16) == b"":
                        continue
                except BlockingIOError:
                    continue
        finally:
            os.close(fd)

    thread = threading.Thread(target=unjam, daemon=True)
    thread.start()
    try:
        yield fired
    finally:
        stop.set()
        thread.join()


def python_in_jail(code: str) -> tuple[str, dict[str, Any]]:
    return ("run_python", {"code": code})


def shell(command: str) -> tuple[str, dict[str, Any]]:
    return ("run_shell", {"command": command})


RACER = """
import os, sys
d, name, links = sys.argv[1], sys.argv[2], sys.argv[3:]
i = 0
while True:
    i += 1
    tmp = os.path.join(d, f".swap{i}")
    kind = i % (len(links) + 2)
    try:
        if kind == 0:
            with open(tmp, "w") as f:
                f.write("harmless text")
        elif kind == 1:
            os.mkfifo(tmp)
        else:
            os.symlink(links[kind - 2], tmp)
        os.replace(tmp, os.path.join(d, name))
    except OSError:
        pass
    if i == 100:
        print("racing", flush=True)
"""


async def start_racer(directory: Path, name: str, targets: Sequence[str]) -> Process:
    """A process that keeps swapping ``directory/name`` between a regular file, a
    FIFO and a symlink to each of ``targets`` (atomic renames), as code racing
    the engine's reads would; returns once it is racing."""
    proc = await anyio.open_process([sys.executable, "-c", RACER, str(directory), name,
                                     *targets])
    assert proc.stdout is not None
    with anyio.fail_after(30):
        assert b"racing" in await proc.stdout.receive()
    return proc
