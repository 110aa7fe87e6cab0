"""``python -m scaler``: synthesize environments, run agents on them, filter, export.

    python -m scaler synth --specs scaler/data/specs --out synth/ --seed 0
    python -m scaler run --out synth/ --store runs.db --agent noisy -n 4
    python -m scaler run --out synth/ --store runs.db --policy-url URL --model M -n 4
    python -m scaler filter RUN [RUN …] --store runs.db --sft sft.jsonl --grpo tasks.jsonl
    python -m scaler demo           # all four on the shipped spec set, with the noisy agent

``run`` starts one run per domain (the ``stateful`` environment over that
domain's file, scored by ``state_alignment``) and prints pass@k per domain;
``filter`` prints how many trajectories pass each stage per domain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.table import Table

from engine.agent import Agent
from engine.api import Engine, Run
from engine.cli import console, print_report, run_command
from engine.environment import EnvSpec
from engine.errors import ConfigError
from engine.policy.base import Policy, SamplingParams
from engine.policy.openai import OpenAIPolicy
from engine.resources import close_policy
from engine.store import TraceStore
from engine.tasks import Task, load_tasks
from scaler.agents import GoldReplay, NoisyReplay
from scaler.data import SPECS
from scaler.filter import FilterResult, export_sft, export_tasks, filter_runs
from scaler.sampling import verify_tasks
from scaler.synthesize import SynthesisReport, synthesize
from tools.stateful.environment import load_domain

SYSTEM = ("You operate the {domain} system through its tools. Do what the user asks, one tool "
          "call at a time, with exactly the values the user gives. When the request is done, "
          "say so in one short sentence without calling a tool.")


def _policy(args: argparse.Namespace, tasks: list[Task]) -> Policy:
    if args.policy_url:
        if not args.model:
            raise ConfigError("--model", "needed with --policy-url", "pass --model NAME")
        return OpenAIPolicy(args.policy_url, args.model)
    return NoisyReplay(tasks) if args.agent == "noisy" else GoldReplay(tasks)


def print_synthesis(report: SynthesisReport, out: Path) -> None:
    console.print(f"specs read {report.specs_read}, kept {report.specs_kept}; implementations "
                  + ", ".join(f"{k} {v}" for k, v in report.implementations.items())
                  + f"; graph {report.graph['tools']} tools, {report.graph['edges']} edges")
    for problem in report.spec_problems + report.tool_problems:
        console.print(f"  left out: {problem}")
    table = Table(title=f"domains (seed {report.seed}) in {out}")
    for col in ("domain", "tools", "tasks", "rejected draws"):
        table.add_column(col)
    for d in report.domains:
        table.add_row(d.name, str(len(d.tools)), str(d.tasks),
                      ", ".join(f"{k}: {v}" for k, v in d.rejected.items()) or "-")
    table.add_row("all", str(sum(len(d.tools) for d in report.domains)), str(report.tasks), "")
    console.print(table)


def print_filter(result: FilterResult) -> None:
    table = Table(title="three-stage filter: trajectories passing each stage")
    for col in ("domain", "trajectories", "valid", "state aligned", "calls match (kept)"):
        table.add_column(col, justify="right")
    for name, c in result.by_domain().items():
        table.add_row(name, *map(str, c.row()))
    table.add_row("all", *map(str, result.total().row()))
    console.print(table)


async def run_domains(out: Path, store: Path, args: argparse.Namespace) -> list[Run]:
    runs: list[Run] = []
    domain_files = sorted((out / "domains").glob("*.json"))
    if not domain_files:
        raise ConfigError(str(out), "holds no domains/*.json", "run `python -m scaler synth` first")
    sampling = SamplingParams(temperature=args.temperature, seed=args.seed, max_tokens=512)
    async with Engine(store=store, backend=args.backend, progress=False) as engine:
        for path in domain_files:
            tasks, problems = await verify_tasks(load_domain(path),
                                                 load_tasks(out / "tasks" / f"{path.stem}.jsonl"))
            for problem in problems:
                console.print(f"  left out: {problem}")
            if not tasks:
                continue
            policy = _policy(args, tasks)
            agent = Agent(policy, system_prompt=SYSTEM.format(domain=path.stem),
                          max_turns=args.max_turns, sampling=sampling, name=f"scaler-{path.stem}")
            try:
                run = await engine.run(tasks, agent, samples=args.samples,
                                       environment=EnvSpec("stateful", {"domain": str(path)}),
                                       scorer="state_alignment",
                                       metadata={"scaler": {"domain": path.stem}})
            finally:
                await close_policy(policy)
            console.print(f"[bold]domain {path.stem}[/]")
            await print_report(run, sorted({1, args.samples}), by=[])
            runs.append(run)
    return runs


async def filter_and_export(store_path: Path, run_ids: list[str], sft: Path | None,
                            grpo: Path | None) -> FilterResult:
    async with TraceStore(store_path) as store:
        result = await filter_runs(store, run_ids)
        print_filter(result)
        if sft is not None:
            n = await export_sft(store, result, sft)
            console.print(f"SFT set: {sft} ({n} trajectories)")
    if grpo is not None:
        n = export_tasks(result, grpo)
        console.print(f"GRPO tasks: {grpo} ({n} tasks)")
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m scaler", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    def running(q: argparse.ArgumentParser) -> None:
        q.add_argument("--store", type=Path, default=Path("scaler.db"))
        q.add_argument("--agent", choices=("gold", "noisy"), default="noisy",
                       help="scripted agent when no --policy-url (default noisy)")
        q.add_argument("--policy-url", help="OpenAI-compatible base URL")
        q.add_argument("--model", help="model served at --policy-url")
        q.add_argument("-n", "--samples", type=int, default=4)
        q.add_argument("--max-turns", type=int, default=12)
        q.add_argument("--temperature", type=float, default=1.0)
        q.add_argument("--backend", default="inprocess")

    def synthesizing(q: argparse.ArgumentParser) -> None:
        q.add_argument("--specs", type=Path, default=SPECS, help="spec folder or file")
        q.add_argument("--out", type=Path, default=Path("synth"))
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--tasks", type=int, default=8, help="tasks per domain")

    synthesizing(sub.add_parser("synth", help="specs → domains and tasks"))
    run = sub.add_parser("run", help="run an agent on every synthesized domain")
    run.add_argument("--out", type=Path, default=Path("synth"))
    run.add_argument("--seed", type=int, default=0)
    running(run)
    flt = sub.add_parser("filter", help="the three-stage filter over runs, and the exports")
    flt.add_argument("runs", nargs="+")
    flt.add_argument("--store", type=Path, default=Path("scaler.db"))
    flt.add_argument("--sft", type=Path)
    flt.add_argument("--grpo", type=Path)
    demo = sub.add_parser("demo", help="synth + run + filter + export on the shipped spec set")
    synthesizing(demo)
    running(demo)
    return p


async def main_async(args: argparse.Namespace) -> int:
    if args.command in ("synth", "demo"):
        report = await synthesize(args.specs, args.out, seed=args.seed,
                                  tasks_per_domain=args.tasks)
        print_synthesis(report, args.out)
        if args.command == "synth":
            return 0
    if args.command == "filter":
        await filter_and_export(args.store, args.runs, args.sft, args.grpo)
        return 0
    runs = await run_domains(args.out, args.store, args)
    if args.command == "demo":
        await filter_and_export(args.store, [r.id for r in runs], args.out / "sft.jsonl",
                                args.out / "grpo_tasks.jsonl")
    else:
        console.print("runs: " + " ".join(r.id for r in runs))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(main_async(build_parser().parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
