"""Chaos: workers killed (kill -9), pods deleted, Ray actors and nodes killed every
few hundred ms while hundreds of rollouts run. Nothing may be lost, nothing duplicated."""

from __future__ import annotations

import itertools
import os
import random
import re
import signal
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from backends.kubernetes import KubernetesBackend
from backends.pool import PooledBackend
from backends.subprocess import SubprocessBackend
from backends.testenvs import PLUGIN
from engine import Agent, Engine, EnvSpec
from engine.envs.arithmetic import CalculatorOracle, arithmetic_tasks
from engine.recording import TERMINAL, TRANSITIONS, RolloutState
from engine.store import AttemptRecord
from tests.backends.conftest import k8s_options, pid_alive
from tests.backends.fake_k8s import FakeCluster

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]
TASKS, SAMPLES = 60, 4  # 240 rollouts


async def run_under_chaos(engine: Engine, kill_one: Callable[[], Awaitable[str | None]],
                          killed: list[str], every: tuple[float, float] = (0.2, 0.4),
                          tool_delay: float = 0.1) -> str:
    rng = random.Random(7)
    run_id = "chaos"

    async def chaos() -> None:
        while True:
            await anyio.sleep(rng.uniform(*every))  # the chaos's own pace, not a sync
            victim = await kill_one()
            if victim:
                killed.append(victim)

    async with anyio.create_task_group() as tg:
        tg.start_soon(chaos)
        await engine.run(arithmetic_tasks(TASKS), Agent(CalculatorOracle(latency=0.02)),
                         environment=EnvSpec("probe", {"tool_delay": tool_delay}), samples=SAMPLES,
                         scorer="arithmetic", run_id=run_id)
        tg.cancel_scope.cancel()
    return run_id


LOST = re.compile(r"^(EnvironmentLost|WorkerUnreachable): worker (\S+) lost: ")


def hosted(attempt: AttemptRecord) -> str:
    """The worker an attempt ran on: the one its error names, else the one recorded.
    (An attempt that fails while its environment is created records the previous
    attempt's worker, so the error text is the better witness.)"""
    lost = LOST.match(attempt.error or "")
    return lost.group(2) if lost else attempt.worker or ""


async def check_nothing_lost(engine: Engine, run_id: str, killed: list[str],
                             backend: PooledBackend) -> int:
    """Every rollout terminal and done once; every error attempt is a lost worker,
    retried on another; every message there, in order. Returns the error count."""
    rollouts = await engine.open_run(run_id).rollouts()
    assert len(rollouts) == TASKS * SAMPLES
    assert len({(r.task_id, r.sample_index) for r in rollouts}) == TASKS * SAMPLES
    assert all(RolloutState(r.state) in TERMINAL for r in rollouts)
    assert {r.state for r in rollouts} == {"done"}
    assert all(r.reward == 1.0 for r in rollouts)
    errors = total = 0
    for r in rollouts:
        attempts = await engine.store.attempts(r.id)
        assert [a.attempt for a in attempts] == list(range(1, r.attempt + 1))
        assert [a.state for a in attempts] == ["error"] * (r.attempt - 1) + ["done"]
        for failed, retry in itertools.pairwise(attempts):
            errors += 1
            reason = failed.error or ""
            assert LOST.match(reason), reason
            lost_worker = hosted(failed)
            assert any(v in lost_worker for v in killed), reason  # one we killed
            assert hosted(retry) != lost_worker  # retried on another worker
        msgs = await engine.store.messages(r.id)
        assert [m.seq for m in msgs] == list(range(len(msgs)))  # none lost, none doubled
        states = [m.payload["to"] for m in msgs if m.category == "state"]
        chain = [RolloutState.QUEUED, *map(RolloutState, states)]
        assert all(b in TRANSITIONS[a] for a, b in itertools.pairwise(chain))
        assert states.count("error") == r.attempt - 1 and states[-1] == "done"
        assert sum(m.category == "score" for m in msgs) == 1
        assert sum(m.category == "error" for m in msgs) == r.attempt - 1
        total += len(msgs)
    assert await engine.store.count_messages(run_id) == total
    # each worker we killed was seen dead (a victim killed twice before its death was
    # noticed, which a zombie's pid allows, counts once)
    assert backend.deaths >= len(set(killed)) > 0
    return errors


