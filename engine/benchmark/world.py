"""The simulated world: a model server and tools that take the scripted time.

Their latencies come from a `WorldClock`: a timerfd on the engine's own
event loop that makes each reply readable at its deadline, the way a socket
would, so a reply is seen as soon as it is due and the loop is free. The
scripted duration is the world's work; whatever comes after the deadline
(the wake-up, the loop busy with other rollouts) is counted as the engine's.

The environment is registered as ``bench.latency`` so that worker processes
(``--plugin engine.benchmark.world``) can build it; its tools report the work
they did in the observation text, so the driver sees it on any backend.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import heapq
import itertools
import math
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Any

from engine import registry
from engine.environment import Observation, ToolCall, ToolSpec
from engine.errors import EnvironmentLost
from engine.policy.base import Completion, SamplingParams
from engine.policy.toolcalls import make_call
from engine.tasks import TaskView

from .workload import BATCH_SLOWDOWN, TOOL_KINDS, Workload

ENV_NAME = "bench.latency"
PLUGIN = "engine.benchmark.world"
_WORK = re.compile(r"\[work=([0-9.eE+-]+)\]")


@dataclass(slots=True)
class ClockStats:
    calls: int = 0
    late_s: float = 0.0  # reply due → its timer callback ran (timer and loop lateness)
    resume_s: float = 0.0  # timer callback ran → the waiting rollout runs again


class WorldClock:
    """The world's deadlines on one event loop, kept with a Linux ``timerfd``.

    asyncio's own timers wake through ``epoll_wait``, whose timeout is rounded
    up to whole milliseconds: a ~0.5 ms overshoot per call that no real model
    server would add. A timerfd armed for the earliest deadline wakes the loop
    through a file descriptor, like a socket with a reply in it, to the
    microsecond. Elsewhere (no timerfd) it falls back to ``loop.call_at``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, asyncio.Future[float]]] = []
        self._ids = itertools.count()
        self._armed = math.inf
        self._handle: asyncio.TimerHandle | None = None
        self.stats = ClockStats()
        self.timerfd = _TimerFd.create()
        if self.timerfd is not None:
            loop.add_reader(self.timerfd.fd, self._due)

    def close(self) -> None:
        if self.timerfd is not None:
            self.loop.remove_reader(self.timerfd.fd)
            self.timerfd.close()
            self.timerfd = None

    async def sleep(self, seconds: float) -> float:
        """Wait ``seconds`` of world time; return the world's time taken (the
        scripted duration: lateness after the deadline is the loop's, not the world's)."""
        fut: asyncio.Future[float] = self.loop.create_future()
        t0 = time.perf_counter()
        when = t0 + max(seconds, 0.0)
        heapq.heappush(self._heap, (when, next(self._ids), fut))
        if when < self._armed:
            self._arm(when)
        fired = await fut
        self.stats.calls += 1
        self.stats.late_s += fired - when
        self.stats.resume_s += time.perf_counter() - fired
        return when - t0

    def _arm(self, when: float) -> None:
        self._armed = when
        if self.timerfd is not None:
            self.timerfd.arm(when)
        else:
            if self._handle is not None:
                self._handle.cancel()
            delay = when - time.perf_counter()
            self._handle = self.loop.call_at(self.loop.time() + delay, self._due)

    def _due(self) -> None:
        if self.timerfd is not None:
            self.timerfd.drain()
        now = time.perf_counter()
        heap = self._heap
        while heap and heap[0][0] <= now:
            fut = heapq.heappop(heap)[2]
            if not fut.done():
                fut.set_result(now)
        self._armed = math.inf
        if heap:
            self._arm(heap[0][0])


class _TimerFd:
    """A CLOCK_MONOTONIC timerfd through libc (``time.perf_counter`` is that clock)."""

    def __init__(self, libc: Any, fd: int) -> None:
        self.libc, self.fd = libc, fd

    @classmethod
    def create(cls) -> _TimerFd | None:
        if (
            not sys.platform.startswith("linux")
            or time.get_clock_info("perf_counter").implementation
            != "clock_gettime(CLOCK_MONOTONIC)"
        ):
            return None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = libc.timerfd_create(1, 0o4000 | 0o2000000)  # MONOTONIC, NONBLOCK|CLOEXEC
        except (OSError, AttributeError):
            return None
        return cls(libc, fd) if fd >= 0 else None

    def arm(self, when: float) -> None:
        sec = int(when)
        spec = _ITimerSpec(_TimeSpec(0, 0), _TimeSpec(sec, max(1, int((when - sec) * 1e9))))
        self.libc.timerfd_settime(self.fd, 1, ctypes.byref(spec), None)  # ABSTIME

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.read(self.fd, 8)

    def close(self) -> None:
        os.close(self.fd)


