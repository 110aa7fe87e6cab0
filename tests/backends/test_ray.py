"""The Ray backend on a real Ray cluster (a head and two worker nodes on loopback):
placement by resources, actors and nodes that die, nodes that join, clear errors,
a local cluster started by the engine alone, and no processes left behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import psutil
import pytest

from backends.ray import LOCAL_IP, RayBackend
from backends.ray_actor import ActorWorker
from engine import Agent, Engine
from engine.envs.arithmetic import arithmetic_tasks
from engine.errors import ConfigError, InfraError
from engine.policy.scripted import ScriptedPolicy
from engine.store import AttemptRecord
from tests.backends.conftest import eventually, ray_options
from tests.backends.fake_k8s import REPO
from tests.backends.ray_cluster import LOOPBACK as RAY_IP
from tests.backends.ray_cluster import RayTestCluster
from tests.support.scripted import calculator_then_answer

pytestmark = pytest.mark.anyio
pytest.importorskip("ray", reason="needs the ray extra")

EngineFactory = Callable[..., Engine]


def actors(backend: RayBackend) -> list[ActorWorker]:
    return [w for w in backend.workers.values() if isinstance(w, ActorWorker)]


def actor_processes(cluster: RayTestCluster) -> list[psutil.Process]:
    found = []
    for proc in cluster.processes():
        try:
            if proc.name().startswith("ray::EnvHostActor"):
                found.append(proc)
        except psutil.Error:
            pass
    return found


async def no_actor_processes(cluster: RayTestCluster) -> None:
    await eventually(lambda: actor_processes(cluster) == [], 30, "every actor process gone")


async def fault_mid_rollout(engine: Engine, backend: RayBackend,
                            fault: Callable[[ActorWorker], Awaitable[None]]
                            ) -> tuple[ActorWorker, list[AttemptRecord]]:
    """One rollout whose first attempt hangs in a tool; ``fault`` strikes the actor
    hosting it meanwhile. Returns that actor and the rollout's attempts."""
    entered, calls, struck = anyio.Event(), {"n": 0}, []

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "user":
            calls["n"] += 1
            if calls["n"] == 1:
                entered.set()
                return {"tool_calls": [{"name": "hang", "arguments": {}}]}
        return calculator_then_answer().handler(messages, tools)

    async def strike() -> None:
        await entered.wait()
        await eventually(lambda: any(w.used for w in actors(backend)), 10, "placed")
        (worker,) = [w for w in actors(backend) if w.used]
        struck.append(worker)
        await fault(worker)

    async with anyio.create_task_group() as tg:
        tg.start_soon(strike)
        run = await engine.run(arithmetic_tasks(1), Agent(ScriptedPolicy(handler)),
                               environment="probe", scorer="arithmetic")
    (r,) = await run.rollouts()
    assert r.state == "done"
    return struck[0], await engine.store.attempts(r.id)


def signal_actor(sig: int) -> Callable[[ActorWorker], Awaitable[None]]:
    async def send(worker: ActorWorker) -> None:
        os.kill(worker.pid, sig)

    return send


async def test_actors_spread_over_nodes_and_follow_custom_resources(
        ray_cluster: RayTestCluster, make_engine: EngineFactory) -> None:
    spread = RayBackend(**ray_options(ray_cluster))
    async with make_engine(backend=spread) as engine:
        plain = {n.node_id for n in ray_cluster.nodes}
        assert {w.node_id for w in actors(spread)} == plain  # one actor on each node
        run = await engine.run(arithmetic_tasks(4), Agent(calculator_then_answer()),
                               environment="probe", samples=2, scorer="arithmetic")
        used = {r.worker for r in await run.rollouts()}
        assert used == set(spread.workers) and await run.counts() == {"done": 8}
    browser = await anyio.to_thread.run_sync(lambda: ray_cluster.add_node(browser=2))
    try:
        pinned = RayBackend(**ray_options(ray_cluster, resources={"browser": 1},
                                          num_cpus=0.5, memory=64 * 2**20))
        async with make_engine(backend=pinned) as engine:
            assert {w.node_id for w in actors(pinned)} == {browser.node_id}
            for w in actors(pinned):
                assert w.resources["browser"] == 1 and w.resources["CPU"] == 0.5
                assert w.resources["memory"] == 64 * 2**20
                assert f"@node-{browser.node_id[:8]}:{RAY_IP}" in w.name
            run = await engine.run(arithmetic_tasks(2), Agent(calculator_then_answer()),
                                   environment="probe", scorer="arithmetic")
            assert {(r.worker or "").split("@")[1] for r in await run.rollouts()} == {
                f"node-{browser.node_id[:8]}:{RAY_IP}"}
    finally:
        await anyio.to_thread.run_sync(ray_cluster.ensure_workers)
    await no_actor_processes(ray_cluster)


