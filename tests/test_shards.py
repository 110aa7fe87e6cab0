"""Sharded runs (`engine.shards`): one run driven by several real engine processes
on one store, with nothing lost when a shard dies and every bad setup refused
before a rollout starts."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import pytest

from backends.inprocess import InProcessBackend
from engine import Agent, Engine, registry
from engine.agent import AppAgent
from engine.environment import EnvSpec, Observation
from engine.envs.arithmetic import ArithmeticEnvironment, CalculatorOracle, arithmetic_tasks
from engine.errors import ConfigError, ShardError
from engine.tasks import TaskView

pytestmark = pytest.mark.anyio

PARENT_ENV = "DRILLYARD_TEST_SHARDS_PARENT"


class KillOnceEnvironment(ArithmeticEnvironment):
    """Arithmetic, but the process that first resets ``kill_task`` dies of SIGKILL
    (the marker file says it has happened: later resets of it are ordinary)."""

    def __init__(self, marker: str, kill_task: str) -> None:
        super().__init__()
        self.marker, self.kill_task = Path(marker), kill_task

    async def reset(self, task: TaskView) -> Observation:
        if task.id == self.kill_task and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)
        return await super().reset(task)


class ParentOnlyBackend(InProcessBackend):
    """Starts in the test's own process only: a shard cannot start it."""

    name = "test.parent-only"

    async def start(self) -> None:
        if str(os.getpid()) != os.environ.get(PARENT_ENV):
            raise RuntimeError("this backend starts in the parent process only")
        await super().start()


