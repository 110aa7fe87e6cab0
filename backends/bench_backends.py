"""``python -m backends.bench_backends``: what moving environments out of process costs and buys.

1. Throughput with a CPU-heavy tool (``cpu`` environment: ``crunch`` counts primes
   in pure Python): in-process sequential (1 slot, 1 rollout at a time, the
   paper's single-node baseline), in-process with many slots (one event loop,
   so no faster), and the subprocess pool (one worker per core).
2. Per-call overhead of the worker protocol: p50/p99 of a trivial ``step``
   in process vs through a worker (one at a time), and what a step adds with
   ``--in-flight`` environments stepping a sleeping tool at once (what the
   cycle benchmark's slots see: wake-ups and hops under load).
3. Environment creation latency (acquire + release) per backend; for
   ``kubernetes`` (the test suite's fake cluster, when importable) also the
   time for pods to become Running and Ready.
4. Ray (when installed): one step through a Ray actor (an ObjectRef awaited
   on the loop) against the same step through the worker protocol, create +
   close, a local cluster's start, an actor's start, and (in a checkout) a
   head + two worker nodes started as the tests start them.

Results print as a table and go to ``--out`` as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from backends.inprocess import InProcessBackend
from backends.subprocess import SubprocessBackend, default_workers
from backends.testenvs import PLUGIN, count_primes
from engine import eventloop
from engine.agent import Agent
from engine.api import Engine
from engine.backend import Backend
from engine.benchmark.world import ENV_NAME as WORLD_ENV
from engine.benchmark.world import PLUGIN as WORLD_PLUGIN
from engine.benchmark.world import reported_work
from engine.environment import EnvSpec, ToolCall
from engine.policy.scripted import ScriptedPolicy
from engine.tasks import Task, TaskView


def _crunch_agent(n: int) -> Agent:
    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "tool":
            return messages[-1]["content"]
        return {"tool_calls": [{"name": "crunch", "arguments": {"n": n}}]}

    return Agent(ScriptedPolicy(handler), max_turns=2)


async def throughput(label: str, backend: Backend, rollouts: int, work: int,
                     concurrency: int, store: Path) -> dict[str, Any]:
    """Run ``rollouts`` one-tool-call rollouts; return wall time and rollouts/s."""
    expected = str(count_primes(work))
    tasks = [Task(f"t{i}", "count", expected) for i in range(rollouts)]
    async with Engine(store=store / f"{label}.db", backend=backend, max_rollouts=concurrency,
                      progress=False) as engine:
        started = time.perf_counter()
        run = await engine.run(tasks, _crunch_agent(work), environment=EnvSpec("cpu"),
                               scorer="exact")
        wall = time.perf_counter() - started
        counts = await run.counts()
    if counts != {"done": rollouts}:
        raise RuntimeError(f"{label}: not every rollout finished: {counts}")
    return {"label": label, "rollouts": rollouts, "wall_s": round(wall, 3),
            "rollouts_per_s": round(rollouts / wall, 2)}


async def ceiling(workers: int, jobs: int, work: int) -> dict[str, Any]:
    """The same crunching in a bare process pool, no engine: what the machine allows now."""
    loop = asyncio.get_running_loop()
    with ProcessPoolExecutor(workers) as pool:
        await asyncio.gather(*(loop.run_in_executor(pool, count_primes, 1000)
                               for _ in range(workers)))  # processes up
        started = time.perf_counter()
        await asyncio.gather(*(loop.run_in_executor(pool, count_primes, work)
                               for _ in range(jobs)))
        wall = time.perf_counter() - started
    return {"label": f"bare ProcessPoolExecutor({workers}), no engine", "rollouts": jobs,
            "wall_s": round(wall, 3), "rollouts_per_s": round(jobs / wall, 2)}


def _percentiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    q = statistics.quantiles(ordered, n=100)
    return {"p50_ms": round(q[49] * 1e3, 3), "p99_ms": round(q[98] * 1e3, 3),
            "mean_ms": round(statistics.fmean(ordered) * 1e3, 3), "n": len(ordered)}


async def _timed(calls: int, fn: Callable[[], Awaitable[Any]]) -> list[float]:
    for _ in range(min(50, calls)):  # warm up connections and caches
        await fn()
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        await fn()
        out.append(time.perf_counter() - t)
    return out


async def call_overhead(backend: Backend, calls: int) -> dict[str, float]:
    """Latency of a trivial step through this backend's environment handle."""
    call = ToolCall("c", "calculator", '{"expression": "1+1"}', {"expression": "1+1"})
    async with backend:
        slot = await backend.acquire(EnvSpec("probe"))
        try:
            await slot.env.reset(TaskView("t", "What is 1+1?"))
            samples = await _timed(calls, lambda: slot.env.step(call))
        finally:
            await backend.release(slot)
    return _percentiles(samples)


