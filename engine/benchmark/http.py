"""``--http``: the engine against a real model server over real HTTP, at C in flight.

A loopback OpenAI-compatible server (`engine.benchmark.openai_server`, its own
processes) answers every chat completion after ``latency`` seconds, with a
tool call on each turn but the last; the tool (``bench.sleep``) sleeps
``tool_s`` seconds on the engine's loop. N rollouts of T turns run through the
real engine (`Engine.run`, `OpenAIPolicy`, the in-process backend, the trace
store recording every message) with C in flight. Every rollout is the same,
so the ideal makespan is exact: ``ceil(N / C) × (T × latency + (T − 1) × tool_s)``;
efficiency is that over the measured wall time. The engine's CPU (this
process, the store's writer thread included) and the server's (its
processes, apart) are reported per turn.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from engine import eventloop, registry
from engine.agent import Agent
from engine.api import Engine
from engine.environment import EnvSpec, Observation, ToolCall, ToolSpec
from engine.errors import ConfigError
from engine.policy.base import SamplingParams
from engine.policy.openai import OpenAIPolicy
from engine.tasks import Task, TaskView

from .http_control import ControlRun, measure_control
from .openai_server import MODEL, TOOL
from .threads import cpu_by_thread, per_turn_ms, thread_cpu

ENV_NAME = "bench.sleep"
ANSWER = "42"
SAMPLING = SamplingParams(temperature=0.0, max_tokens=64, return_token_ids=True)
SYSTEM_PROMPT = (
    "You are a patient agent. Call the sleep tool until you are told to stop, then answer "
    "with the number only."
)


class SleepEnvironment:
    """One tool, ``sleep``, that sleeps ``seconds`` on the engine's loop."""

    tools: list[ToolSpec] = [
        {
            "type": "function",
            "function": {
                "name": TOOL,
                "description": "sleep a while",
                "parameters": {"type": "object", "properties": {"turn": {"type": "integer"}}},
            },
        }
    ]

    def __init__(self, seconds: float = 0.1) -> None:
        self.seconds = seconds

    async def reset(self, task: TaskView) -> Observation:
        return Observation(task.prompt)

    async def step(self, call: ToolCall) -> Observation:
        await asyncio.sleep(self.seconds)
        return Observation(f"slept {self.seconds}s (turn {(call.parsed or {}).get('turn')})")

    async def close(self) -> None:
        pass


registry.register("environments", ENV_NAME, SleepEnvironment)


@dataclass
class HttpRun:
    """One measurement: N rollouts of T turns at C in flight."""

    in_flight: int
    rollouts: int
    turns: int
    latency_s: float
    tool_s: float
    loop: str
    http_client: str
    wall_s: float
    ideal_s: float
    efficiency: float
    engine_cpu_s: float
    engine_cpu_per_turn_ms: float
    engine_cpu_share: float  # of one core, over the wall time
    server_cpu_s: float | None
    server_cpu_per_turn_ms: float | None
    requests: int | None
    retried: int | None
    messages: int
    rows_written: int
    states: dict[str, int]
    load_before: float
    # ms of CPU a turn by thread (`engine.benchmark.threads`); None off Linux, or sharded
    cpu_by_thread_ms: dict[str, float] | None = None
    shards: int = 1  # engine processes (`Engine(shards=…)`)
    shards_cpu_s: float = 0.0  # of engine_cpu_s, the shard processes' (start-up included)
    control: ControlRun | None = None  # the same workload through the HTTP client alone

    @property
    def over_floor(self) -> float | None:
        """Engine CPU per turn ÷ the control's: what the engine costs over the HTTP client."""
        if self.control is None or self.control.cpu_per_turn_ms <= 0:
            return None
        return self.engine_cpu_per_turn_ms / self.control.cpu_per_turn_ms


@dataclass(slots=True)
class ServerProcess:
    """The server's processes and where they listen."""

    url: str
    pids: list[int]

    def cpu_s(self) -> float | None:
        """User + system CPU of the server's processes so far (Linux /proc), else None."""
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for pid in self.pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                return None
            total += (int(fields[11]) + int(fields[12])) / tick
        return total


