"""``python -m engine``: run, resume, report, export, list and view runs."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from engine import eventloop
from engine.api import Engine, Run
from engine.config import agent_from_description, load_config
from engine.errors import ConfigError, DrillyardError
from engine.resources import close_policy
from engine.store import TraceStore

console = Console(stderr=False)


def parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--k takes numbers like 1,4,8, got {text!r}") from exc
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k takes numbers >= 1, got {text!r}")
    return ks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m engine", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start a run from a TOML config and/or flags")
    run.add_argument("--config", type=Path, help="TOML run config (see engine/config.py)")
    run.add_argument("--store", type=Path, help="SQLite trace store (default drillyard.db)")
    run.add_argument("--tasks", type=Path, help="JSONL task file (id, prompt, answer, …)")
    run.add_argument("--arithmetic", type=int, metavar="N", help="N built-in arithmetic tasks")
    run.add_argument("--env", help="environment name (default arithmetic)")
    run.add_argument("--backend", help="backend name (default inprocess)")
    run.add_argument("--samples", type=int, help="samples per task (GRPO group size)")
    run.add_argument("--scorer", help="scorer name: exact, numeric, arithmetic, …")
    run.add_argument(
        "--policy-url",
        action="append",
        help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1; repeat it (or give "
        "a comma-separated list) for several servers of the model: each rollout stays on one",
    )
    run.add_argument("--model", help="model name served at --policy-url")
    run.add_argument(
        "--oracle", action="store_true", help="use the built-in scripted arithmetic solver"
    )
    run.add_argument("--latency", type=float, help="oracle: seconds per model call")
    run.add_argument("--mistake-rate", type=float, help="oracle: chance of a wrong answer")
    run.add_argument("--max-rollouts", type=int, help="rollouts in flight (default 64)")
    run.add_argument(
        "--shards", type=int, help="engine processes sharing the run's rollouts (default 1)"
    )
    run.add_argument("--max-turns", type=int, help="turn limit per rollout (default 8)")
    run.add_argument("--k", type=parse_ks, help="pass@k to report, e.g. 1,4,8")
    run.add_argument("--run-id", help="name the run (default: a fresh id)")
    run.add_argument(
        "--order",
        choices=("given", "longest_first"),
        help="start order: as given, or the longest tasks first by their mean duration "
        "in earlier runs of this store (else metadata expected_s); default given",
    )
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)

    resume = sub.add_parser("resume", help="finish every rollout of a run that has no result")
    resume.add_argument("run_id")
    resume.add_argument("--store", type=Path, default=Path("drillyard.db"))
    resume.add_argument("--k", type=parse_ks, default=[1])

    report = sub.add_parser("report", help="pass@k and rollout states of a run")
    report.add_argument("run_id")
    report.add_argument("--store", type=Path, default=Path("drillyard.db"))
    report.add_argument("--k", type=parse_ks, default=[1])
    report.add_argument("--by", action="append", default=[], help="metadata key, e.g. level")

    export = sub.add_parser("export", help="trajectories of a run as JSONL")
    export.add_argument("run_id")
    export.add_argument("--store", type=Path, default=Path("drillyard.db"))
    export.add_argument("--out", type=Path, required=True)

    view = sub.add_parser(
        "view",
        help="serve the trace viewer on loopback (open the printed URL: it carries the token)",
    )
    view.add_argument("--store", type=Path, default=Path("drillyard.db"))
    view.add_argument("--host", default="127.0.0.1", help="interface to serve on (127.0.0.1)")
    view.add_argument("--port", type=int, default=8765, help="port (8765; 0 picks a free one)")
    view.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a Host name to answer besides loopback ones (when serving beyond loopback)",
    )
    view.add_argument(
        "--export",
        nargs=2,
        metavar=("RUN", "OUT"),
        help="write RUN as one self-contained HTML file OUT instead of serving",
    )
    view.add_argument("--states", help="--export: only rollouts in these states, e.g. error,failed")
    view.add_argument("--limit", type=int, help="--export: at most this many rollouts")
    view.add_argument(
        "--answers", action="store_true", help="--export: include each task's ground truth"
    )

    sub.add_parser("eval", help="a benchmark evaluation, e.g. `python -m engine eval gaia --help`")
    sub.add_parser("serve-rollouts", help="serve rollouts to swift GRPO in server mode (--help)")
    runs = sub.add_parser("runs", help="list the runs in a store")
    runs.add_argument("--store", type=Path, default=Path("drillyard.db"))
    return parser


async def print_report(run: Run, ks: list[int], by: list[str]) -> None:
    counts = await run.counts()
    record = await run.store.run(run.id)
    usable = [k for k in ks if k <= record.config.get("samples", 1)]
    report = await run.pass_at_k(usable or [1], by=by)
    run_meta = {t.id: t.metadata for t in await run.store.tasks(run.id)} if by else {}
    console.print(f"run [bold]{run.id}[/] · store {run.store.path} · status {record.status}")
    console.print("rollouts: " + ", ".join(f"{s}={n}" for s, n in sorted(counts.items())))
    table = Table(title="pass@k")
    table.add_column("slice")
    table.add_column("tasks", justify="right")
    for k in report.ks:
        table.add_column(f"pass@{k}", justify="right")
    table.add_row(
        "all",
        str(len(report.per_task)),
        *(f"{report.overall.get(k, float('nan')):.3f}" for k in report.ks),
    )
    for key, values in report.by.items():
        for value, scores in values.items():
            n_tasks = sum(1 for t in report.per_task if run_meta.get(t, {}).get(key) == value)
            table.add_row(
                f"{key}={value}",
                str(n_tasks),
                *(f"{scores.get(k, float('nan')):.3f}" for k in report.ks),
            )
    console.print(table)
    await print_error_reasons(run)


async def print_error_reasons(run: Run, top: int = 10) -> None:
    """The commonest reasons rollouts did not succeed, grouped and counted."""
    from engine.view.queries import StoreReader

    async with StoreReader(run.store.path) as reader:
        reasons = await reader.error_reasons(run.id)
    if not reasons:
        return
    table = Table(title="why rollouts did not succeed (rollouts · attempts, retries included)")
    table.add_column("state")
    table.add_column("rollouts", justify="right")
    table.add_column("attempts", justify="right")
    table.add_column("reason")
    for r in reasons[:top]:
        more = f" ({r.variants} variants)" if r.variants > 1 else ""
        # recorded text, never rich markup
        table.add_row(r.state, str(r.rollouts), str(r.attempts), Text(r.reason[:200] + more))
    console.print(table)
    if len(reasons) > top:
        console.print(f"… and {len(reasons) - top} more reasons: python -m engine view")


async def _run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        "store": args.store,
        "backend": args.backend,
        "samples": args.samples,
        "scorer": args.scorer,
        "max_rollouts": args.max_rollouts,
        "shards": args.shards,
        "ks": args.k,
        "environment.name": args.env,
        "agent.max_turns": args.max_turns,
        "tasks.file": args.tasks,
        "order": args.order,
    }
    if args.arithmetic is not None:
        overrides.update({"tasks.builtin": "arithmetic", "tasks.count": args.arithmetic})
    if args.policy_url or args.model:
        overrides.update(
            {
                "policy.kind": "openai",
                "policy.base_url": args.policy_url,
                "policy.model": args.model,
            }
        )
    if args.oracle:
        overrides["policy.kind"] = "oracle"
    overrides.update({"policy.latency": args.latency, "policy.mistake_rate": args.mistake_rate})
    cfg = load_config(args.config, overrides)
    tasks = cfg.load_tasks()
    agent = cfg.build_agent()
    async with Engine(
        store=cfg.store,
        backend=cfg.backend,
        backend_options=cfg.backend_options,
        max_rollouts=cfg.max_rollouts,
        max_model_requests=cfg.max_model_requests,
        max_attempts=cfg.max_attempts,
        step_timeout=cfg.step_timeout,
        rollout_timeout=cfg.rollout_timeout,
        progress=args.progress,
        shards=cfg.shards,
    ) as engine:
        run_id = args.run_id
        console.print(f"store: {cfg.store}")
        try:
            run = await engine.run(
                tasks,
                agent,
                environment=cfg.environment.name,
                samples=cfg.samples,
                scorer=cfg.scorer,
                run_id=run_id,
                order=cfg.order,
            )
        finally:
            await close_policy(agent.policy)
        await print_report(
            run, cfg.ks, by=["level"] if any("level" in t.metadata for t in tasks) else []
        )
        console.print(f"resume with: python -m engine resume {run.id} --store {cfg.store}")
    return 0


async def _resume(args: argparse.Namespace) -> int:
    async with TraceStore(args.store) as store:
        cfg = (await store.run(args.run_id)).config
    limits = cfg.get("limits", {})
    agent = agent_from_description(cfg["agent"])
    async with Engine(
        store=args.store,
        backend=cfg.get("backend", "inprocess"),
        max_rollouts=limits.get("max_rollouts", 64),
        max_model_requests=limits.get("max_model_requests", 64),
        max_attempts=limits.get("max_attempts", 3),
        step_timeout=limits.get("step_timeout", 120.0),
        rollout_timeout=limits.get("rollout_timeout"),
        shards=limits.get("shards", 1),
    ) as engine:
        try:
            run = await engine.resume(args.run_id, agent)
        finally:
            await close_policy(agent.policy)
        usable = [k for k in args.k if k <= cfg.get("samples", 1)]
        await print_report(run, usable or [1], by=[])
    return 0


async def _report(args: argparse.Namespace) -> int:
    async with TraceStore(args.store) as store:
        await print_report(Run(store, args.run_id), args.k, args.by)
    return 0


async def _export(args: argparse.Namespace) -> int:
    async with TraceStore(args.store) as store:
        await store.run(args.run_id)
        n = await Run(store, args.run_id).export_jsonl(args.out)
    console.print(f"wrote {n} trajectories to {args.out}")
    return 0


async def _runs(args: argparse.Namespace) -> int:
    async with TraceStore(args.store) as store:
        table = Table(title=str(args.store))
        for col in ("run", "status", "samples", "code"):
            table.add_column(col)
        for r in await store.runs():
            table.add_row(r.id, r.status, str(r.config.get("samples")), r.code_version)
        console.print(table)
    return 0


async def _view(args: argparse.Namespace) -> int:
    from engine.view import StoreReader, Viewer, export_run
    from engine.view.queries import STATES

    if args.export:
        run_id, out = args.export
        async with StoreReader(args.store) as reader:
            if await reader.run(run_id) is None:
                known = ", ".join(await reader.run_ids(20)) or "none"
                raise ConfigError(
                    str(args.store), f"no run '{run_id}' in this store", f"runs: {known}"
                )
        states = [s.strip() for s in args.states.split(",")] if args.states else None
        unknown = sorted(set(states or ()) - set(STATES))
        if unknown:
            raise ConfigError("--states", f"unknown state(s) {unknown}", f"use {', '.join(STATES)}")
        n = await export_run(
            args.store, run_id, out, states=states, limit=args.limit, answers=args.answers
        )
        print(f"wrote {n} rollouts of {run_id} to {out}")
        return 0
    async with Viewer(
        args.store, host=args.host, port=args.port, allow_hosts=args.allow_host
    ) as viewer:
        if args.host not in ("127.0.0.1", "localhost", "::1"):
            console.print(
                f"[yellow]serving beyond loopback on {args.host}: anyone who can reach it"
                " and has the token can read every run in the store[/]"
            )
        # plain print: the URL must stay one line, whatever the terminal's width
        print(
            f"Drillyard viewer for {args.store}: open\n  {viewer.url}\n(Ctrl-C stops it)",
            flush=True,
        )
        await asyncio.Event().wait()
    return 0


COMMANDS = {
    "run": _run,
    "resume": _resume,
    "report": _report,
    "export": _export,
    "runs": _runs,
    "view": _view,
}


EVALS = {"gaia": "gaia.cli:main", "bfcl": "bfcl.cli:main"}
"""Benchmarks ``python -m engine eval NAME …`` hands over to, loaded by name."""

SERVICES = {"serve-rollouts": "engine.integrations.rollout_server:main"}
"""Long-running commands with their own flags, loaded by name (``python -m engine NAME --help``)."""


def _eval(argv: list[str]) -> int:
    if not argv or argv[0] not in EVALS:
        print(
            f"usage: python -m engine eval {{{','.join(EVALS)}}} [options]"
            " (NAME --help lists them)",
            file=sys.stderr,
        )
        return 2
    module, _, attr = EVALS[argv[0]].partition(":")
    return int(getattr(importlib.import_module(module), attr)(argv[1:]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in SERVICES:
        module, _, attr = SERVICES[argv[0]].partition(":")
        return int(getattr(importlib.import_module(module), attr)(argv[1:]))
    if argv[:1] == ["eval"]:
        try:
            return _eval(argv[1:])
        except DrillyardError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    return run_command(COMMANDS[args.command](args), stops_cleanly=args.command == "view")


def run_command(command: Coroutine[Any, Any, int], *, stops_cleanly: bool = False) -> int:
    """Run a command's coroutine to its exit code: a `DrillyardError` is printed
    (exit 2), Ctrl-C says how to finish the run (exit 130), or ends a service
    that ``stops_cleanly`` (exit 0)."""
    try:
        return eventloop.run(command)
    except DrillyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if stops_cleanly:
            return 0
        print(
            "interrupted: recorded work is in the store; finish it with `python -m engine resume`",
            file=sys.stderr,
        )
        return 130