async def step_under_load(
    backend: Backend, envs: int, calls: int, mean_s: float, seed: int = 0
) -> dict[str, float]:
    """What a step adds at ``envs`` in flight: ``envs`` environments each take
    ``calls`` steps of a tool that sleeps a random 0.2–1.8 × ``mean_s`` on its
    host's loop (`engine.benchmark.world`, to the microsecond); a step's wall
    time less the sleep it reports. The cycle benchmark's slots see this."""
    rng = random.Random(seed)
    plan = [[mean_s * rng.uniform(0.2, 1.8) for _ in range(calls)] for _ in range(envs)]
    samples: list[float] = []

    async def one(seconds: list[float]) -> None:
        async with backend.lease(EnvSpec(WORLD_ENV)) as slot:
            for i, s in enumerate(seconds):
                args = {"seconds": s}
                call = ToolCall(f"c{i}", "code", json.dumps(args), args)
                t = time.perf_counter()
                obs = await slot.env.step(call)
                took = time.perf_counter() - t
                work = reported_work(obs.content)
                if work is None:
                    raise RuntimeError(f"the world's tool did not report its work: {obs.content!r}")
                samples.append(took - work)

    async with backend:
        async with asyncio.TaskGroup() as tg:
            for seconds in plan:
                tg.create_task(one(seconds))
    return _percentiles(samples)


async def creation(backend: Backend, times: int) -> dict[str, float]:
    """Latency of acquire + release (build and close one environment)."""
    async with backend:
        async def once() -> None:
            await backend.release(await backend.acquire(EnvSpec("probe")))

        samples = await _timed(times, once)
    return _percentiles(samples)


async def kubernetes_figures(times: int, calls: int, workdir: Path) -> dict[str, Any] | None:
    try:
        from backends.kubernetes import KubernetesBackend
        from tests.backends.conftest import k8s_options
        from tests.backends.fake_k8s import FakeCluster
    except ImportError:
        return None
    cluster = FakeCluster(probe_interval=None)  # honour the template's 1 s probe period
    async with cluster.running(workdir):
        opts = k8s_options(cluster, workdir, pods=2)
        backend = KubernetesBackend(**opts)
        started = time.perf_counter()
        await backend.start()
        pods_ready = time.perf_counter() - started
        await backend.close()
        create = await creation(KubernetesBackend(**k8s_options(cluster, workdir)), times)
        overhead = await call_overhead(KubernetesBackend(**k8s_options(cluster, workdir)),
                                       calls)
    return {"pods_ready_s": round(pods_ready, 3), "create": create, "step": overhead}


