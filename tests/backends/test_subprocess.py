"""The subprocess pool: start, place, restart, health deadline, and no orphans."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from backends.subprocess import SubprocessBackend
from backends.testenvs import PLUGIN
from engine import Agent, Engine, EnvSpec, Task
from engine.envs.arithmetic import arithmetic_tasks
from engine.policy.scripted import ScriptedPolicy
from tests.backends.conftest import eventually, pid_alive
from tests.support.scripted import calculator_then_answer

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]


def pool(**options: Any) -> SubprocessBackend:
    options.setdefault("plugins", [PLUGIN])
    return SubprocessBackend(**options)


@pytest.mark.parametrize("start_method", ["fork", "exec"])
async def test_start_places_and_stops_every_process(make_engine: EngineFactory,
                                                    start_method: str) -> None:
    backend = pool(workers=2, slots_per_worker=2, start_method=start_method)
    async with make_engine(backend=backend) as engine:
        pids = backend.pids
        assert len(pids) == 2 and all(pid_alive(p) for p in pids) and backend.slots == 4
        for pid in pids:  # loopback only
            addrs = {c.laddr.ip for c in psutil.Process(pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN}
            assert addrs == {"127.0.0.1"}
            parent = psutil.Process(pid).parent()
            assert parent is not None
            if start_method == "fork":  # the fork server's child, the fork server ours
                assert parent.ppid() == os.getpid() and "backends.zygote" in parent.cmdline()
            else:
                assert parent.pid == os.getpid()
        run = await engine.run(arithmetic_tasks(4), Agent(calculator_then_answer()),
                               environment="probe", samples=2, scorer="arithmetic")
        rollouts = await run.rollouts()
        assert {r.state for r in rollouts} == {"done"}
        used = {r.worker for r in rollouts}
        assert used <= {w.name for w in backend.workers.values()} and len(used) == 2
    assert len(backend.spawned) == (3 if start_method == "fork" else 2)
    assert not any(pid_alive(p) for p in backend.spawned)
    assert backend.processes == {}


@pytest.mark.parametrize("start_method", ["fork", "exec"])
async def test_no_orphans_after_an_exception(make_engine: EngineFactory,
                                             start_method: str) -> None:
    backend = pool(workers=2, slots_per_worker=1, start_method=start_method)
    with pytest.raises(RuntimeError, match="the app failed"):
        async with make_engine(backend=backend):
            assert len(backend.pids) == 2
            raise RuntimeError("the app failed")
    assert len(backend.spawned) == (3 if start_method == "fork" else 2)
    assert not any(pid_alive(p) for p in backend.spawned)


async def test_no_orphans_after_cancellation_mid_run(make_engine: EngineFactory) -> None:
    backend = pool(workers=2, slots_per_worker=2)
    hang = ScriptedPolicy(lambda m, t: {"tool_calls": [{"name": "hang", "arguments": {}}]})
    with anyio.move_on_after(3) as scope:
        async with make_engine(backend=backend, step_timeout=60) as engine:
            await engine.run(arithmetic_tasks(4), Agent(hang), environment="probe",
                             scorer="arithmetic")
    assert scope.cancelled_caught
    assert len(backend.spawned) == 3
    assert not any(pid_alive(p) for p in backend.spawned)


@pytest.mark.parametrize("start_method", ["fork", "exec"])
async def test_no_orphans_when_cancelled_during_start(start_method: str) -> None:
    for delay in (0.0, 0.05, 0.2, 0.4):
        backend = pool(workers=2, slots_per_worker=1, start_method=start_method)
        with anyio.move_on_after(delay):
            await backend.start()
            await anyio.sleep_forever()
        await backend.close()
        assert not any(pid_alive(p) for p in backend.spawned), delay


async def test_environments_are_released_when_a_run_is_cancelled(
        make_engine: EngineFactory) -> None:
    backend = pool(workers=2, slots_per_worker=2)
    hang = ScriptedPolicy(lambda m, t: {"tool_calls": [{"name": "hang", "arguments": {}}]})
    async with make_engine(backend=backend, step_timeout=60) as engine:
        async def live() -> int:
            return sum([(await w.health(5))["live"] for w in backend.workers.values()])

        async with anyio.create_task_group() as tg:
            async def run() -> None:
                await engine.run(arithmetic_tasks(4), Agent(hang), environment="probe",
                                 scorer="arithmetic", run_id="r")
            tg.start_soon(run)
            async def all_live() -> bool:  # leased first, then made in the worker
                return await live() == 4

            await eventually(all_live, 20, "every slot's environment live in its worker")
            assert sum(w.used for w in backend.workers.values()) == 4
            tg.cancel_scope.cancel()
        assert await live() == 0  # every environment closed in the workers, none leaked
        assert await engine.open_run("r").counts() == {"cancelled": 4}


async def test_a_draining_worker_gets_no_new_environments_then_is_replaced() -> None:
    from engine import EnvSpec as Spec

    backend = pool(workers=2, slots_per_worker=2, health_interval=0.1)
    async with backend:
        first = await backend.acquire(Spec("probe"))
        victim = next(w for w in backend.workers.values() if w.name == first.worker)
        pid = int(victim.name.split("/pid")[1].split("@")[0])
        os.kill(pid, signal.SIGTERM)
        await eventually(lambda: not victim.accepting, 10, "the pool to see the drain")
        others = [await backend.acquire(Spec("probe")) for _ in range(2)]
        assert all(s.worker != victim.name for s in others)
        assert pid_alive(pid)  # it waits for its live environment
        await backend.release(first)
        await eventually(lambda: not pid_alive(pid) and len(backend.workers) == 2, 20,
                         "drained worker gone and replaced")
        for slot in others:
            await backend.release(slot)
    assert not any(pid_alive(p) for p in backend.spawned)


async def test_a_killed_worker_is_replaced() -> None:
    backend = pool(workers=2, slots_per_worker=1, health_interval=0.2)
    async with backend:
        victim = backend.pids[0]
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: backend.deaths == 1 and len(backend.workers) == 2,
                         20, "the death seen and a replacement worker")  # not only exited
        assert victim not in backend.pids
        assert len(backend.spawned) == 4  # zygote, 2 + 1 workers
        assert not pid_alive(victim)
    assert not any(pid_alive(p) for p in backend.spawned)


async def test_a_killed_fork_server_is_replaced_with_its_workers() -> None:
    backend = pool(workers=2, slots_per_worker=1, health_interval=0.2)
    async with backend:
        zygote, workers = backend.spawned[0], backend.pids
        os.kill(zygote, signal.SIGKILL)
        await eventually(lambda: backend.deaths == 2 and len(backend.workers) == 2, 20,
                         "both deaths seen and new fork server and workers")
        assert not set(workers) & set(backend.pids)
        await eventually(lambda: not any(pid_alive(p) for p in [zygote, *workers]), 10,
                         "the old workers reaped (their parent, the fork server, is gone)")
    assert not any(pid_alive(p) for p in backend.spawned)


@pytest.mark.parametrize("start_method", ["fork", "exec"])
async def test_what_environments_print_goes_to_the_log(
        make_engine: EngineFactory, start_method: str) -> None:
    """Plug-ins and environments that print (half a megabyte, a line without its
    newline) neither block their worker on a pipe nobody reads nor garble the
    startup and fork-server events: workers still start and are replaced."""
    def shout_then_answer(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "tool":
            return "3"
        return {"tool_calls": [{"name": "shout", "arguments": {}}]}

    backend = pool(workers=2, slots_per_worker=2, health_interval=0.2,
                   start_method=start_method,
                   plugins=[PLUGIN, "tests.backends.chatty_plugin"])  # prints on import
    async with make_engine(backend=backend, step_timeout=30) as engine:
        run = await engine.run(arithmetic_tasks(4), Agent(ScriptedPolicy(shout_then_answer)),
                               environment="probe", scorer="arithmetic")
        assert await run.counts() == {"done": 4}
        victim = backend.pids[0]
        os.kill(victim, signal.SIGKILL)
        await eventually(lambda: backend.deaths == 1 and len(backend.workers) == 2,
                         20, "the death seen and a replacement worker")
        run = await engine.run(arithmetic_tasks(4), Agent(calculator_then_answer()),
                               environment="probe", scorer="arithmetic")
        assert await run.counts() == {"done": 4}
        assert backend.deaths == 1
        assert backend.log_path is not None
        log = backend.log_path.read_text()
        assert "loading weights" in log and "chatty plug-in" in log
    assert not any(pid_alive(p) for p in backend.spawned)


async def test_a_worker_that_fails_to_start_is_a_clear_error(tmp_path: Path) -> None:
    backend = pool(workers=1, plugins=["no_such_plugin_module"], start_timeout=30)
    with pytest.raises(Exception, match=r"did not start.*no_such_plugin_module"):
        await backend.start()
    assert not any(pid_alive(p) for p in backend.spawned)


async def test_factories_cannot_cross_processes(make_engine: EngineFactory) -> None:
    from engine.envs.arithmetic import ArithmeticEnvironment

    backend = pool(workers=1, slots_per_worker=1)
    async with make_engine(backend=backend) as engine:
        run = await engine.run(arithmetic_tasks(1), Agent(calculator_then_answer()),
                               environment=ArithmeticEnvironment, scorer="arithmetic")
        (r,) = await run.rollouts()
    assert r.state == "error" and r.attempt == 1
    assert "ConfigError" in (r.error or "") and "name a registered environment" in (r.error or "")


async def test_backpressure_never_exceeds_the_slots(make_engine: EngineFactory) -> None:
    backend = pool(workers=2, slots_per_worker=2)
    peak = {"used": 0}

    async def sample() -> None:
        while True:
            peak["used"] = max(peak["used"], sum(w.used for w in backend.workers.values()))
            await anyio.sleep(0.002)

    async with make_engine(backend=backend, max_rollouts=16) as engine:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sample)
            run = await engine.run(arithmetic_tasks(6), Agent(calculator_then_answer()),
                                   environment=EnvSpec("probe", {"tool_delay": 0.05}),
                                   samples=2, scorer="arithmetic")
            tg.cancel_scope.cancel()
        assert await run.counts() == {"done": 12}
    assert peak["used"] == 4  # full, never more (a worker would have answered 503)


async def test_a_worker_that_stops_answering_is_declared_dead(
        make_engine: EngineFactory) -> None:
    backend = pool(workers=1, slots_per_worker=1, health_interval=0.2, health_timeout=0.5)
    entered = anyio.Event()
    attempts = {"n": 0}

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "user":
            attempts["n"] += 1
            if attempts["n"] == 1:  # a call that is still in flight when the worker stops
                entered.set()
                return {"tool_calls": [{"name": "hang", "arguments": {}}]}
        return calculator_then_answer().handler(messages, tools)

    async with make_engine(backend=backend, step_timeout=60, max_attempts=3) as engine:
        stopped: list[int] = []

        async def freeze() -> None:
            await entered.wait()
            pid = backend.pids[0]
            os.kill(pid, signal.SIGSTOP)  # alive, but answers nothing
            stopped.append(pid)

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            tg.start_soon(freeze)
            run = await engine.run([Task("t", "What is 2+2?", "4")], Agent(
                ScriptedPolicy(handler)), environment="probe", scorer="numeric")
        elapsed = time.monotonic() - started
        (r,) = await run.rollouts()
        attempts_rec = await engine.store.attempts(r.id)
    assert r.state == "done" and r.reward == 1.0
    assert [a.state for a in attempts_rec] == ["error", "done"]
    assert "missed its health deadline" in (attempts_rec[0].error or "")
    assert f"pid{stopped[0]}" in (attempts_rec[0].worker or "")
    assert attempts_rec[1].worker != attempts_rec[0].worker
    assert elapsed < 30  # the health deadline, not the 60 s step deadline, ended it
    assert not any(pid_alive(p) for p in backend.spawned)
