"""Terminal tables, the Markdown report and the JSON results of a cycle bench."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from .cycle import Measured
from .workload import (
    ASSUMPTIONS,
    PAPER_DISTRIBUTED_S,
    PAPER_SEQUENTIAL_S,
    PAPER_TRAINING_S,
    Workload,
)

console = Console()
if not console.is_terminal:  # a log or a pipe: do not squeeze the table into 80 columns
    console = Console(width=200)
COLUMNS = (
    "run", "slots", "order", "paper-s", "bound", "eff.", "speedup", "zero-overhead",
    "vs zero-ovh.", "engine loss", "engine/turn", "tail loss", "late/call", "CPU/turn",
    "engine CPU", "rows/s", "peak MB",
)  # fmt: skip


def row(m: Measured) -> list[str]:
    bare = m.backend == "none"
    return [
        m.label,
        str(m.slots),
        m.order,
        f"{m.paper_s:,.0f}",
        f"{m.bound_paper_s:,.0f}",
        f"{m.efficiency:.1%}",
        f"{m.speedup:.1f}×",
        f"{m.ideal_order_paper_s:,.0f}",
        f"{m.ideal_order_paper_s / m.paper_s:.1%}",
        f"{m.engine_loss_paper_s / m.paper_s:.1%}",
        f"{m.engine_ms_per_turn:.2f} ms",
        f"{m.tail_loss_paper_s / m.paper_s:.1%}",
        f"{m.timer_late_ms:.2f} ms",
        f"{m.cpu_per_turn_ms:.3f} ms",
        f"{m.overhead_share:.0%}",
        "—" if bare else f"{m.rows_per_s:,.0f}",
        "—" if bare else f"{m.peak_rss_mb:,.0f}",
    ]


def table(runs: list[Measured], title: str) -> Table:
    t = Table(title=title)
    for col in COLUMNS:
        t.add_column(col, justify="left" if col in ("run", "order") else "right")
    for m in runs:
        t.add_row(*row(m))
    return t


def real_time_efficiency(m: Measured, compress: float) -> float:
    """Efficiency with the engine's own time not multiplied by the compression:
    what the same per-turn engine cost is worth at the paper's real timescale."""
    return m.bound_paper_s / (m.paper_s - m.engine_loss_paper_s * (1 - 1 / compress))


def cycle_split(runs: list[Measured], training_s: float, training_label: str) -> list[str]:
    lines = [
        "| run | rollout s | training s | cycle s | paper's cycle s |",
        "|---|---:|---:|---:|---:|",
    ]
    for m in runs:
        if m.backend == "none":
            continue
        paper = (
            PAPER_SEQUENTIAL_S if m.slots == 1 else PAPER_DISTRIBUTED_S if m.slots == 16 else None
        )
        ref = f"{paper + PAPER_TRAINING_S:,.0f}" if paper else "—"
        lines.append(
            f"| {m.label} | {m.paper_s:,.0f} | {training_s:,.4g} ({training_label}) | "
            f"{m.paper_s + training_s:,.0f} | {ref} |"
        )
    return lines


def loss_notes(runs: list[Measured], compress: float) -> list[str]:
    """Where the time above the bound went, per distributed run, from the accounting."""
    out = []
    for m in runs:
        inherent = m.ideal_order_paper_s - m.bound_paper_s
        engine = m.engine_loss_paper_s
        wake = (m.timer_late_ms + m.resume_ms) * m.world_calls / 1e3 * compress / m.slots
        out.append(
            f"- **{m.label}** ({m.order} order): measured {m.paper_s:,.0f} vs bound "
            f"{m.bound_paper_s:,.0f} ({m.efficiency:.1%}). A zero-overhead engine taking the "
            f"same rollouts in the same order needs {m.ideal_order_paper_s:,.0f} "
            f"({m.bound_paper_s / m.ideal_order_paper_s:.1%}): {inherent:,.0f} s of "
            "list-scheduling tail that no order chosen without knowing durations avoids "
            f"(longest-first with perfect knowledge: {m.lpt_paper_s:,.0f}). Time in slots off "
            f"the world's clock: {engine:,.0f} s of the makespan ({engine / m.paper_s:.1%}; "
            f"{m.engine_ms_per_turn:.2f} ms per turn), of which {max(wake, 0):,.0f} s is waking "
            f"up after the world's replies (timer/OS/busy loop {m.timer_late_ms:.2f} ms + resume "
            f"{m.resume_ms:.2f} ms per call; the loop is shared by all rollouts) and the rest "
            f"the engine's own work (CPU {m.cpu_per_turn_ms:.2f} ms per turn, the simulated "
            f"world's included). Measured tail {m.tail_loss_paper_s:,.0f} s. With the engine's "
            f"time at real speed (not ×{compress:g}): {real_time_efficiency(m, compress):.1%}."
        )
    return out