async def test_what_no_node_offers_is_refused_before_any_rollout(
        ray_cluster: RayTestCluster, make_engine: EngineFactory) -> None:
    backend = RayBackend(**ray_options(ray_cluster, resources={"tpu_pod": 1}, num_cpus=8))
    with pytest.raises(ConfigError) as info:
        async with make_engine(backend=backend):
            pass
    text = str(info.value)
    assert "no node of the cluster can host an actor asking for CPU=8, tpu_pod=1" in text
    assert "short of: CPU, tpu_pod" in text and "CPU=2" in text  # what the nodes offer
    assert "ray start" in text and "require_feasible=False" in text
    assert backend.created == []  # nothing was started


async def test_a_wrong_cluster_or_bad_options_are_clear_errors(
        ray_cluster: RayTestCluster) -> None:
    with pytest.raises(ConfigError, match=f"already connected to the Ray cluster at "
                                          f"{ray_cluster.address}, not 127.0.0.99:6379"):
        await RayBackend(**ray_options(ray_cluster, address="127.0.0.99:6379")).start()
    with pytest.raises(ConfigError, match="min_actors must be between 1 and actors"):
        RayBackend(actors=2, min_actors=3)
    with pytest.raises(ConfigError, match="unknown scheduling_strategy 'PACKED'"):
        RayBackend(scheduling_strategy="PACKED")
    with pytest.raises(ConfigError, match="resources must map names to amounts"):
        RayBackend(resources={"browser": -1})


async def test_actors_that_cannot_start_are_a_clear_error(ray_cluster: RayTestCluster) -> None:
    backend = RayBackend(**ray_options(ray_cluster, actors=1, max_start_failures=2,
                                       plugins=["no_such_plugin_module"]))
    with pytest.raises(InfraError, match=r"2 actors in a row died before they were up.*"
                                         r"No module named 'no_such_plugin_module'"):
        await backend.start()
    assert len(backend.created) == 2 and backend.workers == {}
    await no_actor_processes(ray_cluster)


async def test_a_tool_that_kills_its_actor_is_retried_on_another(
        ray_cluster: RayTestCluster, make_engine: EngineFactory) -> None:
    backend = RayBackend(**ray_options(ray_cluster, slots_per_actor=1))
    crashed = {"done": False}

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "user" and not crashed["done"]:
            crashed["done"] = True
            return {"tool_calls": [{"name": "crash", "arguments": {}}]}
        return calculator_then_answer().handler(messages, tools)

    async with make_engine(backend=backend, max_attempts=3) as engine:
        before = {w.actor_id for w in actors(backend)}
        run = await engine.run(arithmetic_tasks(1), Agent(ScriptedPolicy(handler)),
                               environment="probe", scorer="arithmetic")
        (r,) = await run.rollouts()
        attempts = await engine.store.attempts(r.id)
        assert r.state == "done" and [a.state for a in attempts] == ["error", "done"]
        error = attempts[0].error or ""
        assert error.startswith(f"EnvironmentLost: worker {attempts[0].worker} lost: "
                                "ActorDiedError: ")
        assert "worker process has died" in error
        assert attempts[1].worker != attempts[0].worker
        await eventually(lambda: len(backend.workers) == 2, 60, "a replacement actor")
        assert backend.deaths == 1 and backend.replacements >= 1  # a slow start may retry
        assert len({w.actor_id for w in actors(backend)} - before) == 1
    await no_actor_processes(ray_cluster)


