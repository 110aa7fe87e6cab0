"""The benchmark harness on tiny workloads: it runs, its bound and accounting
are right, efficiency never exceeds 1, the engine never uses more slots than
it was given, and it writes its results. Figures are not asserted."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.bench import PAPER_SEQUENTIAL_S, main, make_workload
from engine.benchmark.ceiling import ceiling_sweep, order_durations, zero_overhead_efficiency
from engine.benchmark.workload import hint_order, list_schedule
from engine.benchmark.world import world_clock

TINY = ["--tasks", "2", "--samples", "4", "--compress", "8000", "--no-progress",
        "--ceiling-seeds", "12"]  # fmt: skip


def test_the_workload_is_seeded_and_calibrated() -> None:
    a, b = make_workload(4, 2, seed=1), make_workload(4, 2, seed=1)
    assert [[t.model_s for t in s] for s in a.scripts] == [
        [t.model_s for t in s] for s in b.scripts
    ]
    assert a.total_s == pytest.approx(PAPER_SEQUENTIAL_S)
    assert all(s[-1].tool is None and all(t.tool for t in s[:-1]) for s in a.scripts)
    assert make_workload(4, 2, seed=2).total_s == pytest.approx(PAPER_SEQUENTIAL_S)
    steps = [a.info[j].steps for j in hint_order(a)]
    assert steps == sorted(steps, reverse=True)


def test_list_schedule_is_greedy_in_the_given_order() -> None:
    assert list_schedule([3, 3, 2, 2, 2], 2) == 7  # 3+2+2 on one slot, 3+2 on the other
    assert list_schedule([2, 2, 2, 3, 3], 2) == 7
    assert list_schedule([1, 1, 1, 1, 6], 2) == 8  # the long one last: a tail
    assert list_schedule([6, 1, 1, 1, 1], 2) == 6


def test_the_world_clock_never_fires_early() -> None:
    async def go() -> list[tuple[float, float]]:
        clock = world_clock()
        out = []
        for d in (0.0, 0.001, 0.004):
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            work = await clock.sleep(d)
            out.append((work, loop.time() - t0))
        return out

    for work, waited in asyncio.run(go()):
        assert waited >= work - 1e-6


def _check_run(run: dict[str, Any], rollouts: int) -> None:
    assert run["states"] == {"done": rollouts}
    assert 0 < run["efficiency"] <= 1.0
    # the physical bound: max(longest rollout, total work / slots), from the work done
    assert run["bound_paper_s"] == pytest.approx(
        max(run["longest_paper_s"], run["work_paper_s"] / run["slots"])
    )
    # the accounting closes: bound + engine loss + tail loss = measured makespan
    assert run["bound_paper_s"] + run["engine_loss_paper_s"] + run["tail_loss_paper_s"] == (
        pytest.approx(run["paper_s"])
    )
    # a zero-overhead engine is never slower than the bound allows
    assert run["ideal_order_paper_s"] >= run["bound_paper_s"] * (1 - 1e-9)
    lanes = {b["lane"] for b in run["timeline"]}
    assert len(lanes) <= run["slots"]  # never more rollouts at once than slots
    assert sum(1 for b in run["timeline"] if b["state"] == "done") == rollouts


def test_cycle_bench_runs_and_writes_results(tmp_path: Path) -> None:
    main([*TINY, "--slots", "4", "--out", str(tmp_path), "--name", "tiny"])
    res = json.loads((tmp_path / "tiny.json").read_text())
    md = (tmp_path / "tiny.md").read_text()
    assert md.startswith("# Rollout cycle") and "every assumption" in md
    assert (tmp_path / "tiny.png").read_bytes()[:4] == b"\x89PNG"
    labels = [r["label"] for r in res["runs"]]
    assert labels == ["sequential", "bare-loop", "inprocess-4-given", "inprocess-4"]
    for run in res["runs"]:
        _check_run(run, 8)
    seq = res["runs"][0]
    assert seq["slots"] == 1 and seq["bound_paper_s"] == pytest.approx(seq["work_paper_s"])
    assert seq["rows"] > 0 and seq["peak_rss_mb"] > 0
    assert res["training"]["source"] == "paper's figure"
    ceiling = res["ceiling"]
    assert ceiling["seeds"] == 12
    assert {(r["slots"], r["order"]) for r in ceiling["rows"]} == {
        (4, "given"),
        (4, "hint"),
        (4, "clairvoyant"),
    }
    assert "What any engine can reach" in md


def test_the_ceiling_is_the_zero_overhead_list_schedule() -> None:
    # bound max(3, 12/2 = 6) over the greedy makespan 7
    assert zero_overhead_efficiency([3, 3, 2, 2, 2], 2) == pytest.approx(6 / 7)
    assert zero_overhead_efficiency([9, 1, 1], 3) == 1.0  # the longest rollout is the bound
    w = make_workload(3, 5, seed=4)
    clairvoyant = order_durations(w, "clairvoyant")
    assert clairvoyant == sorted(clairvoyant, reverse=True)
    hint = order_durations(w, "hint")
    first = hint_order(w)[0]
    assert hint[:5] == [w.rollout_s(first * 5 + s) for s in range(5)]
    assert sorted(hint) == sorted(clairvoyant) == sorted(order_durations(w, "given"))
    rows = ceiling_sweep(3, 5, [2, 4], seeds=20)
    assert len(rows) == 6
    for r in rows:
        assert 0 < r.p10 <= r.median <= 1 and 0 < r.mean <= 1 and 0 <= r.share_at_target <= 1
    by = {(r.slots, r.order): r for r in rows}
    for m in (2, 4):  # knowing every duration never loses on average to guessing
        assert by[m, "clairvoyant"].mean >= by[m, "hint"].mean - 1e-9
    with pytest.raises(ValueError, match="unknown order"):
        order_durations(w, "fastest")


def test_overlap_trains_every_group(tmp_path: Path) -> None:
    main(["--overlap", *TINY, "--slots", "4", "--out", str(tmp_path)])
    r = json.loads((tmp_path / "overlap.json").read_text())
    assert r["groups_trained"] == 2
    assert r["rollout_paper_s"] <= r["cycle_overlapped_paper_s"] <= r["cycle_serial_paper_s"]
    assert all(t["start"] <= t["end"] for t in r["trained"])


@pytest.mark.skipif(
    importlib.util.find_spec("backends.subprocess") is None, reason="no subprocess backend"
)
def test_cycle_on_worker_processes(tmp_path: Path) -> None:
    main([*TINY, "--slots", "4", "--backend", "subprocess", "--no-control",
          "--no-compare-order", "--no-plot", "--out", str(tmp_path)])  # fmt: skip
    runs = json.loads((tmp_path / "cycle.json").read_text())["runs"]
    assert [r["backend"] for r in runs] == ["inprocess", "subprocess"]
    _check_run(runs[1], 8)


def test_scale_and_ingest_modes_run(tmp_path: Path) -> None:
    main(["--scale", "--rollouts", "200", "--turns", "2", "--model-s", "0.05",
          "--tool-s", "0.01", "--out", str(tmp_path)])  # fmt: skip
    main(["--ingest", "--messages", "5000", "--out", str(tmp_path)])
    scale = json.loads((tmp_path / "scale.json").read_text())
    assert scale["states"] == {"done": 200} and scale["kb_per_rollout"] > 0
    assert json.loads((tmp_path / "ingest.json").read_text())["stored"] == 5000


def test_gateway_mode_compares_every_way_to_the_model(tmp_path: Path) -> None:
    main(["--gateway", "--gateway-rollouts", "6", "--gateway-in-flight", "1,3",
          "--gateway-calls", "2", "--out", str(tmp_path)])  # fmt: skip
    result = json.loads((tmp_path / "gateway.json").read_text())
    rows = {(r["mode"], r["in_flight"]): r for r in result["rows"]}
    modes = {"policy", "direct", "gateway"}
    if importlib.util.find_spec("openai"):
        modes.add("openai")
    assert set(rows) == {(m, n) for m in modes for n in (1, 3)}
    assert all(r["calls"] == 12 for r in rows.values())
    for n in (1, 3):  # the gateway's cost is read against the direct path
        gw, direct = rows[("gateway", n)], rows[("direct", n)]
        assert gw["added_p50_ms"] == gw["p50_ms"] - direct["p50_ms"]
        assert direct["added_p50_ms"] is None
    assert "| gateway | 3 | 12 |" in (tmp_path / "gateway.md").read_text()


def test_bad_options_are_refused() -> None:
    for argv in (["--slots", "1"], ["--slots", "x"], ["--backend-options", "[1]"]):
        with pytest.raises(SystemExit):
            main(argv)


@pytest.mark.vllm
def test_real_mode_calls_the_model_and_the_tools(vllm_server: Any, tmp_path: Path) -> None:
    main(["--real", "--policy-url", vllm_server.base_url, "--model-name", vllm_server.model,
          "--real-tasks", "2", "--real-samples", "2", "--real-concurrency", "4",
          "--no-progress", "--out", str(tmp_path)])  # fmt: skip
    r = json.loads((tmp_path / "real.json").read_text())
    for run in (r["sequential"], r["concurrent"]):
        assert run["states"] == {"done": 4}
        assert run["model_calls"] == 8 and run["tool_calls"] == 4


def test_http_mode_drives_real_http_and_accounts_for_every_turn(tmp_path: Path) -> None:
    main(["--http", "--rollouts", "6", "--turns", "3", "--in-flight", "1,4", "--latency", "0.02",
          "--tool-sleep", "0.01", "--server-procs", "1", "--out", str(tmp_path),
          "--name", "h"])  # fmt: skip
    res = json.loads((tmp_path / "h.json").read_text())
    assert res["command"].startswith("python -m engine.bench --http")
    one, four = res["runs"]
    for run in (one, four):
        assert run["states"] == {"done": 6}
        assert run["requests"] == 6 * 3  # one model call a turn, no retries
        # ceil(N / C) waves of T model calls and T - 1 tool calls, nothing else
        waves = -(-6 // run["in_flight"])
        assert run["ideal_s"] == pytest.approx(waves * (3 * 0.02 + 2 * 0.01))
        assert 0 < run["efficiency"] <= 1.0 and run["engine_cpu_per_turn_ms"] > 0
        # the floor: the same conversations through aiohttp alone, each ended by the answer
        floor = run["control"]
        assert floor["in_flight"] == run["in_flight"]
        assert floor["requests"] == 6 * 3 and floor["answered"] == 6
        assert 0 < floor["efficiency"] <= 1.0 and floor["cpu_per_turn_ms"] > 0
        assert run["over_floor"] == pytest.approx(
            run["engine_cpu_per_turn_ms"] / floor["cpu_per_turn_ms"]
        )
        if sys.platform == "linux":  # the CPU split by thread: the loop's, the store's writer
            assert {"event loop", "drillyard-store-writer"} <= set(run["cpu_by_thread_ms"])
            assert "event loop" in floor["cpu_by_thread_ms"]
    assert one["messages"] == four["messages"]  # the same record whatever the concurrency
    md = (tmp_path / "h.md").read_text()
    assert "| 4 | 1 | 6 | 3 |" in md and "## The floor" in md
    assert ("## Where the CPU goes, by thread" in md) == (sys.platform == "linux")


def test_http_mode_measures_a_sharded_engine_with_its_shards_cpu(tmp_path: Path) -> None:
    main(["--http", "--rollouts", "6", "--turns", "3", "--in-flight", "4", "--shards", "1,2",
          "--latency", "0.02", "--tool-sleep", "0.01", "--server-procs", "1", "--no-control",
          "--out", str(tmp_path), "--name", "s"])  # fmt: skip
    one, two = json.loads((tmp_path / "s.json").read_text())["runs"]
    assert (one["shards"], two["shards"]) == (1, 2)
    assert one["states"] == two["states"] == {"done": 6}
    assert one["messages"] == two["messages"]  # the same record from two processes
    assert one["shards_cpu_s"] == 0 and 0 < two["shards_cpu_s"] <= two["engine_cpu_s"]
    assert two["requests"] is None and two["cpu_by_thread_ms"] is None  # counted in the shards
    assert "| 4 | 2 | 6 | 3 |" in (tmp_path / "s.md").read_text()


def test_http_mode_runs_without_the_floor_on_request(tmp_path: Path) -> None:
    main(["--http", "--rollouts", "2", "--turns", "2", "--in-flight", "2", "--latency", "0.0",
          "--tool-sleep", "0.0", "--server-procs", "1", "--no-control", "--out", str(tmp_path),
          "--name", "h"])  # fmt: skip
    (run,) = json.loads((tmp_path / "h.json").read_text())["runs"]
    assert run["states"] == {"done": 2} and run["control"] is None and run["over_floor"] is None
    assert "## The floor" not in (tmp_path / "h.md").read_text()


async def _recorded_reply(tmp_path: Path) -> list[dict[str, Any]]:
    from engine import Agent, Engine, EnvSpec, OpenAIPolicy, SamplingParams, Task
    from engine.benchmark.http import ENV_NAME, openai_server
    from engine.benchmark.openai_server import MODEL

    async with openai_server(0.0, 2, 1, reply_tokens=5) as server:
        async with OpenAIPolicy(server.url, MODEL) as policy, Engine(
            store=tmp_path / "s.db", progress=False
        ) as engine:
            agent = Agent(policy, max_turns=2, sampling=SamplingParams(return_token_ids=True))
            run = await engine.run([Task("t", "Task #0", "42")], agent,
                                   environment=EnvSpec(ENV_NAME, {"seconds": 0.0}))  # fmt: skip
            assert await run.counts() == {"done": 1}
            (r,) = await run.rollouts()
            return [m.payload for m in await run.messages(r.id) if m.category == "model_reply"]


def test_the_bench_server_answers_as_vllm_does_with_token_ids(tmp_path: Path) -> None:
    """Tool call first, the answer last, and the token ids vLLM returns with
    ``return_token_ids``, each prompt extending the last: the engine's token
    bookkeeping does in the bench what it does in training."""
    first, last = asyncio.run(_recorded_reply(tmp_path))
    assert first["finish_reason"] == "tool_calls" and first["tool_calls"][0]["name"] == "sleep"
    assert last["finish_reason"] == "stop" and last["content"] == "42"
    for reply in (first, last):
        assert len(reply["token_ids"]) == 5 == reply["usage"]["completion_tokens"]
        assert len(reply["prompt_token_ids"]) == reply["usage"]["prompt_tokens"] > 0
    # as from an exact chat template: the next prompt extends the previous prompt and reply
    before = first["prompt_token_ids"] + first["token_ids"]
    assert last["prompt_token_ids"][: len(before)] == before
    assert last["continues"] == {"extends": True, "choice": 0}


def test_the_engine_loop_is_uvloop_where_installed_and_asyncio_on_request() -> None:
    from engine import eventloop
    from engine.errors import ConfigError

    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert eventloop.run(which(), "asyncio") == "asyncio"
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert eventloop.run(which(), "auto") == expected
    with pytest.raises(ConfigError, match="use one of auto, asyncio, uvloop"):
        eventloop.resolve("trio")


def test_the_entry_points_collect_less_often_and_restore_the_collector(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import gc
    import weakref

    from engine import eventloop
    from engine.errors import ConfigError

    before = gc.get_threshold()

    class Node:
        other: Node

    async def inside() -> tuple[tuple[int, int, int], bool]:
        seen = gc.get_threshold()
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: only the collector frees it
        ref = weakref.ref(a)
        del a, b
        gc.collect()
        return seen, ref() is None

    seen, freed = eventloop.run(inside(), "asyncio")
    assert seen == (eventloop.GC_THRESHOLD, *before[1:]) and freed
    assert gc.get_threshold() == before and gc.get_freeze_count() == 0
    gc.freeze()  # an app froze its own objects (before forking): they stay frozen
    try:
        eventloop.run(inside(), "asyncio")
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    monkeypatch.setenv(eventloop.GC_ENV, "0")  # CPython's defaults left as they are
    assert eventloop.run(inside(), "asyncio") == (before, True)
    monkeypatch.setenv(eventloop.GC_ENV, "lots")
    with pytest.raises(ConfigError, match=r"DRILLYARD_GC_THRESHOLD.*whole number"):
        eventloop.run(inside(), "asyncio")