def cycle_markdown(
    command: str,
    w: Workload,
    runs: list[Measured],
    compress: float,
    training: tuple[float, str],
    png: str | None,
    ceiling: list[str] | None = None,
) -> str:
    lines = [
        f"# Rollout cycle: sequential vs distributed ({time.strftime('%Y-%m-%d %H:%M UTC')})",
        "",
        f"Command: `{command}`",
        "",
        f"Workload: {w.tasks} tasks × {w.samples} samples = {len(w.scripts)} rollouts, "
        f"{w.turns:,} turns, {w.total_s:,.0f} paper-s of model and tool time at one request in "
        f"flight (calibrated to AWorld's sequential {PAPER_SEQUENTIAL_S:,.0f} s; scale factor "
        f"{w.scale:.3f}). Time compressed {compress:g}× (1 paper-s = {1000 / compress:g} ms); "
        "the engine, the store and the backend are real and not compressed.",
        "",
        "| " + " | ".join(COLUMNS) + " |",
        "|" + "|".join("---" if c in ("run", "order") else "---:" for c in COLUMNS) + "|",
    ]
    lines += ["| " + " | ".join(row(m)) + " |" for m in runs]
    lines += [
        "",
        "Columns: paper-s = measured makespan; bound = max(longest rollout's work, total work ÷ "
        "slots) from the work the simulated model and tools did in this run; eff. = bound ÷ "
        "measured; zero-overhead = the same work list-scheduled in the same order with no "
        "engine cost; vs zero-ovh. = that ÷ measured (the engine's own efficiency: 100% "
        "means nothing is lost to the engine, the rest of the gap to the bound is the "
        "workload's); engine loss = slot time not spent on world work ÷ slots, as a share of "
        "the makespan; engine/turn = that slot time in wall ms per turn (not compressed); "
        "tail loss = the rest above the bound (ramp-up and the list-scheduling "
        "tail); late/call = mean time from a reply being due to the loop running its timer; "
        "CPU/turn and engine CPU (share of wall) = process CPU time, the simulated world's own "
        "included (compare bare-loop); `bare-loop` = the same "
        "world played by plain asyncio workers with no engine (the floor this machine allows).",
        "",
        "## Where the time above the bound goes",
        "",
        *loss_notes(runs, compress),
        "",
        *(ceiling or []),
        "## The cycle: rollouts + training",
        "",
        *cycle_split(runs, *training),
        "",
        f"AWorld: {PAPER_SEQUENTIAL_S:,.0f} s → {PAPER_DISTRIBUTED_S:,.0f} s "
        f"({PAPER_SEQUENTIAL_S / PAPER_DISTRIBUTED_S:.1f}×) + {PAPER_TRAINING_S:g} s training; "
        "its slot count is not published (~16 slots at ~91% efficiency is a hypothesis).",
        "",
    ]
    if png:
        lines += [f"![makespan vs slots and the per-slot timeline]({png})", ""]
    lines += ["## Latency model: every assumption", "", *[f"- {a}" for a in ASSUMPTIONS], ""]
    return "\n".join(lines)


def write_results(name: str, results: dict[str, Any], md: str, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(results, indent=1, default=str))
    (out_dir / f"{name}.md").write_text(md)
    console.print(f"results: {out_dir / name}.json and .md")
