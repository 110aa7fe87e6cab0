"""``python -m engine eval bfcl``: BFCL v4 multi-turn through Drillyard, pass@k by category.

    python -m engine eval bfcl --category base,miss_func -n 4 --k 1,4 \\
        --policy-url http://127.0.0.1:8000/v1 --model qwen
    python -m engine eval bfcl --replay            # the possible answers, replayed: all correct

Every rollout is scored by BFCL's own multi-turn checker. ``--replay`` runs
one category at a time (see `bfcl.agent.replay_policy`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bfcl.agent import bfcl_agent, replay_policy
from bfcl.loader import load_bfcl
from bfcl.package import CATEGORIES
from engine.api import Engine, Run
from engine.cli import console, parse_ks, print_report, run_command
from engine.errors import ConfigError
from engine.policy.base import Policy, SamplingParams
from engine.policy.openai import OpenAIPolicy
from engine.resources import close_policy


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m engine eval bfcl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--category", default=",".join(CATEGORIES),
                   help=f"comma-separated, of {', '.join(CATEGORIES)} (default: all)")
    p.add_argument("--limit", type=int, help="only the first N entries of each category")
    p.add_argument("-n", "--samples", type=int, default=1)
    p.add_argument("--k", type=parse_ks, default=None, help="pass@k to report (default 1,n)")
    p.add_argument("--store", type=Path, default=Path("bfcl.db"))
    p.add_argument("--policy-url", help="OpenAI-compatible base URL")
    p.add_argument("--model", help="model served at --policy-url")
    p.add_argument("--replay", action="store_true", help="replay the possible answers")
    p.add_argument("--temperature", type=float, default=0.001)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--backend", default="inprocess")
    p.add_argument("--max-rollouts", type=int, default=16)
    return p


async def run(args: argparse.Namespace) -> int:
    cats = [c.strip() for c in args.category.split(",") if c.strip()]
    tasks = load_bfcl(cats, limit=args.limit)
    if not tasks:
        raise ConfigError("--category/--limit", "no task left to run", "widen the selection")
    ks = args.k or sorted({1, args.samples})
    if max(ks) > args.samples:
        raise ConfigError("--k", f"k={max(ks)} needs at least {max(ks)} samples",
                          f"pass -n {max(ks)}")
    if not args.replay and not (args.policy_url and args.model):
        raise ConfigError("policy", "no policy given", "pass --policy-url URL --model NAME, "
                          "or --replay")
    sampling = SamplingParams(temperature=args.temperature, max_tokens=args.max_tokens,
                              seed=args.seed)
    groups = ([[t for t in tasks if t.metadata["category"] == c] for c in
               dict.fromkeys(t.metadata["category"] for t in tasks)] if args.replay else [tasks])
    runs: list[Run] = []
    async with Engine(store=args.store, backend=args.backend, max_rollouts=args.max_rollouts,
                      progress=None) as engine:
        for group in groups:
            policy: Policy = replay_policy(group) if args.replay else OpenAIPolicy(
                args.policy_url, args.model)
            try:
                runs.append(await engine.run(group, bfcl_agent(policy, group, sampling),
                                             environment="bfcl", scorer="bfcl",
                                             samples=args.samples,
                                             metadata={"bfcl": {"categories": cats}}))
            finally:
                await close_policy(policy)
        for r in runs:
            await print_report(r, ks, by=["category"])
    console.print(f"store: {args.store} (runs {' '.join(r.id for r in runs)})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_command(run(build_parser().parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