class _TimeSpec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _ITimerSpec(ctypes.Structure):
    _fields_ = [("it_interval", _TimeSpec), ("it_value", _TimeSpec)]


_CLOCKS: dict[asyncio.AbstractEventLoop, WorldClock] = {}


def world_clock() -> WorldClock:
    """The running loop's clock, made on first use (one per loop)."""
    loop = asyncio.get_running_loop()
    clock = _CLOCKS.get(loop)
    if clock is None:
        for old in [lp for lp in _CLOCKS if lp.is_closed()]:
            stale = _CLOCKS.pop(old).timerfd  # its loop (and selector) are gone
            if stale is not None:
                stale.close()
        clock = _CLOCKS[loop] = WorldClock(loop)
    return clock


def reported_work(text: str) -> float | None:
    """The seconds of work a `LatencyEnvironment` tool says it did (``[work=…]``), if any."""
    found = _WORK.search(text)
    return float(found.group(1)) if found else None


def rollout_index(messages: list[dict[str, Any]], params: SamplingParams | None, k: int) -> int:
    """Rollout ``task × k + sample``: the task number is in the prompt, the sample
    index comes back as the request seed (the engine adds it to the base seed 0)."""
    prompt = next(m["content"] for m in messages if m["role"] == "user")
    task = int(prompt.split("#", 1)[1].split()[0])
    seed = params.seed if params is not None and params.seed is not None else 0
    return task * k + seed


class ScriptedLatencyPolicy:
    """Plays each rollout's script: waits the model latency (slower with more
    requests in flight), then calls the scripted tool or answers."""

    def __init__(
        self, workload: Workload, compress: float, batch_slowdown: float = BATCH_SLOWDOWN
    ) -> None:
        self.workload = workload
        self.compress = compress
        self.batch_slowdown = batch_slowdown
        n = len(workload.scripts)
        self.model_work = [0.0] * n  # wall-seconds the model took, per rollout
        self.tool_work = [0.0] * n  # wall-seconds the tools took, as they reported
        self.faulted: set[int] = set()
        self.in_flight = 0
        self.peak_in_flight = 0

    @property
    def work(self) -> list[float]:
        return [a + b for a, b in zip(self.model_work, self.tool_work, strict=True)]

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None = None,
        params: SamplingParams | None = None,
        n: int = 1,
    ) -> list[Completion]:
        i = rollout_index(messages, params, self.workload.samples)
        last = messages[-1]
        if last["role"] == "tool":
            self.tool_work[i] += reported_work(str(last.get("content", ""))) or 0.0
        turn = sum(1 for m in messages if m["role"] == "assistant")
        step = self.workload.scripts[i][turn]
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            factor = 1.0 + self.batch_slowdown * (self.in_flight - 1)
            self.model_work[i] += await world_clock().sleep(step.model_s * factor / self.compress)
        finally:
            self.in_flight -= 1
        if step.tool is None:
            return [Completion(content="42", finish_reason="stop")]
        args: dict[str, Any] = {"seconds": step.tool_s / self.compress, "timeout": step.timeout}
        if step.fault and i not in self.faulted:
            self.faulted.add(i)
            args["fault"] = True
        call = make_call(f"c{turn}", step.tool, args)
        return [Completion(content=None, tool_calls=[call], finish_reason="tool_calls")]

    def describe(self) -> dict[str, Any]:
        return {"kind": "scripted-latency", "compress": self.compress}


def _spec(kind: str) -> ToolSpec:
    return {
        "type": "function",
        "function": {
            "name": kind,
            "description": f"simulated {kind} tool",
            "parameters": {"type": "object", "properties": {}},
        },
    }


class LatencyEnvironment:
    """Tools that take the scripted time (browser, search, code, files) and say
    how long they took; ``fault`` loses the environment, as a dead worker would."""

    tools: list[ToolSpec] = [_spec(k) for k in TOOL_KINDS]

    async def reset(self, task: TaskView) -> Observation:
        return Observation(task.prompt)

    async def step(self, call: ToolCall) -> Observation:
        args = call.parsed or {}
        if args.get("fault"):
            raise EnvironmentLost("simulated: the environment's worker went away")
        work = await world_clock().sleep(float(args.get("seconds", 0.0)))
        if args.get("timeout"):
            return Observation.error(f"{call.name} timed out [work={work:.6f}]")
        return Observation(f"{call.name} result [work={work:.6f}]")

    async def close(self) -> None:
        pass


registry.register("environments", ENV_NAME, LatencyEnvironment)