async def ray_figures(times: int, calls: int) -> dict[str, Any] | None:
    """Ray's costs on a private local cluster (and a 3-node one, in a checkout)."""
    try:
        import ray
    except ImportError:
        return None
    from backends.ray import LOCAL_IP, RayBackend

    out: dict[str, Any] = {}
    started = time.perf_counter()
    await asyncio.to_thread(ray.init, address="local", num_cpus=2, include_dashboard=False,
                            log_to_driver=False, _node_ip_address=LOCAL_IP)
    out["local_cluster_start_s"] = round(time.perf_counter() - started, 3)
    try:
        def one_actor() -> RayBackend:
            return RayBackend(actors=1, slots_per_actor=1, plugins=[PLUGIN])

        started = time.perf_counter()
        async with one_actor():
            out["actor_ready_s"] = round(time.perf_counter() - started, 3)
        out["create"] = await creation(one_actor(), times)
        out["step"] = await call_overhead(one_actor(), calls)
    finally:
        await asyncio.to_thread(ray.shutdown)
    try:
        from tests.backends.ray_cluster import RayTestCluster
    except ImportError:
        return out
    started = time.perf_counter()
    cluster = RayTestCluster(workers=2)  # on the loop: Ray starts a head on the main thread
    out["three_node_cluster_start_s"] = round(time.perf_counter() - started, 3)
    cluster.shutdown()
    return out


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    workers = args.workers or default_workers()
    out: dict[str, Any] = {"cores": workers, "load_avg_before": os.getloadavg(),
                           "work_n": args.work, "crunch_ms_in_process": None}
    t = time.perf_counter()
    count_primes(args.work)
    out["crunch_ms_in_process"] = round((time.perf_counter() - t) * 1e3, 1)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp)
        runs = [
            await throughput("inprocess, sequential (1 slot)", InProcessBackend(slots=1),
                             args.rollouts, args.work, 1, store),
            await throughput(f"inprocess, {2 * workers} slots", InProcessBackend(
                slots=2 * workers), args.rollouts, args.work, 2 * workers, store),
            await throughput(f"subprocess, {workers} workers x 1 slot", SubprocessBackend(
                workers, 1, plugins=[PLUGIN]), args.rollouts, args.work, workers, store),
            await throughput(f"subprocess, {workers} workers x 2 slots", SubprocessBackend(
                workers, 2, plugins=[PLUGIN]), args.rollouts, args.work, 2 * workers, store),
        ]
        runs.append(await ceiling(workers, args.rollouts, args.work))
        base = runs[0]["rollouts_per_s"]
        for r in runs:
            r["speedup"] = round(r["rollouts_per_s"] / base, 2)
        out["throughput"] = runs
        out["step_overhead"] = {
            "inprocess": await call_overhead(InProcessBackend(), args.calls),
            "subprocess": await call_overhead(SubprocessBackend(1, 1, plugins=[PLUGIN]),
                                              args.calls),
        }
        per = -(-args.in_flight // workers)
        out["step_under_load"] = {
            "in_flight": args.in_flight,
            "tool_mean_ms": args.tool_ms,
            "inprocess": await step_under_load(InProcessBackend(slots=args.in_flight),
                                               args.in_flight, args.load_calls,
                                               args.tool_ms / 1e3),
            "subprocess": await step_under_load(SubprocessBackend(workers, per, plugins=[
                PLUGIN, WORLD_PLUGIN]), args.in_flight, args.load_calls, args.tool_ms / 1e3),
        }  # fmt: skip
        out["env_creation"] = {
            "inprocess": await creation(InProcessBackend(), args.creates),
            "subprocess": await creation(SubprocessBackend(1, 1, plugins=[PLUGIN]),
                                         args.creates),
        }
        started = time.perf_counter()
        async with SubprocessBackend(workers, 1, plugins=[PLUGIN]):
            out["subprocess_pool_start_s"] = round(time.perf_counter() - started, 3)
        k8s = await kubernetes_figures(args.creates, args.calls, store)
        if k8s is not None:
            out["kubernetes_fake_cluster"] = k8s
        ray_out = await ray_figures(args.creates, args.calls)
        if ray_out is not None:
            out["ray"] = ray_out
    out["load_avg_after"] = os.getloadavg()
    return out


def render(result: dict[str, Any]) -> str:
    lines = [f"cores: {result['cores']}   crunch({result['work_n']}) in process: "
             f"{result['crunch_ms_in_process']} ms   load avg before/after: "
             f"{result['load_avg_before'][0]:.2f} / {result['load_avg_after'][0]:.2f}", "",
             f"{'throughput (CPU-heavy tool)':50} {'wall s':>8} {'rollouts/s':>11} {'speedup':>8}"]
    for r in result["throughput"]:
        lines.append(f"{r['label']:50} {r['wall_s']:>8} {r['rollouts_per_s']:>11} "
                     f"{r['speedup']:>7}x")
    lines += ["", f"{'latency (ms)':50} {'p50':>8} {'p99':>8} {'mean':>8}"]
    rows = [(f"step, {k}", v) for k, v in result["step_overhead"].items()]
    load = result["step_under_load"]
    rows += [(f"step at {load['in_flight']} in flight, {k} (tool ~{load['tool_mean_ms']:g} ms)",
              load[k]) for k in ("inprocess", "subprocess")]  # fmt: skip
    rows += [(f"create+close env, {k}", v) for k, v in result["env_creation"].items()]
    k8s = result.get("kubernetes_fake_cluster")
    if k8s:
        rows += [("step, kubernetes (fake cluster)", k8s["step"]),
                 ("create+close env, kubernetes (fake)", k8s["create"])]
    ray_out = result.get("ray")
    if ray_out:
        rows += [("step, ray (an actor call)", ray_out["step"]),
                 ("create+close env, ray", ray_out["create"])]
    for label, v in rows:
        lines.append(f"{label:50} {v['p50_ms']:>8} {v['p99_ms']:>8} {v['mean_ms']:>8}")
    lines.append("")
    lines.append(f"subprocess pool start ({result['cores']} workers): "
                 f"{result['subprocess_pool_start_s']} s")
    if k8s:
        lines.append(f"kubernetes (fake cluster): 2 pods Running+Ready in {k8s['pods_ready_s']} s")
    if ray_out:
        lines.append(f"ray: local cluster up in {ray_out['local_cluster_start_s']} s, one actor "
                     f"placed and up in {ray_out['actor_ready_s']} s")
        if "three_node_cluster_start_s" in ray_out:
            lines.append(f"ray: head + 2 worker nodes (ray start) up in "
                         f"{ray_out['three_node_cluster_start_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m backends.bench_backends", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rollouts", type=int, default=60, help="rollouts per throughput run")
    p.add_argument("--work", type=int, default=60000, help="crunch(n): primes below n")
    p.add_argument("--workers", type=int, default=0, help="subprocess workers (0: one per core)")
    p.add_argument("--calls", type=int, default=1000, help="steps timed per backend")
    p.add_argument("--in-flight", type=int, default=16,
                   help="environments stepping at once for the step-under-load figure")
    p.add_argument("--load-calls", type=int, default=100, help="steps each, under load")
    p.add_argument("--tool-ms", type=float, default=20.0,
                   help="mean sleep of the tool under load, ms")
    p.add_argument("--creates", type=int, default=200, help="environments created per backend")
    p.add_argument("--out", default="", help="write the results as JSON here")
    args = p.parse_args(argv)
    result = eventloop.run(main_async(args))  # the engine's loop, as every bench mode
    print(render(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
