"""``--scale`` (many concurrent rollouts in one process) and ``--ingest`` (the
trace store alone, against plain sqlite3 on the same rows in the same run)."""

from __future__ import annotations

import asyncio
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any

from engine.agent import Agent
from engine.api import Engine
from engine.environment import EnvSpec
from engine.messages import Category, Message
from engine.policy.base import SamplingParams
from engine.store import TraceStore

from .cycle import workload_tasks
from .workload import TaskInfo, Turn, Workload
from .world import ENV_NAME, ScriptedLatencyPolicy


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def measure_scale(
    rollouts: int, turns: int, model_s: float, tool_s: float, store_dir: Path
) -> dict[str, Any]:
    """``rollouts`` at once in one process; lag, memory per idle rollout, store rate.

    Model and tool latencies are lognormal (sigma 0.5) around ``model_s`` and
    ``tool_s``, real time (no compression).
    """
    compress = 1.0
    rng = random.Random(0)

    def jitter(median: float) -> float:
        return median * math.exp(rng.gauss(0, 0.5))

    scripts = [
        [Turn(jitter(model_s), "search", jitter(tool_s)) for _ in range(turns - 1)]
        + [Turn(jitter(model_s), None)]
        for _ in range(rollouts)
    ]
    w = Workload(rollouts, 1, scripts, 0, [TaskInfo(1, turns)] * rollouts)
    policy = ScriptedLatencyPolicy(w, compress, batch_slowdown=0.0)
    agent = Agent(policy, max_turns=turns + 1, sampling=SamplingParams(seed=0))
    lags: list[float] = []
    stamps: list[float] = []
    peak = {"rss": 0}
    done = asyncio.Event()

    async def monitor() -> None:
        interval = 0.01
        while not done.is_set():
            t = time.perf_counter()
            await asyncio.sleep(interval)
            lags.append(time.perf_counter() - t - interval)
            stamps.append(t)
            peak["rss"] = max(peak["rss"], _rss_bytes())

    async with Engine(
        store=store_dir / "scale.db",
        backend="inprocess",
        max_rollouts=rollouts,
        max_model_requests=rollouts,
        progress=False,
    ) as engine:
        base = _rss_bytes()
        mon = asyncio.create_task(monitor())
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        run = await engine.run(
            workload_tasks(w, "given"), agent, environment=EnvSpec(ENV_NAME), scorer="exact"
        )
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        done.set()
        await mon
        states = await run.counts()
        rows = engine.store.rows_written
    windows: dict[int, list[float]] = {}
    for at, lag in zip(stamps, lags, strict=True):
        windows.setdefault(int((at - t0) // 10), []).append(lag)
    by_window = [_quantile(sorted(v), 0.99) * 1e3 for _, v in sorted(windows.items())]
    lags.sort()

    def p(q: float) -> float:
        return lags[min(len(lags) - 1, int(q * len(lags)))] * 1e3 if lags else float("nan")

    return {
        "rollouts": rollouts,
        "turns_per_rollout": turns,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_per_turn_ms": cpu / (rollouts * turns) * 1e3,
        "lag_p50_ms": p(0.5),
        "lag_p99_ms": p(0.99),
        "lag_max_ms": lags[-1] * 1e3 if lags else None,
        "lag_p99_ms_per_10s": [round(x, 1) for x in by_window],
        "rss_base_mb": base / 2**20,
        "rss_peak_mb": peak["rss"] / 2**20,
        "kb_per_rollout": (peak["rss"] - base) / rollouts / 1024,
        "rows": rows,
        "rows_per_s": rows / wall,
        "states": states,
    }


def _quantile(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def raw_sqlite_ingest(rows: list[tuple[Any, ...]], path: Path, batch: int) -> float:
    """The same rows into the same schema with plain sqlite3, no engine: rows/s."""
    import sqlite3

    from engine.schema import MIGRATIONS
    from engine.store import WRITER_PRAGMAS

    db = sqlite3.connect(path, isolation_level=None)
    try:
        for pragma in WRITER_PRAGMAS:
            db.execute(f"PRAGMA {pragma}")
        db.executescript(MIGRATIONS[0][1])
        sql = (
            "INSERT INTO messages(rollout_num, seq, attempt, sender, receiver, category, topic,"
            " priority, headers, payload, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
        )
        t0 = time.perf_counter()
        for start in range(0, len(rows), batch):
            db.execute("BEGIN")
            db.executemany(sql, rows[start : start + batch])
            db.execute("COMMIT")
        return len(rows) / (time.perf_counter() - t0)
    finally:
        db.close()


async def measure_ingest(messages: int, store_dir: Path) -> dict[str, Any]:
    """Ingest through the batching writer, and (same run, same rows) plain sqlite3."""
    batch = 5000
    payload = {"content": "x" * 200, "tool_calls": [], "finish_reason": "stop"}
    async with TraceStore(store_dir / "ingest.db", batch_size=batch) as store:
        store.create_run("ingest", {}, "bench")
        for r in range(1000):
            store.add_rollout(f"r{r}", "ingest", f"t{r}", 0, "bench")
        await store.commit()
        t0 = time.perf_counter()
        for i in range(messages):
            store.record(
                Message(
                    "ingest", f"r{i % 1000}", i // 1000, 1, "policy", "agent",
                    Category.MODEL_REPLY, "turn", payload,
                )
            )  # fmt: skip
            if i % batch == batch - 1:
                await asyncio.sleep(0)  # let the writer run, as a live engine would
        await store.commit()
        wall = time.perf_counter() - t0
        count = await store.count_messages("ingest")
    body = json.dumps(payload)
    rows = [
        (i % 1000 + 1, i // 1000, 1, "policy", "agent", "model_reply", "turn", 0, None, body, 0.0)
        for i in range(messages)
    ]
    raw = await asyncio.to_thread(raw_sqlite_ingest, rows, store_dir / "raw.db", batch)
    return {
        "messages": messages,
        "stored": count,
        "wall_s": wall,
        "messages_per_s": messages / wall,
        "raw_sqlite_rows_per_s": raw,
        "share_of_raw_sqlite": messages / wall / raw,
    }
