"""``python -m engine.bench``: the AWorld cycle, sequential vs distributed, against the bound.

Default: one GAIA-style GRPO training cycle (8 tasks × 32 samples) as a seeded
latency model calibrated so that its rollouts, one after another, take the
AWorld paper's 7,695 s; time is compressed ``--compress``× so it runs in about
two minutes. Only the model's and the tools' latencies are modelled (every
assumption: ``engine/benchmark/workload.py``, repeated in each report); the
engine, the trace store and the backend's environments are real and their
time is not compressed, so the figures are pessimistic about the engine by
the compression factor. It runs the cycle sequentially (one slot, in
process), on plain asyncio workers with no engine (the control), and on each
of ``--slots`` environment slots; for each: makespan in paper-seconds, the
physical bound max(longest rollout, total work ÷ slots), efficiency = bound ÷
measured, speedup, the makespan a zero-overhead engine gets in the same order,
engine and tail losses, engine CPU, trace-store rows/s, peak memory, and the
cycle split (rollouts + the paper's 144 s of training, or a real ms-swift step
with ``--training real``).

Other modes: ``--overlap`` (train each complete group while stragglers
finish), ``--scale`` (10,000 concurrent rollouts in one process), ``--ingest``
(the trace store alone), ``--real`` (a real vLLM server and real tools),
``--gateway`` (what the recording gateway adds to an app's model call).
Results: the terminal, ``--out``/<name>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from engine import eventloop
from engine.benchmark.ceiling import (
    ORDER_TEXT,
    CeilingRow,
    ceiling_json,
    ceiling_markdown,
    ceiling_sweep,
)
from engine.benchmark.cluster import backend_setting
from engine.benchmark.cycle import Measured, measure_bare, measure_cycle
from engine.benchmark.report import console, cycle_markdown, table, write_results
from engine.benchmark.scale import measure_ingest, measure_scale
from engine.benchmark.workload import (
    PAPER_DISTRIBUTED_S,
    PAPER_SEQUENTIAL_S,
    PAPER_TRAINING_S,
    Turn,
    Workload,
    hint_order,
    make_workload,
)
from engine.errors import ConfigError
from engine.eventloop import LOOPS
from engine.policy.transport import CLIENTS

__all__ = [
    "PAPER_DISTRIBUTED_S",
    "PAPER_SEQUENTIAL_S",
    "PAPER_TRAINING_S",
    "Turn",
    "Workload",
    "build_parser",
    "main",
    "make_workload",
]


def _command(argv: list[str] | None) -> str:
    return "python -m engine.bench" + (
        " " + shlex.join(argv if argv is not None else sys.argv[1:])
        if (argv or sys.argv[1:])
        else ""
    )


async def _training(args: argparse.Namespace) -> tuple[float, str]:
    """The training phase: the paper's 144 s, or one real ms-swift GRPO run's step time."""
    if args.training == "paper":
        return PAPER_TRAINING_S, "paper's figure"
    from engine.benchmark.training import real_training_step

    console.print("training phase: a real ms-swift GRPO run on the tiny model (slow) ...")
    try:
        seconds = await asyncio.to_thread(real_training_step)
    except ConfigError as exc:
        console.print(f"[yellow]{exc}; using the paper's {PAPER_TRAINING_S:g} s[/yellow]")
        return PAPER_TRAINING_S, "paper's figure (real training unavailable)"
    return seconds, "real ms-swift GRPO step, tiny model, wall-s"


async def run_cycle(args: argparse.Namespace) -> None:
    w = make_workload(args.tasks, args.samples, args.seed)
    plan: list[tuple[str, int, str, str]] = [("sequential", 1, "given", "inprocess")]
    first = args.slots[0]
    if args.control:
        plan.append(("bare-loop", first, args.order, "none"))
    if args.compare_order:
        other = "given" if args.order == "hint" else "hint"
        plan.append((f"{args.backend}-{first}-{other}", first, other, args.backend))
    plan += [(f"{args.backend}-{m}", m, args.order, args.backend) for m in args.slots]
    runs: list[Measured] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with backend_setting(args.backend, args.backend_options, Path(tmp)) as options:
            for n, (label, slots, order, backend) in enumerate(plan, 1):
                console.print(f"[bold][{n}/{len(plan)}][/bold] {label}: {slots} slot(s), {order}")
                m = await _measure(args, w, label, slots, order, backend, Path(tmp), options)
                if m is not None:
                    m.speedup = runs[0].paper_s / m.paper_s if runs else 1.0
                    runs.append(m)
    training = await _training(args)
    console.print(table(runs, f"one cycle: {len(w.scripts)} rollouts, {w.turns:,} turns"))
    ceiling = _ceiling(args)
    png = None
    if args.plot:
        png = _plot(args, w, runs)
    cmd = _command(args.argv)
    results = {
        "command": cmd,
        "workload": {
            "tasks": w.tasks,
            "samples": w.samples,
            "turns": w.turns,
            "seed": w.seed,
            "total_paper_s": w.total_s,
            "scale": w.scale,
            "compress": args.compress,
            "levels": [asdict(i) for i in w.info],
            "hint_order": hint_order(w),
        },
        "training": {"seconds": training[0], "source": training[1]},
        "runs": [asdict(m) for m in runs],
        "ceiling": ceiling_json(ceiling, args.ceiling_seeds),
    }
    measured = {(m.slots, m.order): m.efficiency for m in runs
                if m.backend == args.backend and m.slots > 1}  # fmt: skip
    md = cycle_markdown(
        cmd, w, runs, args.compress, training, png and Path(png).name,
        ceiling_markdown(ceiling, args.ceiling_seeds, measured),
    )  # fmt: skip
    write_results(args.name, results, md, args.out)


def _ceiling(args: argparse.Namespace) -> list[CeilingRow]:
    """The zero-overhead ceiling over --ceiling-seeds cycles, on the terminal too."""
    if args.ceiling_seeds <= 0:
        return []
    rows = ceiling_sweep(args.tasks, args.samples, args.slots, args.ceiling_seeds)
    from rich.table import Table

    t = Table(title=f"what a zero-overhead engine reaches, {args.ceiling_seeds} seeded cycles")
    for col in ("slots", "order", "mean", "p10", "cycles ≥ 97%"):
        t.add_column(col, justify="left" if col == "order" else "right")
    for r in rows:
        t.add_row(str(r.slots), ORDER_TEXT[r.order], f"{r.mean:.1%}", f"{r.p10:.1%}",
                  f"{r.share_at_target:.0%}")  # fmt: skip
    console.print(t)
    return rows


async def _measure(
    args: argparse.Namespace,
    w: Workload,
    label: str,
    slots: int,
    order: str,
    backend: str,
    store_dir: Path,
    options: dict[str, Any],
) -> Measured | None:
    """One measurement; None when its backend cannot run here (said on the terminal)."""
    try:
        if backend == "none":
            return await measure_bare(
                w, slots, args.compress, order=order, batch_slowdown=args.batch_slowdown
            )
        return await measure_cycle(
            w, slots, args.compress, store_dir, label, order=order, backend=backend,
            options=options if backend == args.backend else {}, progress=args.progress,
            batch_slowdown=args.batch_slowdown,
        )  # fmt: skip
    except ConfigError as exc:  # a backend that is not available here
        console.print(f"[yellow]skipped {label}: {exc}[/yellow]")
    except Exception as exc:  # a backend that cannot start here (no cluster, ...)
        if backend in ("inprocess", "none"):
            raise
        console.print(f"[yellow]skipped {label}: {type(exc).__name__}: {exc}[/yellow]")
    return None


def _plot(args: argparse.Namespace, w: Workload, runs: list[Measured]) -> str | None:
    try:
        from engine.benchmark.plot import plot_cycle
    except ImportError:  # pragma: no cover - matplotlib is optional
        console.print("[yellow]no plot: pip install matplotlib[/yellow]")
        return None
    dist = [m for m in runs if m.slots > 1 and m.backend != "none"]
    if not dist:
        return None
    gantt = next((m for m in dist if m.slots == args.slots[0] and m.order == args.order), dist[0])
    order = hint_order(w) if args.order == "hint" else list(range(w.tasks))
    work = [w.rollout_s(j * w.samples + s) for j in order for s in range(w.samples)]
    path = args.out / f"{args.name}.png"
    args.out.mkdir(parents=True, exist_ok=True)
    plot_cycle(path, [asdict(m) for m in runs], work, gantt.label, args.order)
    console.print(f"plot: {path}")
    return str(path)


async def run_scale(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        r = await measure_scale(args.rollouts, args.turns, args.model_s, args.tool_s, Path(tmp))
    from rich.table import Table

    t = Table(title=f"{r['rollouts']:,} concurrent rollouts in one process")
    keys = ("wall_s", "cpu_per_turn_ms", "lag_p50_ms", "lag_p99_ms", "kb_per_rollout",
            "rss_peak_mb", "rows", "rows_per_s")  # fmt: skip
    for key in keys:
        t.add_row(key, f"{r[key]:,.3f}" if isinstance(r[key], float) else str(r[key]))
    console.print(t)
    md = (
        f"# Scale: {r['rollouts']:,} concurrent rollouts\n\nCommand: `{_command(args.argv)}`"
        "\n\nTargets: event-loop lag p99 ≤ 50 ms, ≤ 50 KB per idle rollout.\n\n"
        "| metric | value |\n|---|---:|\n"
        + "".join(
            f"| {k} | {v:,.3f} |\n" if isinstance(v, float) else f"| {k} | {v} |\n"
            for k, v in r.items()
            if k != "states"
        )
    )
    write_results(args.name, r, md, args.out)


async def run_ingest(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        r = await measure_ingest(args.messages, Path(tmp))
    text = (
        f"{r['messages']:,} messages in {r['wall_s']:.2f} s: {r['messages_per_s']:,.0f} "
        f"messages/s ({r['stored']:,} stored); plain sqlite3, same rows, same schema, same run: "
        f"{r['raw_sqlite_rows_per_s']:,.0f} rows/s (the store reaches "
        f"{r['share_of_raw_sqlite']:.0%} of it)"
    )
    console.print("trace-store ingest: " + text)
    md = f"# Trace-store ingest\n\nCommand: `{_command(args.argv)}`\n\n{text}\n"
    write_results(args.name, r, md, args.out)


async def run_http(args: argparse.Namespace) -> None:
    from engine.benchmark.http import (
        http_markdown,
        measure_floor,
        measure_http,
        openai_server,
        results_json,
    )

    runs = []
    turns, rollouts = args.turns, args.rollouts
    async with openai_server(args.latency, turns, args.server_procs) as server:
        with tempfile.TemporaryDirectory() as tmp:
            for n, c in enumerate(args.in_flight, 1):
                console.print(f"[bold][{n}/{len(args.in_flight)}][/bold] {rollouts:,} rollouts "
                              f"× {turns} turns, {c:,} in flight")  # fmt: skip
                floor = None
                if args.control:
                    floor = await measure_floor(server, c, rollouts, turns, args.latency,
                                                args.tool_sleep, args.http_client)  # fmt: skip
                    console.print(f"  floor ({floor.http_client}, no engine): efficiency "
                                  f"{floor.efficiency:.3f}, "
                                  f"{floor.cpu_per_turn_ms:.3f} ms/turn")  # fmt: skip
                for k in args.shards:
                    r = await measure_http(server, c, rollouts, turns, args.latency,
                                           args.tool_sleep, Path(tmp), args.http_client,
                                           shards=k)  # fmt: skip
                    r.control = floor
                    if r.states != {"done": rollouts}:
                        console.print(f"[yellow]not every rollout ended done: {r.states}[/yellow]")
                    console.print(f"  {k} shard(s): wall {r.wall_s:.1f} s (ideal {r.ideal_s:.1f} "
                                  f"s), efficiency {r.efficiency:.3f}, engine CPU "
                                  f"{r.engine_cpu_per_turn_ms:.3f} ms/turn")  # fmt: skip
                    runs.append(r)
    cmd = _command(args.argv)
    md = http_markdown(cmd, runs, args.server_procs)
    console.print(md)
    write_results(args.name, results_json(cmd, runs), md, args.out)


async def run_overlap(args: argparse.Namespace) -> None:
    from engine.benchmark.overlap import overlap_markdown, run_overlapped

    w = make_workload(args.tasks, args.samples, args.seed)
    training = await _training(args)
    with tempfile.TemporaryDirectory() as tmp:
        r = await run_overlapped(w, args, Path(tmp), training)
    md = overlap_markdown(_command(args.argv), w, r)
    console.print(md)
    write_results(args.name, r, md, args.out)


async def run_gateway(args: argparse.Namespace) -> None:
    from engine.benchmark.gateway import gateway_markdown, run_gateway_bench

    with tempfile.TemporaryDirectory() as tmp:
        r = await run_gateway_bench(
            rollouts=args.gateway_rollouts, in_flight=args.gateway_in_flight,
            calls=args.gateway_calls, latency=args.gateway_latency, work=Path(tmp),
            log=console.print,
        )  # fmt: skip
    md = gateway_markdown(_command(args.argv), r)
    console.print(md)
    write_results(args.name, r, md, args.out)


async def run_real(args: argparse.Namespace) -> None:
    from engine.benchmark.real import real_markdown, run_real_bench

    with tempfile.TemporaryDirectory() as tmp:
        r = await run_real_bench(args, Path(tmp))
    md = real_markdown(_command(args.argv), r)
    console.print(md)
    write_results(args.name, r, md, args.out)


def _counts_of(flag: str, least: int, example: str) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated counts, each at least ``least``."""

    def parse(text: str) -> list[int]:
        try:
            counts = [int(x) for x in text.split(",") if x.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{flag} wants numbers like {example}: {exc}") from exc
        if not counts or min(counts) < least:
            raise argparse.ArgumentTypeError(
                f"{flag} wants one or more counts >= {least}, e.g. {example}"
            )
        return counts

    return parse


_slots = _counts_of("--slots", 2, "16,64")
_in_flight = _counts_of("--gateway-in-flight", 1, "1,256")


def _json_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            '--backend-options wants a JSON object, e.g. {"workers": 2}'
        )
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--overlap",
        action="store_true",
        help="train each GRPO group as soon as its samples are in, while "
        "stragglers finish (AReaL/verl fully-async); cycle vs rollout + training",
    )
    mode.add_argument(
        "--scale",
        action="store_true",
        help="--rollouts concurrent rollouts in one process: loop lag, memory per "
        "idle rollout, store throughput",
    )
    mode.add_argument(
        "--ingest",
        action="store_true",
        help="trace-store ingest rate vs plain sqlite3 on the same rows",
    )
    mode.add_argument(
        "--backends",
        action="store_true",
        help="a CPU-heavy tool: subprocess pool vs in-process; worker-protocol step "
        "p50/p99; environment creation per backend",
    )
    mode.add_argument(
        "--http",
        action="store_true",
        help="--rollouts × --turns through a loopback OpenAI-compatible server over real "
        "HTTP and a sleeping tool, at each --in-flight: efficiency vs the ideal makespan, "
        "engine CPU per turn, beside the same workload through the HTTP client alone (the floor)",
    )
    mode.add_argument(
        "--real",
        action="store_true",
        help="real vLLM server (started here unless --policy-url) and real tools, "
        "sequential vs --real-concurrency",
    )
    mode.add_argument(
        "--gateway",
        action="store_true",
        help="an app's model calls through the recording gateway vs the engine's direct "
        "path: added latency p50/p99 and CPU per call, one at a time and many in flight",
    )
    g = p.add_argument_group("the cycle (default mode and --overlap)")
    g.add_argument("--tasks", type=int, default=8, help="tasks (GRPO groups) per cycle (8)")
    g.add_argument(
        "--samples",
        type=int,
        default=32,
        help="samples per task (32, the paper's rollouts per task)",
    )
    g.add_argument(
        "--slots",
        type=_slots,
        default=[16, 32, 64],
        help="environment slot counts for the distributed runs (16,32,64)",
    )
    g.add_argument(
        "--compress",
        type=float,
        default=100.0,
        help="paper-seconds per wall-second (100: the 7,695 s sequential run takes "
        "~77 s); the engine's own time is not compressed",
    )
    g.add_argument("--seed", type=int, default=0, help="workload seed (0)")
    g.add_argument(
        "--order",
        choices=("hint", "given"),
        default="hint",
        help="order the tasks reach the scheduler in: 'hint' = most annotator steps "
        "first (longest expected first), 'given' = as drawn (hint)",
    )
    g.add_argument(
        "--compare-order",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run the first slot count in the other order (on)",
    )
    g.add_argument(
        "--ceiling-seeds",
        type=int,
        default=200,
        help="also list-schedule this many seeded cycles with zero engine cost: the "
        "efficiency any engine can reach on this workload, by order (200; 0 = off)",
    )
    g.add_argument(
        "--control",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also play the first slot count on bare asyncio workers with no engine "
        "(--http: each --in-flight through the HTTP client alone, just before the engine's run), "
        "to separate the engine's cost from the machine's (on)",
    )
    g.add_argument(
        "--backend",
        default="inprocess",
        help="backend for the distributed runs, by registered name: inprocess, "
        "subprocess, kubernetes (the fake cluster), ray (a local Ray cluster) "
        "(inprocess); the sequential baseline is always in-process",
    )
    g.add_argument(
        "--backend-options",
        type=_json_object,
        default={},
        help="extra backend options as JSON, merged over the slot-derived ones ({})",
    )
    g.add_argument(
        "--batch-slowdown",
        type=float,
        default=0.002,
        help="model latency × (1 + this × (requests in flight − 1)) (0.002)",
    )
    g.add_argument(
        "--training",
        choices=("paper", "real"),
        default="paper",
        help="training phase: the paper's 144 s, labelled, or one real ms-swift GRPO "
        "step on the tiny model (needs the training extra; slow) (paper)",
    )
    g.add_argument(
        "--plot",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="write <name>.png (needs matplotlib) (on)",
    )
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar per run (default: on for runs of 50+ rollouts)",
    )
    s = p.add_argument_group("--scale, --ingest and --http")
    s.add_argument(
        "--rollouts", type=int, help="--scale: rollouts (10000); --http: rollouts per run (4096)"
    )
    s.add_argument("--turns", type=int, help="turns per rollout (--scale: 4, --http: 8)")
    s.add_argument(
        "--model-s", type=float, default=6.0, help="--scale: median real seconds per model call (6)"
    )
    s.add_argument(
        "--tool-s", type=float, default=2.0, help="--scale: median real seconds per tool call (2)"
    )
    s.add_argument("--messages", type=int, default=300_000, help="--ingest: messages (300000)")
    h = p.add_argument_group("--http")
    h.add_argument(
        "--in-flight",
        type=_counts_of("--in-flight", 1, "16,1024"),
        default=[16, 64, 256, 1024, 4096],
        help="rollouts in flight, one run each (16,64,256,1024,4096)",
    )
    h.add_argument(
        "--shards",
        type=_counts_of("--shards", 1, "1,2"),
        default=[1],
        help="engine processes (Engine(shards=K)), one engine run each per --in-flight (1)",
    )
    h.add_argument("--latency", type=float, default=0.2, help="server seconds per reply (0.2)")
    h.add_argument("--tool-sleep", type=float, default=0.1, help="tool seconds per call (0.1)")
    h.add_argument(
        "--server-procs", type=int, default=2, help="server processes sharing the port (2)"
    )
    h.add_argument(
        "--http-client",
        choices=CLIENTS,
        default=None,
        help="the policy's HTTP client, engine and floor alike (default: $DRILLYARD_HTTP_CLIENT, "
        "else auto = pyreqwest where installed)",
    )
    r = p.add_argument_group("--real")
    r.add_argument(
        "--policy-url",
        help="an OpenAI-compatible server's base URL (…/v1); default: start vLLM on the tiny model",
    )
    r.add_argument("--model-name", default="tiny", help="served model name (tiny)")
    r.add_argument(
        "--model",
        type=Path,
        help="model directory for the started server (default: build the tiny model)",
    )
    r.add_argument("--real-tasks", type=int, default=4, help="tasks for --real (4)")
    r.add_argument("--real-samples", type=int, default=4, help="samples per task for --real (4)")
    r.add_argument(
        "--real-concurrency",
        type=int,
        default=8,
        help="rollouts at once in the concurrent --real run (8)",
    )
    p.add_argument(
        "--loop",
        choices=LOOPS,
        default=None,
        help="the engine's event loop, every mode (default: $DRILLYARD_LOOP, else auto = "
        "uvloop where installed)",
    )
    gw = p.add_argument_group("--gateway")
    gw.add_argument("--gateway-rollouts", type=int, default=256,
                    help="rollouts of the workload (256)")  # fmt: skip
    gw.add_argument("--gateway-in-flight", type=_in_flight, default=[1, 256],
                    help="rollouts in flight, one run per count (1,256)")  # fmt: skip
    gw.add_argument("--gateway-calls", type=int, default=8,
                    help="model calls per rollout (8)")  # fmt: skip
    gw.add_argument("--gateway-latency", type=float, default=0.0,
                    help="the policy's seconds per call (0: the gateway's cost alone)")  # fmt: skip
    p.add_argument("--name", help="results file name under --out (default: the mode's name)")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    return p


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["learn"]:
        # real GRPO cycles (ms-swift) with the tiny model: `python -m engine.bench learn --help`
        from engine.training.learn import main as learn_main

        raise SystemExit(learn_main(argv[1:]))
    if argv[:1] == ["view"]:
        # trace-viewer page loads on a million-message store: `python -m engine.bench view --help`
        from engine.view.bench import main as view_main

        raise SystemExit(view_main(argv[1:]))
    args = build_parser().parse_args(argv)
    args.argv = argv
    if args.backends:
        from backends.bench_backends import main as bench_backends

        args.out.mkdir(parents=True, exist_ok=True)
        bench_backends(["--out", str(args.out / f"{args.name or 'backends'}.json")])
        return
    if args.scale:
        args.name = args.name or "scale"
        args.rollouts, args.turns = args.rollouts or 10_000, args.turns or 4
        eventloop.run(run_scale(args), args.loop)
    elif args.http:
        args.name = args.name or "http"
        args.rollouts, args.turns = args.rollouts or 4096, args.turns or 8
        if args.turns < 2:
            raise SystemExit("--http wants --turns >= 2 (every turn but the last calls the tool)")
        eventloop.run(run_http(args), args.loop)
    elif args.ingest:
        args.name = args.name or "ingest"
        eventloop.run(run_ingest(args), args.loop)
    elif args.overlap:
        args.name = args.name or "overlap"
        eventloop.run(run_overlap(args), args.loop)
    elif args.real:
        args.name = args.name or "real"
        eventloop.run(run_real(args), args.loop)
    elif args.gateway:
        args.name = args.name or "gateway"
        eventloop.run(run_gateway(args), args.loop)
    else:
        args.name = args.name or "cycle"
        eventloop.run(run_cycle(args), args.loop)


if __name__ == "__main__":
    main()
