"""``--gateway``: what the recording gateway adds to a model call.

The same workload — rollouts of an app's agent, each making ``calls`` model
calls on a growing conversation (a system prompt, the task, then a reply and
an observation per call) against a policy that answers after ``latency``
seconds — runs through the real engine, store and in-process backend with
the app reaching the policy four ways:

    policy      the policy called bare, no engine (reference)
    direct      ``ctx.complete``: the engine's recorded path, as the built-in loop takes it
    gateway     the gateway over loopback HTTP, one shared aiohttp client session
    openai      the gateway through openai-python's AsyncOpenAI (what apps use), one
                per rollout over one shared HTTP pool

``rollouts`` rollouts of ``calls`` calls each, at each count of rollouts in
flight (one at a time, then 256 at once, by default). Each call's
latency is timed in the app; CPU is the process's (the app's client runs in
the engine's process, as it does for a real app, so it is counted). The
gateway's cost is each mode minus ``direct``, within one run.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import orjson

from engine.agent import AppAgent
from engine.api import Engine
from engine.context import RolloutContext
from engine.environment import Observation, ToolCall, ToolSpec
from engine.policy.base import Completion, SamplingParams
from engine.tasks import Task, TaskView

MODES = ("policy", "direct", "gateway", "openai")
SYSTEM = "You are a careful agent. Think, call tools when useful, answer briefly. " * 4
OBSERVATION = "Observation: the tool returned 42 rows; the first one reads 'total 1234'. " * 2
TOOLS: list[ToolSpec] = [
    {"type": "function", "function": {
        "name": "search", "description": "Search the corpus.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}},
                       "required": ["query"]}}},
]  # fmt: skip


class LatencyPolicy:
    """A model that answers a fixed reply after ``latency`` seconds."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.model = "bench"

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None = None,
        params: SamplingParams | None = None,
        n: int = 1,
    ) -> list[Completion]:
        if self.latency > 0:
            await asyncio.sleep(self.latency)  # the model server's time
        return [
            Completion(
                content="I will look at the next rows before answering.",
                finish_reason="stop",
                usage={"prompt_tokens": 40 * len(messages), "completion_tokens": 12},
            )
        ] * n


class BenchEnvironment:
    """An environment with one tool the bench never calls (its spec is sent)."""

    tools = TOOLS

    async def reset(self, task: TaskView) -> Observation:
        return Observation(task.prompt)

    async def step(self, call: ToolCall) -> Observation:
        return Observation("unused")

    async def close(self) -> None:
        return None


@dataclass(slots=True)
class GatewayRow:
    mode: str
    in_flight: int
    calls: int
    wall_s: float
    calls_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_call: float
    added_p50_ms: float | None = None
    added_p99_ms: float | None = None
    added_cpu_ms_per_call: float | None = None


def orjson_dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


Call = Callable[[RolloutContext, list[dict[str, Any]]], Awaitable[str | None]]


def _caller(mode: str, http: aiohttp.ClientSession, pool: Any) -> Callable[[RolloutContext], Any]:
    """For each rollout, a function that makes one model call the ``mode`` way
    (``http``: the aiohttp session; ``pool``: the HTTP pool of the openai clients)."""

    def direct(ctx: RolloutContext) -> Call:
        async def call(ctx: RolloutContext, messages: list[dict[str, Any]]) -> str | None:
            return (await ctx.complete(messages, ctx.tools))[0].content

        return call

    def gateway(ctx: RolloutContext) -> Call:
        url, headers = (
            f"{ctx.base_url}/chat/completions",
            {"Authorization": f"Bearer {ctx.api_key}"},
        )

        async def call(ctx: RolloutContext, messages: list[dict[str, Any]]) -> str | None:
            body = {"model": "bench", "messages": messages, "tools": ctx.tools}
            async with http.post(url, json=body, headers=headers) as resp:
                data = await resp.json()
            content: str | None = data["choices"][0]["message"]["content"]
            return content

        return call

    def openai_client(ctx: RolloutContext) -> Call:
        from openai import AsyncOpenAI

        # one client per rollout (its own base URL and key) over one shared HTTP
        # pool: building an AsyncOpenAI with its own pool costs ~20 ms of CPU
        client = AsyncOpenAI(base_url=ctx.base_url, api_key=ctx.api_key, max_retries=0,
                             http_client=pool)  # fmt: skip

        async def call(ctx: RolloutContext, messages: list[dict[str, Any]]) -> str | None:
            reply = await client.chat.completions.create(
                model="bench", messages=cast(Any, messages), tools=cast(Any, ctx.tools)
            )
            return reply.choices[0].message.content

        return call

    return {"direct": direct, "gateway": gateway, "openai": openai_client}[mode]


@dataclass(slots=True)
class _Clock:
    """Per-call latencies, and wall and CPU from the first call's start to the last one's end."""

    latencies: list[float]
    first: tuple[float, float] | None = None
    last: tuple[float, float] = (0.0, 0.0)

    def start(self) -> float:
        if self.first is None:
            self.first = (time.perf_counter(), time.process_time())
        return time.perf_counter()

    def stop(self, started: float) -> None:
        now = time.perf_counter()
        self.latencies.append(now - started)
        self.last = (now, time.process_time())

    def spans(self) -> tuple[float, float]:
        assert self.first is not None
        return self.last[0] - self.first[0], self.last[1] - self.first[1]