@contextlib.asynccontextmanager
async def openai_server(
    latency: float, turns: int, procs: int, reply_tokens: int = 24
) -> AsyncIterator[ServerProcess]:
    """Start the loopback server in its own processes; stop it on exit."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.benchmark.openai_server", "--latency", str(latency),
        "--turns", str(turns), "--procs", str(procs), "--reply-tokens", str(reply_tokens),
        "--answer", ANSWER, "--parent-pid", str(os.getpid()),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        try:
            async with asyncio.timeout(60):
                line = await proc.stdout.readline()
            ready = json.loads(line)
        except (TimeoutError, ValueError) as exc:
            raise ConfigError(
                "--http",
                f"the bench's model server did not start: {exc!r}",
                "run `python -m engine.benchmark.openai_server` to see why",
            ) from exc
        yield ServerProcess(f"http://{ready['host']}:{ready['port']}/v1", list(ready["pids"]))
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


def ideal_makespan(
    rollouts: int, in_flight: int, turns: int, latency: float, tool_s: float
) -> float:
    """Identical rollouts, C at a time, nothing but the model's and the tool's time."""
    return math.ceil(rollouts / in_flight) * (turns * latency + (turns - 1) * tool_s)


async def measure_floor(
    server: ServerProcess,
    in_flight: int,
    rollouts: int,
    turns: int,
    latency: float,
    tool_s: float,
    http_client: str | None = None,
) -> ControlRun:
    """The control (`engine.benchmark.http_control`) with this bench's agent and tool:
    the request fields the engine's body builder gives (`OpenAIPolicy.request_body`),
    through the HTTP client the engine's run uses."""
    raise_fd_limit(in_flight + 1024)
    body = OpenAIPolicy(server.url, MODEL).request_body([], SleepEnvironment.tools, SAMPLING, 1)
    del body["messages"]
    return await measure_control(
        server.url, in_flight, rollouts, turns, tool_s,
        ideal_s=ideal_makespan(rollouts, in_flight, turns, latency, tool_s),
        system_prompt=SYSTEM_PROMPT, fields=body, answer=ANSWER, http_client=http_client,
    )  # fmt: skip


def raise_fd_limit(need: int) -> None:
    """One socket per request in flight: lift the soft limit on open files toward the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, need)) if hard != resource.RLIM_INFINITY else max(soft, need)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


async def measure_http(
    server: ServerProcess,
    in_flight: int,
    rollouts: int,
    turns: int,
    latency: float,
    tool_s: float,
    store_dir: Path,
    http_client: str | None = None,
    shards: int = 1,
) -> HttpRun:
    """N rollouts of T turns at C in flight through the real engine; one fresh store.
    With ``shards`` > 1 the engine's CPU is this process's plus its shards'."""
    raise_fd_limit(in_flight + 1024)
    tasks = [Task(f"t{i}", f"Task #{i}: sleep {turns - 1} times, then answer.", ANSWER)
             for i in range(rollouts)]  # fmt: skip
    load = os.getloadavg()[0]
    async with OpenAIPolicy(
        server.url, MODEL, max_in_flight=in_flight, timeout=120.0,
        http_client=http_client,
    ) as policy:  # fmt: skip
        agent = Agent(
            policy,
            system_prompt=SYSTEM_PROMPT,
            max_turns=turns,
            sampling=SAMPLING,
        )
        async with Engine(
            store=store_dir / f"http-{in_flight}-{shards}.db",
            backend="inprocess",
            max_rollouts=in_flight,
            max_model_requests=in_flight,
            progress=False,
            shards=shards,
        ) as engine:
            server0 = server.cpu_s()
            threads0 = thread_cpu()
            cpu0 = time.process_time()
            t0 = time.perf_counter()
            run = await engine.run(
                tasks, agent, environment=EnvSpec(ENV_NAME, {"seconds": tool_s}), scorer="exact"
            )
            wall = time.perf_counter() - t0
            shards_cpu = sum(r.cpu_s or 0.0 for r in engine.last_shards)
            cpu = time.process_time() - cpu0 + shards_cpu
            threads = cpu_by_thread(threads0, thread_cpu())  # the store's writer still runs
            server1 = server.cpu_s()
            await engine.store.commit()
            states = await run.counts()
            messages = await engine.store.count_messages(run.id)
            rows = engine.store.rows_written
    ideal = ideal_makespan(rollouts, in_flight, turns, latency, tool_s)
    n_turns = rollouts * turns
    server_cpu = server1 - server0 if server0 is not None and server1 is not None else None
    return HttpRun(
        in_flight=in_flight,
        rollouts=rollouts,
        turns=turns,
        latency_s=latency,
        tool_s=tool_s,
        loop=eventloop.running(),
        http_client=policy.transport_name,
        wall_s=wall,
        ideal_s=ideal,
        efficiency=ideal / wall,
        engine_cpu_s=cpu,
        engine_cpu_per_turn_ms=cpu / n_turns * 1e3,
        engine_cpu_share=cpu / wall,
        server_cpu_s=server_cpu,
        server_cpu_per_turn_ms=server_cpu / n_turns * 1e3 if server_cpu is not None else None,
        # a shard's requests go through its own copy of the policy, counted there
        requests=policy.requests if shards == 1 else None,
        retried=policy.retried if shards == 1 else None,
        messages=messages,
        rows_written=rows,
        states=states,
        load_before=load,
        cpu_by_thread_ms=per_turn_ms(threads, n_turns) if shards == 1 else None,
        shards=shards,
        shards_cpu_s=shards_cpu,
    )


