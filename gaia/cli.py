"""``python -m engine eval gaia``: run GAIA tasks k times, print pass@k overall
and per level, and write the trace store and a submission file.

    python -m engine eval gaia --data DIR --split validation -n 8 --k 1,4,8 \\
        --policy-url http://127.0.0.1:8000/v1 --model qwen

Without ``--data`` it runs the bundled offline task set. ``--policy
module:attr`` names a factory (called with no arguments) that returns a
`Policy` or a whole `Agent`, for scripted or custom agents.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path
from typing import Any

from engine import eventloop
from engine.agent import Agent
from engine.api import Engine
from engine.cli import console, parse_ks, print_report
from engine.errors import ConfigError, DrillyardError
from engine.ordering import TaskOrder
from engine.policy.base import SamplingParams
from engine.policy.openai import OpenAIPolicy
from gaia import BUNDLED
from gaia.agent import DEFAULT_MAX_TURNS, gaia_agent, gaia_environment
from gaia.environment import DEFAULT_TOOLS, GaiaEnvironment
from gaia.loader import annotator_steps, load_gaia
from gaia.submission import write_submission

ORDER_CHOICES: dict[str, TaskOrder] = {
    "steps": annotator_steps,  # the annotator's step count: more steps, longer
    "history": "longest_first",  # mean duration in earlier runs of the store
    "given": "given",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine eval gaia", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=BUNDLED,
                   help="GAIA folder (holding 2023/), a split folder or a metadata file "
                        "(default: the bundled offline set)")
    p.add_argument("--split", default="validation", help="validation or test")
    p.add_argument("-n", "--samples", type=int, default=1, help="samples per task")
    p.add_argument("--k", type=parse_ks, default=None,
                   help="pass@k to report, e.g. 1,4,8 (default: 1,n)")
    p.add_argument("--level", type=int, action="append", choices=(1, 2, 3),
                   help="only this level (repeatable)")
    p.add_argument("--limit", type=int, help="only the first N tasks")
    p.add_argument("--store", type=Path, default=Path("drillyard.db"), help="SQLite trace store")
    p.add_argument("--submission", type=Path, help="submission JSONL (default: beside the store)")
    p.add_argument("--run-id", help="name the run")
    p.add_argument("--policy-url", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", help="model name served at --policy-url")
    p.add_argument("--api-key-env", help="environment variable holding the API key")
    p.add_argument("--policy", help="module:attr of a factory returning a Policy or an Agent")
    p.add_argument("--max-turns", type=int, default=DEFAULT_MAX_TURNS)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--tools", help=f"comma-separated toolset (default {','.join(DEFAULT_TOOLS)})")
    p.add_argument("--backend", default="inprocess")
    p.add_argument("--max-rollouts", type=int, default=16, help="rollouts in flight")
    p.add_argument("--step-timeout", type=float, default=120.0)
    p.add_argument("--rollout-timeout", type=float)
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--order", choices=ORDER_CHOICES, default="steps",
                   help="start order: 'steps' = most annotator steps first (default), "
                   "'history' = longest mean duration in earlier runs of this store first, "
                   "'given' = as in the data")
    return p


def load_factory(target: str) -> Any:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError("--policy", f"{target!r} is not module:attr", "e.g. mypkg.agents:make")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError("--policy", f"cannot load {target}: {exc}", "check the name") from exc


def build_agent(args: argparse.Namespace) -> Agent:
    sampling = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens,
                              seed=args.seed)
    if args.policy:
        made = load_factory(args.policy)()
        if isinstance(made, Agent):
            return made
        return gaia_agent(made, max_turns=args.max_turns, sampling=sampling)
    if not (args.policy_url and args.model):
        raise ConfigError("policy", "no policy given",
                          "pass --policy-url URL --model NAME, or --policy module:factory")
    key = None
    if args.api_key_env:
        key = os.environ.get(args.api_key_env)
        if not key:
            raise ConfigError("--api-key-env", f"the variable {args.api_key_env} is not set",
                              f"export {args.api_key_env}=<key>")
    return gaia_agent(OpenAIPolicy(args.policy_url, args.model, api_key=key),
                      max_turns=args.max_turns, sampling=sampling)


async def run(args: argparse.Namespace) -> int:
    if args.samples < 1:
        raise ConfigError("-n", f"must be >= 1, got {args.samples}")
    tasks = load_gaia(args.data, args.split, levels=args.level, limit=args.limit)
    if not tasks:
        raise ConfigError("--level/--limit", "no task left to run", "widen the selection")
    ks = args.k or sorted({1, args.samples})
    if max(ks) > args.samples:
        raise ConfigError("--k", f"k={max(ks)} needs at least {max(ks)} samples, not "
                          f"{args.samples}", f"pass -n {max(ks)} or a smaller --k")
    tools = [t.strip() for t in args.tools.split(",")] if args.tools else list(DEFAULT_TOOLS)
    await GaiaEnvironment(tools=tools).close()  # an unknown tool fails here, before any rollout
    agent = build_agent(args)
    env = gaia_environment(tools)
    console.print(f"GAIA {args.split}: {len(tasks)} tasks from {args.data}, {args.samples} "
                  f"sample(s) each; store {args.store}")
    async with Engine(store=args.store, backend=args.backend, max_rollouts=args.max_rollouts,
                      step_timeout=args.step_timeout, rollout_timeout=args.rollout_timeout,
                      progress=args.progress) as engine:
        try:
            result = await engine.run(tasks, agent, environment=env, samples=args.samples,
                                      scorer="gaia", run_id=args.run_id,
                                      order=ORDER_CHOICES[args.order],
                                      metadata={"gaia": {"data": str(args.data),
                                                         "split": args.split}})
        finally:
            close = getattr(agent.policy, "aclose", None)
            if close is not None:
                await close()
        await print_report(result, ks, by=["level"])
        if all(t.ground_truth is None for t in tasks):
            console.print("no ground truth in this split: pass@k is 0 by construction; "
                          "score the submission file on the leaderboard")
        path = args.submission or args.store.with_name(f"{result.id}.submission.jsonl")
        n = await write_submission(engine.store, result.id, path)
    console.print(f"submission: {path} ({n} tasks)")
    console.print(f"store: {args.store} (run {result.id})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import gaia  # noqa: F401 - registers the gaia scorer and environment

    try:
        return eventloop.run(run(args))
    except DrillyardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: recorded work is in the store; finish it with `python -m engine "
              "resume`", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