async def _through_engine(
    mode: str, rollouts: int, calls: int, in_flight: int, policy: LatencyPolicy, store: Path
) -> _Clock:
    clock = _Clock([])
    async with contextlib.AsyncExitStack() as stack:
        connector = aiohttp.TCPConnector(limit=0)
        http = await stack.enter_async_context(
            aiohttp.ClientSession(connector=connector, json_serialize=orjson_dumps)
        )
        pool = None
        if mode == "openai":
            from openai import DefaultAsyncHttpxClient

            pool = await stack.enter_async_context(DefaultAsyncHttpxClient())
        make = _caller(mode, http, pool)

        async def solve(task: TaskView, ctx: RolloutContext) -> str:
            call = make(ctx)
            messages: list[dict[str, Any]] = [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": task.prompt},
            ]
            for _ in range(calls):
                start = clock.start()
                text = await call(ctx, messages)
                clock.stop(start)
                messages += [{"role": "assistant", "content": text},
                             {"role": "user", "content": OBSERVATION}]  # fmt: skip
            return "done"

        tasks = [Task(f"t{i}", f"Task {i}: what is the total?", "done") for i in range(rollouts)]
        async with Engine(store=store, max_rollouts=in_flight, max_model_requests=in_flight,
                          progress=False) as engine:  # fmt: skip
            run = await engine.run(
                tasks, AppAgent(solve, policy), environment=BenchEnvironment, scorer="exact"
            )
            counts = await run.counts()
    if counts != {"done": rollouts}:
        raise RuntimeError(f"gateway bench: rollouts did not all finish: {counts}")
    return clock


async def _bare(rollouts: int, calls: int, in_flight: int, policy: LatencyPolicy) -> _Clock:
    clock = _Clock([])
    slots = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with slots:
            await rollout(i)

    async def rollout(i: int) -> None:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": f"Task {i}"},
        ]
        for _ in range(calls):
            start = clock.start()
            (reply,) = await policy.complete(messages, TOOLS)
            clock.stop(start)
            messages += [{"role": "assistant", "content": reply.content},
                         {"role": "user", "content": OBSERVATION}]  # fmt: skip

    await asyncio.gather(*(one(i) for i in range(rollouts)))
    return clock


async def measure(
    mode: str, rollouts: int, calls: int, in_flight: int, latency: float, work: Path
) -> GatewayRow:
    policy = LatencyPolicy(latency)
    if mode == "policy":
        clock = await _bare(rollouts, calls, in_flight, policy)
    else:
        store = work / f"{mode}-{in_flight}.db"
        clock = await _through_engine(mode, rollouts, calls, in_flight, policy, store)
    wall, cpu = clock.spans()
    latencies = clock.latencies
    n = len(latencies)
    return GatewayRow(
        mode, in_flight, n, wall, n / wall,
        1000 * statistics.median(latencies), 1000 * _quantile(latencies, 0.99), 1000 * cpu / n,
    )  # fmt: skip


def with_added(rows: list[GatewayRow]) -> list[GatewayRow]:
    """Each row's cost over ``direct`` at the same concurrency."""
    base = {r.in_flight: r for r in rows if r.mode == "direct"}
    for r in rows:
        b = base.get(r.in_flight)
        if b is not None and r.mode in ("gateway", "openai"):
            r.added_p50_ms = r.p50_ms - b.p50_ms
            r.added_p99_ms = r.p99_ms - b.p99_ms
            r.added_cpu_ms_per_call = r.cpu_ms_per_call - b.cpu_ms_per_call
    return rows


async def run_gateway_bench(
    *, rollouts: int, in_flight: list[int], calls: int, latency: float, work: Path,
    modes: tuple[str, ...] = MODES, log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    rows: list[GatewayRow] = []
    for concurrency in in_flight:
        for mode in modes:
            if mode == "openai":
                try:
                    import openai  # noqa: F401
                except ImportError:
                    log("skipped openai: pip install -e '.[agents]'")
                    continue
            log(f"{mode}: {rollouts} rollouts × {calls} calls, {concurrency} in flight ...")
            rows.append(await measure(mode, rollouts, calls, concurrency, latency, work))
    return {
        "rollouts": rollouts,
        "calls_per_rollout": calls,
        "latency_s": latency,
        "rows": [asdict(r) for r in with_added(rows)],
    }


def gateway_markdown(command: str, result: dict[str, Any]) -> str:
    head = (
        "| mode | in flight | calls | calls/s | p50 ms | p99 ms | CPU ms/call |"
        " added p50 ms | added p99 ms | added CPU ms/call |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )

    def f(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    lines = [
        f"| {r['mode']} | {r['in_flight']} | {r['calls']} | {r['calls_per_s']:,.0f} |"
        f" {f(r['p50_ms'])} | {f(r['p99_ms'])} | {f(r['cpu_ms_per_call'])} |"
        f" {f(r['added_p50_ms'])} | {f(r['added_p99_ms'])} | {f(r['added_cpu_ms_per_call'])} |\n"
        for r in result["rows"]
    ]
    return (
        f"# The gateway's cost per model call\n\nCommand: `{command}`\n\n"
        f"{result['rollouts']} rollouts × {result['calls_per_rollout']} model calls each"
        f" (a conversation growing by a reply and an observation a call), policy latency"
        f" {result['latency_s'] * 1000:g} ms. Modes: `policy` the policy alone"
        " (no engine), `direct` the engine's recorded path (`ctx.complete`, as the built-in"
        " loop), `gateway` loopback HTTP with one aiohttp session, `openai` openai-python's"
        " AsyncOpenAI (one per rollout, one shared HTTP pool). Added = the mode minus"
        " `direct` at the same concurrency. CPU is the whole process's (engine, store"
        " writer, the app's HTTP client) per call.\n\n" + head + "".join(lines)
    )