def _threads_cell(by_thread: dict[str, float] | None) -> str:
    if not by_thread:
        return "—"
    return ", ".join(f"{name} {ms:.3f}" for name, ms in by_thread.items() if ms >= 0.0005)


def http_markdown(command: str, runs: list[HttpRun], procs: int) -> str:
    first = runs[0]
    controlled = any(r.control is not None for r in runs)
    lines = [
        "# HTTP: the engine against a loopback OpenAI-compatible server",
        "",
        f"Command: `{command}`",
        "",
        f"Each rollout: {first.turns} model calls (server latency {first.latency_s * 1e3:g} ms, "
        f"shaped as vLLM's with `return_token_ids`) and {first.turns - 1} tool calls (an "
        f"in-process tool that sleeps {first.tool_s * 1e3:g} ms); the trace store records every "
        f"message. Server: {procs} process(es) of `engine.benchmark.openai_server`, its CPU "
        "counted apart. Ideal makespan = ceil(N / C) × (T × latency + (T − 1) × tool).",
        "",
        "| in flight | shards | rollouts | turns | loop | HTTP client | wall s | ideal s "
        "| efficiency | engine CPU/turn | engine CPU (cores) | server CPU/turn | messages "
        "| load before |",
        "|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        per = r.server_cpu_per_turn_ms
        server = f"{per:.3f} ms" if per is not None else "—"
        lines.append(
            f"| {r.in_flight:,} | {r.shards} | {r.rollouts:,} | {r.turns} | {r.loop} | "
            f"{r.http_client} | "
            f"{r.wall_s:,.1f} | "
            f"{r.ideal_s:,.1f} | {r.efficiency:.3f} | {r.engine_cpu_per_turn_ms:.3f} ms | "
            f"{r.engine_cpu_share:.2f} | {server} | {r.messages:,} | {r.load_before:.1f} |"
        )
    lines += [
        "",
        "Engine CPU/turn = this process's CPU time (event loop, HTTP client, store writer "
        "thread), plus its shard processes' whole CPU (start-up included) where shards > 1, "
        "÷ (rollouts × turns); engine CPU (cores) = that CPU ÷ wall time. The machine's "
        "load average before each run is shown: other jobs share its cores.",
        "",
    ]
    if controlled:
        lines += [
            "## The floor: the same workload with no engine",
            "",
            "Just before each engine run, at the same C: the same bodies to the same server "
            "through the engine's HTTP client (`engine.policy.transport`) opened as "
            "`OpenAIPolicy` opens it, orjson both ways, `asyncio.sleep` as the tool; no "
            "scheduler, recording, store or token bookkeeping "
            "(`engine/benchmark/http_control.py`). Its CPU per turn is what the HTTP client "
            "and JSON alone cost on this machine.",
            "",
            "| in flight | shards | floor efficiency | floor CPU/turn | engine efficiency "
            "| engine CPU/turn | engine ÷ floor | load before floor |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in runs:
            c = r.control
            if c is None:
                continue
            lines.append(
                f"| {r.in_flight:,} | {r.shards} | {c.efficiency:.3f} | "
                f"{c.cpu_per_turn_ms:.3f} ms | "
                f"{r.efficiency:.3f} | {r.engine_cpu_per_turn_ms:.3f} ms | "
                f"{r.over_floor:.2f}× | {c.load_before:.1f} |"
            )
        lines.append("")
    if any(r.cpu_by_thread_ms for r in runs):
        lines += [
            "## Where the CPU goes, by thread",
            "",
            "CPU ms a turn of each thread of this process (`engine/benchmark/threads.py`): "
            "`event loop` runs the driver, the recording and the HTTP client's Python side; "
            "`drillyard-store-writer` is the store's SQLite thread; `pyreqwest` is that "
            "client's Tokio runtime.",
            "",
            "| in flight | engine, by thread (ms a turn) | floor, by thread (ms a turn) |",
            "|---:|---|---|",
        ]
        for r in runs:
            if r.cpu_by_thread_ms is None:
                continue
            floor = r.control.cpu_by_thread_ms if r.control is not None else None
            lines.append(
                f"| {r.in_flight:,} | {_threads_cell(r.cpu_by_thread_ms)} | "
                f"{_threads_cell(floor)} |"
            )
        lines.append("")
    return "\n".join(lines)


def results_json(command: str, runs: list[HttpRun]) -> dict[str, Any]:
    return {"command": command, "runs": [{**asdict(r), "over_floor": r.over_floor} for r in runs]}