async def test_an_actor_killed_mid_rollout_is_retried_on_another(
        ray_cluster: RayTestCluster, make_engine: EngineFactory) -> None:
    backend = RayBackend(**ray_options(ray_cluster, slots_per_actor=1))
    async with make_engine(backend=backend, step_timeout=60) as engine:
        killed, attempts = await fault_mid_rollout(engine, backend,
                                                   signal_actor(signal.SIGKILL))
    assert [a.state for a in attempts] == ["error", "done"]
    error = attempts[0].error or ""
    assert f"actor-{killed.actor_id[:8]}/pid{killed.pid}@node-{killed.node_id[:8]}" in error
    assert error.startswith("EnvironmentLost: worker ") and "ActorDiedError" in error
    assert killed.name not in (attempts[1].worker or "")
    await no_actor_processes(ray_cluster)


async def test_a_frozen_actor_misses_its_health_deadline_and_is_replaced(
        ray_cluster: RayTestCluster, make_engine: EngineFactory) -> None:
    backend = RayBackend(**ray_options(ray_cluster, slots_per_actor=1, health_interval=0.2,
                                       health_timeout=1.0))
    async with make_engine(backend=backend, step_timeout=60) as engine:
        # SIGSTOP: alive, but answers nothing
        frozen, attempts = await fault_mid_rollout(engine, backend,
                                                   signal_actor(signal.SIGSTOP))
        await eventually(lambda: len(backend.workers) == 2, 60, "a replacement actor")
    assert [a.state for a in attempts] == ["error", "done"]
    assert "missed its health deadline" in (attempts[0].error or "")
    assert frozen.name == attempts[0].worker != attempts[1].worker
    await eventually(lambda: not psutil.pid_exists(frozen.pid)
                     or psutil.Process(frozen.pid).status() == psutil.STATUS_ZOMBIE,
                     30, "the frozen actor killed")
    await no_actor_processes(ray_cluster)


async def test_a_node_added_while_running_gets_work(
        ray_cluster: RayTestCluster, make_engine: EngineFactory) -> None:
    # 2 nodes x 2 CPUs hold 4 one-CPU actors: the fifth waits for room
    backend = RayBackend(**ray_options(ray_cluster, actors=5, min_actors=4, slots_per_actor=1))
    try:
        async with make_engine(backend=backend) as engine:
            assert len(backend.workers) == 4 and backend.slots == 5
            node = await anyio.to_thread.run_sync(ray_cluster.add_node)
            await eventually(lambda: len(backend.workers) == 5, 60, "the fifth actor placed")
            (joined,) = [w for w in actors(backend) if w.node_id == node.node_id]
            run = await engine.run(arithmetic_tasks(10), Agent(calculator_then_answer()),
                                   environment="probe", scorer="arithmetic")
            assert await run.counts() == {"done": 10}
            assert joined.name in {r.worker for r in await run.rollouts()}
    finally:
        await anyio.to_thread.run_sync(ray_cluster.kill_node, node)
    await no_actor_processes(ray_cluster)


async def test_a_lost_node_takes_its_actors_and_the_attempts_go_elsewhere(
        ray_cluster: RayTestCluster, make_engine: EngineFactory) -> None:
    # four one-CPU actors fill both nodes: the ones lost with a node wait for a new node
    backend = RayBackend(**ray_options(ray_cluster, actors=4, slots_per_actor=1))

    async def kill_its_node(worker: ActorWorker) -> None:
        node = next(n for n in ray_cluster.nodes if n.node_id == worker.node_id)
        await anyio.to_thread.run_sync(ray_cluster.kill_node, node)

    try:
        async with make_engine(backend=backend, step_timeout=60) as engine:
            lost, attempts = await fault_mid_rollout(engine, backend, kill_its_node)
            assert [a.state for a in attempts] == ["error", "done"]
            # named: the actor and its node; why: what Ray said first (the actor unreachable,
            # or, once the cluster has noticed, its node dead)
            error = attempts[0].error or ""
            assert error.startswith(f"EnvironmentLost: worker {lost.name} lost: Actor")
            assert f"actor-{lost.actor_id[:8]}/" in error and f"@node-{lost.node_id[:8]}" in error
            assert lost.node_id[:8] not in (attempts[1].worker or "")
            # both actors of the lost node seen dead (the one not hosting the rollout by
            # its own death notice); the replacements wait for room ...
            await eventually(lambda: len(backend.workers) == 2, 30, "the node's actors dead")
            new = await anyio.to_thread.run_sync(ray_cluster.add_node)
            await eventually(lambda: len(backend.workers) == 4, 60, "replacements placed")
            assert [w.node_id for w in actors(backend)].count(new.node_id) == 2  # ... there
    finally:
        await anyio.to_thread.run_sync(ray_cluster.ensure_workers)
    await no_actor_processes(ray_cluster)