class ParentOnlyOracle(CalculatorOracle):
    """A policy that cannot be rebuilt in a shard process."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        if str(os.getpid()) != os.environ.get(PARENT_ENV):
            raise RuntimeError("this policy cannot be rebuilt in a shard")
        self.__dict__.update(state)


class LoggedBackend(InProcessBackend):
    """In-process, and each process that starts it says so in ``log``."""

    name = "test.logged"

    def __init__(self, log: str) -> None:
        super().__init__()
        self.log = Path(log)

    async def start(self) -> None:
        with self.log.open("a") as f:
            f.write(f"{os.getpid()}\n")
        await super().start()


def started_in(log: Path) -> list[int]:
    return [int(x) for x in log.read_text().split()] if log.exists() else []


registry.register("environments", "test.kill-once", KillOnceEnvironment)
registry.register("backends", "test.logged", LoggedBackend)
registry.register("backends", "test.parent-only", ParentOnlyBackend)


def agent(latency: float = 0.0) -> Agent:
    return Agent(CalculatorOracle(latency=latency), max_turns=4)


async def test_a_sharded_run_records_what_one_process_records(tmp_path: Path) -> None:
    tasks = arithmetic_tasks(12, seed=3)
    results = {}
    log = tmp_path / "backends"
    for shards in (1, 3):
        log.unlink(missing_ok=True)
        async with Engine(tmp_path / f"s{shards}.db", "test.logged",
                          backend_options={"log": str(log)}, shards=shards, max_rollouts=9,
                          max_model_requests=9, progress=False) as engine:  # fmt: skip
            run = await engine.run(tasks, agent(), environment="arithmetic", samples=3,
                                   scorer="arithmetic")  # fmt: skip
            rollouts = await run.rollouts()
            results[shards] = {
                "counts": await run.counts(),
                "pass": (await run.pass_at_k([1, 3])).overall,
                "messages": await engine.store.count_messages(run.id),
                "attempts": sorted([len(await engine.store.attempts(r.id)) for r in rollouts]),
                "status": (await engine.store.run(run.id)).status,
            }
            reports = engine.last_shards
    assert results[3] == results[1]
    assert results[3]["counts"] == {"done": 36}
    assert results[3]["status"] == "finished"
    assert len(reports) == 3 and all(r.reported and r.error is None for r in reports)
    assert sum(r.rollouts for r in reports) == 36 and min(r.rollouts for r in reports) > 0
    pids = {r.pid for r in reports}
    assert len(pids) == 3 and os.getpid() not in pids
    # each shard started its own backend; the engine's own stayed unstarted (unneeded)
    assert sorted(started_in(log)) == sorted(pids)


async def test_a_shard_killed_mid_run_loses_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "killed"
    tasks = arithmetic_tasks(10, seed=5)
    env = EnvSpec("test.kill-once", {"marker": str(marker), "kill_task": tasks[4].id})
    log = tmp_path / "backends"
    async with Engine(tmp_path / "t.db", "test.logged", backend_options={"log": str(log)},
                      shards=2, max_rollouts=4, max_model_requests=4,
                      progress=False) as engine:  # fmt: skip
        run = await engine.run(tasks, agent(0.01), environment=env, samples=2,
                               scorer="arithmetic")  # fmt: skip
        dead = [r for r in engine.last_shards if not r.reported]
        assert [r.pid for r in dead] == [int(marker.read_text())]
        assert dead[0].exitcode == -signal.SIGKILL
        assert await run.counts() == {"done": 20}
        assert (await engine.store.run(run.id)).status == "finished"
        assert os.getpid() in started_in(log)  # the engine's own backend, for the leftovers
        for r in await run.rollouts():
            seqs = [m.seq for m in await run.messages(r.id)]
            assert seqs == sorted(set(seqs)), f"{r.id}: a message recorded twice"
        # the dead shard is started again for the next run
        again = await engine.run(tasks, agent(), environment="arithmetic", scorer="arithmetic")
        assert await again.counts() == {"done": 10}
        assert all(r.reported for r in engine.last_shards)
        assert os.getpid() not in {r.pid for r in engine.last_shards}


async def test_runs_started_together_on_a_sharded_engine_each_finish(tmp_path: Path) -> None:
    async with Engine(tmp_path / "two.db", shards=2, max_rollouts=4, max_model_requests=4,
                      progress=False) as engine:  # fmt: skip
        ids = ["a", "b"]
        async with anyio.create_task_group() as tg:
            for run_id, seed in zip(ids, (1, 2), strict=True):
                tg.start_soon(lambda r=run_id, s=seed: engine.run(
                    arithmetic_tasks(8, seed=s), agent(0.01), environment="arithmetic",
                    scorer="arithmetic", run_id=r, samples=2))  # fmt: skip
        for run_id in ids:
            assert await engine.open_run(run_id).counts() == {"done": 16}
            assert (await engine.store.run(run_id)).status == "finished"


async def test_a_cancelled_sharded_run_stops_its_shards_and_resumes(tmp_path: Path) -> None:
    tasks = arithmetic_tasks(40, seed=7)
    async with Engine(tmp_path / "c.db", shards=2, max_rollouts=4, max_model_requests=4,
                      progress=False) as engine:  # fmt: skip
        with anyio.move_on_after(2.0):  # the run takes ~10 s: stopped part way
            await engine.run(tasks, agent(0.2), environment="arithmetic", run_id="c",
                             scorer="arithmetic")  # fmt: skip
        assert multiprocessing.active_children() == []
        assert (await engine.store.run("c")).status == "interrupted"
        left = len(await engine.store.unfinished("c"))
        assert left > 0
        run = await engine.resume("c", agent())
        assert await run.counts() == {"done": 40}
        assert sum(r.rollouts for r in engine.last_shards) == left
    assert multiprocessing.active_children() == []


async def test_a_shard_that_cannot_start_fails_the_engine_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PARENT_ENV, str(os.getpid()))
    engine = Engine(tmp_path / "f.db", backend="test.parent-only", shards=2, max_rollouts=2,
                    max_model_requests=2, progress=False)  # fmt: skip
    with pytest.raises(ShardError, match="starts in the parent process only"):
        async with engine:
            pass
    assert multiprocessing.active_children() == []
    async with Engine(tmp_path / "f.db", backend="test.parent-only", progress=False) as one:
        assert await one.store.runs() == []


async def test_a_shard_that_fails_raises_its_error_and_the_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PARENT_ENV, str(os.getpid()))
    tasks = arithmetic_tasks(6, seed=9)
    async with Engine(tmp_path / "e.db", shards=2, max_rollouts=4, max_model_requests=4,
                      progress=False) as engine:  # fmt: skip
        with pytest.raises(ShardError, match="cannot be rebuilt in a shard") as err:
            await engine.run(tasks, Agent(ParentOnlyOracle(), max_turns=4), run_id="e",
                             environment="arithmetic", scorer="arithmetic")  # fmt: skip
        assert "Traceback" in err.value.detail
        assert (await engine.store.run("e")).status == "interrupted"
        assert await (engine.open_run("e")).counts() == {"queued": 6}
        # the shards are still there for the fixed run
        run = await engine.resume("e", agent())
        assert await run.counts() == {"done": 6}
        assert all(r.reported and r.error is None for r in engine.last_shards)


async def _local_solve(task: Any, ctx: Any) -> str:
    return "0"


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({"shards": 0}, "shards"),
        ({"shards": 2, "backend": InProcessBackend()}, "backend"),
        ({"shards": 4, "max_rollouts": 3}, "max_rollouts"),
        ({"shards": 4, "max_model_requests": 2}, "max_model_requests"),
    ],
)
def test_a_bad_shard_setup_is_refused_when_the_engine_is_made(
    tmp_path: Path, kwargs: dict[str, Any], where: str
) -> None:
    with pytest.raises(ConfigError) as err:
        Engine(tmp_path / "x.db", **kwargs)
    assert err.value.where == where and err.value.fix


async def test_what_cannot_reach_a_shard_is_refused_before_the_run(tmp_path: Path) -> None:
    async def solve(task: Any, ctx: Any) -> str:  # local: it cannot be pickled
        return "0"

    async with Engine(tmp_path / "p.db", shards=2, max_rollouts=2, max_model_requests=2,
                      progress=False) as engine:  # fmt: skip
        with pytest.raises(ConfigError) as err:
            await engine.run(arithmetic_tasks(2), AppAgent(solve, CalculatorOracle()),
                             environment="arithmetic")  # fmt: skip
        assert err.value.where == "agent" and "module level" in (err.value.fix or "")
        with pytest.raises(ConfigError, match="live run"):
            await engine.live_run(agent(), environment="arithmetic")
        assert await engine.store.runs() == []
        # a module-level solve function travels
        run = await engine.run(arithmetic_tasks(2), AppAgent(_local_solve, CalculatorOracle()),
                               environment="arithmetic", scorer="arithmetic")  # fmt: skip
        assert sum((await run.counts()).values()) == 2
