"""One cycle through the real engine, and where its time went.

With ``m`` slots and makespan ``M``: ``m·M = W + E + I``, where ``W`` is the
world's work (model and tool time as measured, timer lateness included), ``E``
the time rollouts held a slot without the world working for them (the
engine's own time: state machine, store, loop wake-ups, retry back-off) and
``I`` the time slots sat empty (ramp-up and the tail of list scheduling). The
bound is ``max(longest rollout's work, W / m)``; the loss ``M − bound`` splits
into engine ``E / m`` and scheduling tail (the rest). The same work, list-
scheduled in the same order by a zero-overhead engine, gives the tail that no
engine can avoid without knowing durations in advance.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from engine.agent import Agent
from engine.api import Engine
from engine.environment import EnvSpec
from engine.errors import EnvironmentLost
from engine.policy.base import SamplingParams
from engine.rollout import Scorer
from engine.store import AttemptRecord
from engine.tasks import Task

from .cluster import backend_options
from .workload import BATCH_SLOWDOWN, MAX_TURNS, Workload, hint_order, list_schedule
from .world import (
    ENV_NAME,
    LatencyEnvironment,
    ScriptedLatencyPolicy,
    WorldClock,
    world_clock,
)


@dataclass
class Measured:
    """One run of the cycle; times in paper-seconds unless named ``_s`` (wall)."""

    label: str
    slots: int
    order: str
    backend: str
    wall_s: float
    paper_s: float
    work_paper_s: float
    longest_paper_s: float
    bound_paper_s: float
    efficiency: float
    ideal_order_paper_s: float  # same work, same order, zero overhead
    lpt_paper_s: float  # same work, longest first, zero overhead (needs clairvoyance)
    engine_loss_paper_s: float  # E / m
    engine_ms_per_turn: float  # E in wall milliseconds per turn: independent of compression
    tail_loss_paper_s: float  # M − bound − E / m
    timer_late_ms: float  # mean lateness of the world clock per call
    resume_ms: float  # mean time from the timer callback to the rollout running again
    world_calls: int  # model and tool calls played by the world clock (driver side)
    turns: int
    cpu_s: float
    cpu_per_turn_ms: float
    overhead_share: float  # engine CPU ÷ wall
    rows: int
    rows_per_s: float
    peak_rss_mb: float
    retries: int
    peak_model_requests: int
    states: dict[str, int] = field(default_factory=dict)
    timeline: list[dict[str, Any]] = field(default_factory=list, repr=False)
    speedup: float = 1.0
    started: float = 0.0  # time.perf_counter() when the run started


def workload_tasks(w: Workload, order: str) -> list[Task]:
    """One task per group, in the order the scheduler gets them."""
    tasks = hint_order(w) if order == "hint" else list(range(w.tasks))
    return [
        Task(
            f"task{j:03d}",
            f"task #{j}",
            "42",
            metadata={"level": w.info[j].level, "steps": w.info[j].steps, "index": j},
        )
        for j in tasks
    ]


def steps_hint(task: Task) -> float:
    """The scheduler's only hint: the task's annotator steps (more steps, longer)."""
    return float(task.metadata["steps"])


def _peak_rss_reset() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def measure_cycle(
    w: Workload,
    slots: int,
    compress: float,
    store_dir: Path,
    label: str,
    *,
    order: str = "hint",
    backend: str = "inprocess",
    options: dict[str, Any] | None = None,
    progress: bool | None = None,
    batch_slowdown: float = BATCH_SLOWDOWN,
    scorer: str | Scorer = "exact",
) -> Measured:
    """Run the cycle on ``slots`` slots and account for every slot-second."""
    policy = ScriptedLatencyPolicy(w, compress, batch_slowdown)
    agent = Agent(policy, max_turns=MAX_TURNS + 1, sampling=SamplingParams(seed=0))
    tasks = workload_tasks(w, order)
    longest_step = max(max(t.model_s, t.tool_s) for s in w.scripts for t in s)
    clock = world_clock()
    async with Engine(
        store=store_dir / f"{label}.db",
        backend=backend,
        backend_options=backend_options(backend, slots, options or {}),
        max_rollouts=slots,
        max_model_requests=slots,
        retry_backoff=1.0 / compress,  # one paper-second, doubling per retry
        step_timeout=max(30.0, 10 * longest_step / compress),
        progress=progress,
    ) as engine:
        _peak_rss_reset()
        stats0 = (clock.stats.calls, clock.stats.late_s, clock.stats.resume_s)
        epoch0, cpu0, t0 = time.time(), time.process_time(), time.perf_counter()
        # the engine orders the rollouts itself: the tasks go in as drawn, and
        # for "hint" the engine starts the most annotator steps first
        run = await engine.run(
            workload_tasks(w, "given"), agent, environment=EnvSpec(ENV_NAME),
            samples=w.samples, scorer=scorer, order=steps_hint if order == "hint" else "given",
        )  # fmt: skip
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        peak = _peak_rss_mb()
        rows = engine.store.rows_written
        retries = engine.last_scheduler.retries if engine.last_scheduler else 0
        records = await run.rollouts()
        attempts: dict[str, list[AttemptRecord]] = {}
        for r in records:
            if r.attempt > 1:
                attempts[r.id] = await engine.store.attempts(r.id)
    index = {t.id: int(t.metadata["index"]) for t in tasks}
    bars, _ = _timeline(records, attempts, index, w.samples, epoch0, compress)
    m = _measured(
        w, policy, tasks, index, bars, label, slots, order, backend, wall, cpu, compress,
        clock, stats0,
    )  # fmt: skip
    m.rows, m.rows_per_s, m.peak_rss_mb, m.retries = rows, rows / wall, peak, retries
    m.started = t0
    return m


def _measured(
    w: Workload,
    policy: ScriptedLatencyPolicy,
    tasks: list[Task],
    index: dict[str, int],
    bars: list[dict[str, Any]],
    label: str,
    slots: int,
    order: str,
    backend: str,
    wall: float,
    cpu: float,
    compress: float,
    clock: WorldClock,
    stats0: tuple[int, float, float],
) -> Measured:
    """The accounting ``m·M = W + E + I`` for one run (see the module docstring)."""
    calls = clock.stats.calls - stats0[0]
    work = [x * compress for x in policy.work]
    total = sum(work)
    bound = max(max(work), total / slots)
    paper = wall * compress
    slot_time = sum(b["end"] - b["start"] for b in bars)
    engine_loss = (slot_time - total) / slots
    queue = [work[index[t.id] * w.samples + s] for t in tasks for s in range(w.samples)]
    last = {b["rollout"]: b["state"] for b in sorted(bars, key=lambda b: b["attempt"])}
    states: dict[str, int] = {}
    for state in last.values():
        states[state] = states.get(state, 0) + 1
    return Measured(
        label=label,
        slots=slots,
        order=order,
        backend=backend,
        wall_s=wall,
        paper_s=paper,
        work_paper_s=total,
        longest_paper_s=max(work),
        bound_paper_s=bound,
        efficiency=bound / paper,
        ideal_order_paper_s=list_schedule(queue, slots),
        lpt_paper_s=list_schedule(sorted(work, reverse=True), slots),
        engine_loss_paper_s=engine_loss,
        engine_ms_per_turn=(slot_time - total) / compress / w.turns * 1e3,
        tail_loss_paper_s=paper - bound - engine_loss,
        timer_late_ms=(clock.stats.late_s - stats0[1]) / max(calls, 1) * 1e3,
        resume_ms=(clock.stats.resume_s - stats0[2]) / max(calls, 1) * 1e3,
        world_calls=calls,
        turns=w.turns,
        cpu_s=cpu,
        cpu_per_turn_ms=cpu / w.turns * 1e3,
        overhead_share=cpu / wall,
        rows=0,
        rows_per_s=0.0,
        peak_rss_mb=float("nan"),
        retries=0,
        peak_model_requests=policy.peak_in_flight,
        states=states,
        timeline=bars,
    )


def _timeline(
    records: list[Any],
    attempts: dict[str, list[AttemptRecord]],
    index: dict[str, int],
    samples: int,
    epoch0: float,
    compress: float,
) -> tuple[list[dict[str, Any]], float]:
    """Every attempt as a bar (paper-seconds from the start), each on a slot lane
    (interval partitioning: a lane is reused once its last bar has ended)."""
    bars: list[dict[str, Any]] = []
    for r in records:
        spans = [(a.started_at, a.finished_at, a.state) for a in attempts.get(r.id, [])] or [
            (r.started_at, r.finished_at, r.state)
        ]
        for n, (start, end, state) in enumerate(spans, 1):
            if start is None or end is None:
                continue
            bars.append(
                {
                    "rollout": index[r.task_id] * samples + r.sample_index,
                    "task": index[r.task_id],
                    "attempt": n,
                    "state": state,
                    "start": (start - epoch0) * compress,
                    "end": (end - epoch0) * compress,
                }
            )
    bars.sort(key=lambda b: (b["start"], b["end"]))
    lanes: list[float] = []
    for b in bars:
        free = [i for i, end in enumerate(lanes) if end <= b["start"] + 1e-9]
        lane = min(free, key=lambda i: lanes[i]) if free else len(lanes)
        if lane == len(lanes):
            lanes.append(0.0)
        lanes[lane] = b["end"]
        b["lane"] = lane
    slot_time = sum(b["end"] - b["start"] for b in bars)
    return bars, slot_time


async def measure_bare(
    w: Workload,
    slots: int,
    compress: float,
    *,
    order: str = "hint",
    batch_slowdown: float = BATCH_SLOWDOWN,
) -> Measured:
    """The control: the same world played by ``slots`` bare asyncio workers, with
    no engine (no state machine, no store, no backend): what this machine, this
    Python and the simulated world allow. The engine's own cost is the difference."""
    policy = ScriptedLatencyPolicy(w, compress, batch_slowdown)
    env = LatencyEnvironment()
    tasks = workload_tasks(w, order)
    index = {t.id: int(t.metadata["index"]) for t in tasks}
    queue = deque((t, s) for t in tasks for s in range(w.samples))
    bars: list[dict[str, Any]] = []
    clock = world_clock()
    stats0 = (clock.stats.calls, clock.stats.late_s, clock.stats.resume_s)

    async def play(task: Task, sample: int) -> None:
        params = SamplingParams(seed=sample)
        messages: list[dict[str, Any]] = [{"role": "user", "content": task.prompt}]
        while True:
            reply = (await policy.complete(messages, env.tools, params))[0]
            messages.append(reply.assistant_message())
            if not reply.tool_calls:
                return
            for call in reply.tool_calls:
                obs = await env.step(call)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": obs.content})

    async def worker(lane: int) -> None:
        while queue:
            task, sample = queue.popleft()
            for attempt in (1, 2, 3):
                start = time.perf_counter()
                try:
                    await play(task, sample)
                    state = "done"
                except EnvironmentLost:
                    state = "error"
                bars.append(
                    {
                        "rollout": index[task.id] * w.samples + sample,
                        "task": index[task.id],
                        "attempt": attempt,
                        "state": state,
                        "start": (start - t0) * compress,
                        "end": (time.perf_counter() - t0) * compress,
                        "lane": lane,
                    }
                )
                if state == "done":
                    break
                await asyncio.sleep(1.0 / compress)

    cpu0, t0 = time.process_time(), time.perf_counter()
    async with anyio.create_task_group() as tg:
        for lane in range(slots):
            tg.start_soon(worker, lane)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    return _measured(
        w, policy, tasks, index, bars, "bare-loop", slots, order, "none", wall, cpu, compress,
        clock, stats0,
    )  # fmt: skip