LOCAL = textwrap.dedent("""
    import asyncio, json, sys
    import psutil, ray
    import backends.testenvs  # registers "probe" here too
    from engine import Agent, Engine
    from engine.envs.arithmetic import arithmetic_tasks
    from tests.support.scripted import calculator_then_answer

    async def main():
        options = {"address": "local", "actors": 1, "slots_per_actor": 2,
                   "plugins": ["backends.testenvs"], "init_options": {"num_cpus": 1}}
        async with Engine(store=sys.argv[1], backend="ray", backend_options=options,
                          progress=False) as engine:
            gcs = ray.get_runtime_context().gcs_address
            during = [p.pid for p in psutil.Process().children(recursive=True)]
            run = await engine.run(arithmetic_tasks(3), Agent(calculator_then_answer()),
                                   environment="probe", samples=2, scorer="arithmetic")
            counts = await run.counts()
        after = psutil.Process().children(recursive=True)
        _, alive = psutil.wait_procs(after, timeout=15)
        print(json.dumps({"counts": counts, "gcs": gcs, "during": during,
                          "connected": ray.is_initialized(),
                          "left": [p.pid for p in alive]}))

    asyncio.run(main())
""")


def test_the_engine_alone_starts_and_stops_a_local_cluster(tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", LOCAL, str(tmp_path / "runs.db")], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=240, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["counts"] == {"done": 6}
    assert result["gcs"].startswith(f"{LOCAL_IP}:")  # a private cluster, on loopback
    assert len(result["during"]) >= 3  # GCS, raylet, the actor, ...
    assert result["left"] == [] and result["connected"] is False
    assert not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                   for p in result["during"])


def test_the_registry_names_it_and_a_missing_ray_is_a_clear_error() -> None:
    from engine.registry import resolve

    assert resolve("backends", "ray") is RayBackend
    script = ("import sys; sys.modules['ray'] = None\n"
              "import asyncio\nfrom backends.ray import LOCAL_IP, RayBackend\n"
              "try:\n    asyncio.run(RayBackend().start())\n"
              "except Exception as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=False)
    assert "ConfigError backend 'ray': Ray is not installed (fix: pip install " \
           "'drillyard[ray]')" in out.stdout, out.stderr


async def test_a_step_the_engine_gives_up_on_stops_in_the_actor(
        ray_cluster: RayTestCluster) -> None:
    from engine.environment import EnvSpec, ToolCall
    from engine.tasks import TaskView

    backend = RayBackend(**ray_options(ray_cluster, actors=1, slots_per_actor=1))
    async with backend:
        slot = await backend.acquire(EnvSpec("probe"))
        try:
            await slot.env.reset(TaskView("t", "What is 2+2?"))
            for _ in range(3):  # the engine's step deadline cancels the call
                with anyio.move_on_after(0.3) as scope:
                    await slot.env.step(ToolCall("c", "hang", "{}", {}))
                assert scope.cancelled_caught
            worker = slot.handle

            running = -1
            for _ in range(600):  # poll the actor's own count, up to 30 s
                running = int((await worker.health(10))["calls"])
                if running == 0:
                    break
                await anyio.sleep(0.05)
            assert running == 0  # the hung tool calls were cancelled in the actor
            obs = await slot.env.step(ToolCall("c", "calculator", '{"expression": "2+2"}',
                                               {"expression": "2+2"}))
            assert obs.content == "4"
        finally:
            await backend.release(slot)
    await no_actor_processes(ray_cluster)
