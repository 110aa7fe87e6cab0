"""``python -m engine.view.bench``: viewer page loads on a million-message store.

Builds a store in the trace store's own schema (migrated by `TraceStore`, then
filled by ``executemany`` as the ingest bench's baseline does): a run of
``--tasks`` × ``--samples`` rollouts of ``--messages`` messages each (model
replies with token ids and usage, tool calls and results, state transitions,
attempts with retries on eight workers, faults with varying digits), and a
second, small run of the same tasks to compare with. Then serves it with the
real viewer on loopback and times every page over HTTP (``--repeat`` loads
each, body read whole), in Chromium (navigation to the load event) unless
``--no-browser``, and an export of ``--export-rollouts`` rollouts. Reports
median/p95/max per page and the process's peak RSS against the store's size.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import aiohttp
import orjson

from engine.benchmark.report import console, write_results
from engine.store import WRITER_PRAGMAS, TraceStore
from engine.view.export import export_run
from engine.view.server import Viewer

WORKERS = 8
BIG, SMALL = "big", "small"


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _payloads() -> dict[str, str]:
    text = "The page lists the 2019 figures; the third column is the one asked for. " * 4
    return {
        "state": orjson.dumps({"from": "acting", "to": "generating"}).decode(),
        "model_request": orjson.dumps({"turn": 1, "n_messages": 12, "seed": 7}).decode(),
        "model_reply": orjson.dumps(
            {
                "content": text,
                "tool_calls": [
                    {
                        "id": "c1",
                        "name": "browser_goto",
                        "arguments": '{"url": "http://127.0.0.1/page"}',
                        "error": None,
                    }
                ],
                "finish_reason": "tool_calls",
                "token_ids": list(range(120)),
                "usage": {"prompt_tokens": 2400, "completion_tokens": 120},
                "model": "qwen",
                "policy_version": "v3",
            }
        ).decode(),
        "tool_call": orjson.dumps(
            {"id": "c1", "name": "browser_goto", "arguments": '{"url": "http://127.0.0.1/page"}'}
        ).decode(),
        "tool_result": orjson.dumps(
            {
                "call_id": "c1",
                "content": text * 3,
                "done": False,
                "answer": None,
                "is_error": False,
                "info": {},
            }
        ).decode(),
    }


_CYCLE = ("state", "model_request", "model_reply", "state", "tool_call", "tool_result")


def build_store(
    path: Path, tasks: int, samples: int, messages: int, seed: int = 0
) -> dict[str, Any]:
    """Fill a fresh store; return what it holds."""
    asyncio.run(_migrate(path))
    rng = random.Random(seed)
    payloads = _payloads()
    db = sqlite3.connect(path, isolation_level=None)
    t0 = time.perf_counter()
    counts: dict[str, Any] = {"messages": 0, "rollouts": 0, "attempts": 0}
    try:
        for pragma in WRITER_PRAGMAS:
            db.execute(f"PRAGMA {pragma}")
        db.execute("BEGIN")
        start = time.time() - 3600
        num = 0
        for run_id, n_samples, n_messages in ((BIG, samples, messages), (SMALL, 2, 10)):
            config = {
                "samples": n_samples,
                "agent": {
                    "name": "bench",
                    "policy": {"kind": "openai", "model": "qwen"},
                    "max_turns": 50,
                },
                "backend": "subprocess",
            }
            db.execute(
                "INSERT INTO runs(id, created_at, finished_at, status, config, code_version)"
                " VALUES (?,?,?,?,?,?)",
                (
                    run_id,
                    start + (run_id == SMALL),
                    start + 3600,
                    "finished",
                    orjson.dumps(config).decode(),
                    "bench",
                ),
            )
            db.executemany(
                "INSERT INTO tasks(run_id, task_id, ord, data) VALUES (?,?,?,?)",
                (
                    (
                        run_id,
                        f"task-{t:05d}",
                        t,
                        orjson.dumps(
                            {
                                "id": f"task-{t:05d}",
                                "prompt": f"Question {t}",
                                "attachments": [],
                                "metadata": {"level": 1 + t % 3},
                                "ground_truth": str(t),
                            }
                        ).decode(),
                    )
                    for t in range(tasks)
                ),
            )
            rollouts, attempts = [], []
            for t in range(tasks):
                for s in range(n_samples):
                    num += 1
                    rid = f"{run_id}.{num}"
                    roll = rng.random()
                    state = (
                        "done"
                        if roll < 0.8
                        else "failed"
                        if roll < 0.9
                        else "error"
                        if roll < 0.97
                        else "timed_out"
                    )
                    reward = (1.0 if rng.random() < 0.5 else 0.0) if state == "done" else None
                    begun = start + rng.random() * 3000
                    worker = f"worker-{rng.randrange(WORKERS)}"
                    error = {
                        "error": f"EnvironmentLost: worker {worker} at 10.0.0.{rng.randrange(250)}"
                        f":{rng.randrange(9000, 9999)} went away",
                        "failed": "turn limit of 50 reached without an answer",
                        "timed_out": "rollout deadline of 600.0s",
                    }.get(state)
                    tries = 2 if state == "error" else 1
                    for a in range(1, tries + 1):
                        attempts.append(
                            (
                                rid,
                                a,
                                state if a == tries else "error",
                                error,
                                worker,
                                begun + (a - 1) * 30,
                                begun + a * 30 + rng.random() * 200,
                            )
                        )
                    rollouts.append(
                        (
                            num,
                            rid,
                            run_id,
                            f"task-{t:05d}",
                            s,
                            tries,
                            state,
                            reward,
                            "42" if reward is not None else None,
                            error,
                            n_messages // 6,
                            begun,
                            begun,
                            begun + tries * 200,
                            "subprocess",
                            worker,
                            "v3",
                        )
                    )
            db.executemany(
                "INSERT INTO rollouts(num, id, run_id, task_id, sample_index, attempt, state,"
                " reward, answer, error, turns, created_at, started_at, finished_at, backend,"
                " worker, policy_version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                rollouts,
            )
            db.executemany(
                "INSERT INTO attempts(rollout_id, attempt, state, error, worker, started_at,"
                " finished_at) VALUES (?,?,?,?,?,?,?)",
                attempts,
            )
            counts["rollouts"] += len(rollouts)
            counts["attempts"] += len(attempts)
            for chunk in _chunks(_messages(rollouts, n_messages, payloads), 50_000):
                db.executemany(
                    "INSERT INTO messages(rollout_num, seq, attempt, sender, receiver, category,"
                    " topic, priority, headers, payload, created_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    chunk,
                )
                counts["messages"] += len(chunk)
        db.execute("COMMIT")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    counts["build_s"] = time.perf_counter() - t0
    counts["store_mb"] = path.stat().st_size / 2**20
    return counts


async def _migrate(path: Path) -> None:
    async with TraceStore(path):
        pass


def _messages(
    rollouts: list[tuple[Any, ...]], n: int, payloads: dict[str, str]
) -> Iterator[tuple[Any, ...]]:
    for r in rollouts:
        num, begun = r[0], r[11]
        for seq in range(n):
            category = _CYCLE[seq % len(_CYCLE)]
            yield (
                num,
                seq,
                1,
                "engine",
                "engine",
                category,
                f"turn {seq // 6 + 1}",
                0,
                None,
                payloads[category],
                begun + seq * 2.0,
            )


def _chunks(rows: Iterator[tuple[Any, ...]], size: int) -> Iterator[list[tuple[Any, ...]]]:
    chunk: list[tuple[Any, ...]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _pages(store: Path) -> list[tuple[str, str, dict[str, Any]]]:
    db = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        deep = db.execute("SELECT MAX(num) - 150 FROM rollouts WHERE run_id=?", (BIG,)).fetchone()[
            0
        ]
        last_id = db.execute(
            "SELECT id FROM rollouts WHERE run_id=? ORDER BY num DESC LIMIT 1", (BIG,)
        ).fetchone()[0]
        first_id = db.execute(
            "SELECT id FROM rollouts WHERE run_id=? ORDER BY num LIMIT 1", (BIG,)
        ).fetchone()[0]
    finally:
        db.close()
    return [
        ("runs", "/", {}),
        ("run", "/run", {"id": BIG}),
        ("run, live JSON", "/run", {"id": BIG, "live": 1}),
        ("rollouts, first page", "/run/rollouts", {"id": BIG}),
        ("rollouts, deep page", "/run/rollouts", {"id": BIG, "after": deep}),
        ("rollouts, errors", "/run/rollouts", {"id": BIG, "state": "error"}),
        ("groups", "/run/groups", {"id": BIG}),
        ("compare", "/run/compare", {"id": BIG, "with": SMALL}),
        ("timeline SVG", "/run/gantt.svg", {"id": BIG}),
        ("throughput SVG", "/run/throughput.svg", {"id": BIG}),
        ("rollout, first", "/rollout", {"id": first_id}),
        ("rollout, last", "/rollout", {"id": last_id}),
        ("rollout, live JSON", "/rollout", {"id": last_id, "live": 1, "tail": 90}),
        ("one message JSON", "/rollout/message.json", {"id": last_id, "seq": 2}),
    ]


async def _time_http(
    viewer: Viewer, pages: list[tuple[str, str, dict[str, Any]]], repeat: int
) -> list[dict[str, Any]]:
    out = []
    headers = {"Authorization": f"token {viewer.token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        for name, path, params in pages:
            address = viewer.base_url + path + "?" + urlencode(params)
            times, size = [], 0
            for i in range(repeat + 1):
                t = time.perf_counter()
                async with http.get(address) as resp:
                    body = await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"{name}: HTTP {resp.status}: {body[:200]!r}")
                if i:  # the first load warms SQLite's page cache
                    times.append(time.perf_counter() - t)
                size = len(body)
            times.sort()
            out.append(
                {
                    "page": name,
                    "path": path,
                    "bytes": size,
                    "median_ms": statistics.median(times) * 1e3,
                    "p95_ms": times[min(len(times) - 1, int(0.95 * len(times)))] * 1e3,
                    "max_ms": times[-1] * 1e3,
                }
            )
    return out


async def _time_browser(
    viewer: Viewer, pages: list[tuple[str, str, dict[str, Any]]], repeat: int
) -> list[dict[str, Any]]:
    from playwright.async_api import async_playwright

    from tools.browser import CHROMIUM, CHROMIUM_ARGS

    out = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await (await browser.new_context()).new_page()
            await page.goto(viewer.url)
            for name, path, params in pages:
                if "JSON" in name or "SVG" in name:
                    continue
                times = []
                for i in range(repeat + 1):
                    await page.goto(viewer.base_url + path + "?" + urlencode(params))
                    load = await page.evaluate(
                        "() => performance.getEntriesByType('navigation')[0].loadEventEnd"
                    )
                    if i:
                        times.append(load)
                out.append(
                    {"page": name, "median_ms": statistics.median(times), "max_ms": max(times)}
                )
        finally:
            await browser.close()
    return out


async def measure(args: argparse.Namespace, store: Path) -> dict[str, Any]:
    pages = _pages(store)
    rss0 = _rss_mb()
    async with Viewer(store) as viewer:
        http = await _time_http(viewer, pages, args.repeat)
        browser = (
            await _time_browser(viewer, pages, max(3, args.repeat // 4)) if args.browser else []
        )
    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        n = await export_run(store, BIG, Path(tmp) / "big.html", limit=args.export_rollouts)
        size = (Path(tmp) / "big.html").stat().st_size
    export_s = time.perf_counter() - t
    rss1 = _rss_mb()
    return {
        "http": http,
        "browser": browser,
        "rss_before_mb": rss0,
        "rss_peak_mb": rss1,
        "export": {"rollouts": n, "seconds": export_s, "mb": size / 2**20},
    }


def markdown(command: str, built: dict[str, Any], r: dict[str, Any]) -> str:
    lines = [
        "# Viewer page loads on a million-message store",
        "",
        f"Command: `{command}`",
        "",
        f"Store: {built['messages']:,} messages, {built['rollouts']:,} rollouts, "
        f"{built['attempts']:,} attempts, {built['store_mb']:.0f} MB on disk "
        f"(built in {built['build_s']:.0f} s, in another process). Peak RSS of the process "
        f"serving it, over every page below and the export: {r['rss_peak_mb']:.0f} MB "
        f"({r['rss_before_mb']:.0f} MB before the first page).",
        "",
        "Over HTTP on loopback (body read whole; first load not counted):",
        "",
        "| page | median | p95 | max | bytes |",
        "|---|---:|---:|---:|---:|",
    ]
    for p in r["http"]:
        lines.append(
            f"| {p['page']} | {p['median_ms']:.1f} ms | {p['p95_ms']:.1f} ms | "
            f"{p['max_ms']:.1f} ms | {p['bytes']:,} |"
        )
    if r["browser"]:
        lines += [
            "",
            "In Chromium (navigation start to the load event, images included):",
            "",
            "| page | median | max |",
            "|---|---:|---:|",
        ]
        for p in r["browser"]:
            lines.append(f"| {p['page']} | {p['median_ms']:.0f} ms | {p['max_ms']:.0f} ms |")
    e = r["export"]
    lines += [
        "",
        f"Export of {e['rollouts']} rollouts to one HTML file: {e['seconds']:.2f} s, "
        f"{e['mb']:.1f} MB.",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.view.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--tasks", type=int, default=1000, help="tasks of the big run (1000)")
    p.add_argument("--samples", type=int, default=10, help="samples per task (10)")
    p.add_argument("--messages", type=int, default=100, help="messages per rollout (100)")
    p.add_argument("--repeat", type=int, default=20, help="timed loads per page (20)")
    p.add_argument(
        "--browser",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time page loads in Chromium (on)",
    )
    p.add_argument("--export-rollouts", type=int, default=100, help="rollouts to export (100)")
    p.add_argument("--store", type=Path, help="keep the built store here (default: a temp dir)")
    p.add_argument("--name", default="view", help="results file name under --out (view)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    command = "python -m engine.view.bench" + (" " + " ".join(argv) if argv else "")
    with tempfile.TemporaryDirectory() as tmp:
        store = args.store or Path(tmp) / "view-bench.db"
        if store.exists():
            raise SystemExit(f"{store} exists: pass a new path to --store")
        console.print(f"building {store} …")
        # in a child process, so this one's peak memory is the viewer's own
        spawn = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
            built = pool.submit(
                build_store, store, args.tasks, args.samples, args.messages
            ).result()
        console.print(f"{built['messages']:,} messages in {built['build_s']:.1f} s")
        r = asyncio.run(measure(args, store))
    md = markdown(command, built, r)
    console.print(md)
    write_results(args.name, {"command": command, "store": built, **r}, md, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