async def test_chaos_on_the_subprocess_pool(make_engine: EngineFactory) -> None:
    backend = SubprocessBackend(workers=3, slots_per_worker=4, plugins=[PLUGIN],
                                health_interval=0.5)
    killed: list[str] = []

    async def kill_one() -> str | None:
        pids = backend.pids
        live = [p for p in pids if any(f"pid{p}@" in w for w in backend.workers)]
        if not live:
            return None
        pid = random.choice(live)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:  # it died on its own meanwhile
            return None
        return f"pid{pid}@"

    async with make_engine(backend=backend, max_rollouts=12, max_attempts=25) as engine:
        run_id = await run_under_chaos(engine, kill_one, killed)
        errors = await check_nothing_lost(engine, run_id, killed, backend)
    assert len(killed) >= 5 and errors >= len(killed) // 2
    assert not any(pid_alive(p) for p in backend.spawned)


async def test_chaos_on_the_fake_cluster(make_engine: EngineFactory, tmp_path: Path) -> None:
    pytest.importorskip("kubernetes_asyncio", reason="needs the k8s extra")
    cluster = FakeCluster()
    async with cluster.running(tmp_path):
        backend = KubernetesBackend(**k8s_options(cluster, tmp_path, pods=3, slots_per_pod=4))
        killed: list[str] = []

        async def delete_one() -> str | None:
            ready = [w.split("@")[0].removeprefix("pod/") for w in backend.workers]
            if not ready:
                return None
            name = random.choice(ready)
            await cluster.delete_pod(name)
            return f"pod/{name}@"

        async with make_engine(backend=backend, max_rollouts=12, max_attempts=25) as engine:
            # a pod costs a fresh interpreter (~1 CPU-s here): delete one every 0.5-0.8 s
            run_id = await run_under_chaos(engine, delete_one, killed, every=(0.5, 0.8),
                                           tool_delay=0.2)
            errors = await check_nothing_lost(engine, run_id, killed, backend)
        assert len(killed) >= 5 and errors >= len(killed) // 2
        assert cluster.pods == {}
        assert cluster.live_pids() == []


async def test_chaos_on_a_ray_cluster(make_engine: EngineFactory, ray_cluster: Any) -> None:
    """Actors killed (kill -9 of the actor's process) every 0.4-0.7 s while the pool is
    whole, then a whole worker node (every process of it); a new node joins."""
    from backends.ray import RayBackend
    from backends.ray_actor import ActorWorker
    from tests.backends.conftest import ray_options

    backend = RayBackend(**ray_options(ray_cluster, actors=4, slots_per_actor=3,
                                       health_timeout=15.0))
    killed: list[str] = []
    nodes_killed: list[str] = []
    joining: list[threading.Thread] = []

    async def kill_one() -> str | None:
        # live and not killed already (a killed actor stays in the pool until its death is seen)
        live = [w for w in backend.workers.values()
                if isinstance(w, ActorWorker) and f"/actor-{w.actor_id[:8]}/" not in killed]
        if len(killed) >= 3 and not nodes_killed and live:  # then once: a node, and all on it
            node = next(n for n in ray_cluster.nodes if n.node_id == live[0].node_id)
            await anyio.to_thread.run_sync(ray_cluster.kill_node, node)
            nodes_killed.append(node.node_id)
            joining.append(threading.Thread(target=ray_cluster.add_node))  # a new one joins
            joining[0].start()
            return f"@node-{node.node_id[:8]}:"
        if len(live) < backend.n_actors:  # one replacement at a time: each is a new process
            return None
        victim = random.choice(live)
        try:
            os.kill(victim.pid, signal.SIGKILL)
        except ProcessLookupError:
            return None
        return f"/actor-{victim.actor_id[:8]}/"

    try:
        async with make_engine(backend=backend, max_rollouts=12, max_attempts=25) as engine:
            run_id = await run_under_chaos(engine, kill_one, killed, every=(0.4, 0.7),
                                           tool_delay=0.3)
            errors = await check_nothing_lost(engine, run_id, killed, backend)
        assert len(killed) >= 4 and nodes_killed and errors >= len(killed) // 2
    finally:
        for thread in joining:
            await anyio.to_thread.run_sync(thread.join)
        await anyio.to_thread.run_sync(ray_cluster.ensure_workers)
