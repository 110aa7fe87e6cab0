"""Scripted agents for synthesized tasks, for checking the pipeline (not for evaluation:
they read the gold calls).

- `GoldReplay` replays each task's gold calls, one call per reply, saying
  "Done." at the end of each user turn: every trajectory it makes passes all
  three stages of the filter.
- `NoisyReplay` does the same but spoils some rollouts, each in one way drawn
  from the rollout's seed (``SamplingParams.seed``, which the driver offsets
  by the sample index) and the task's prompt: a malformed call (fails validity), an error left
  unanswered (validity), a wrong argument in a write (state alignment), the
  last call skipped (state alignment), an extra read call (exact match).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from typing import Any

from engine.environment import ToolSpec
from engine.policy.base import Completion, SamplingParams
from engine.policy.toolcalls import make_call
from engine.tasks import Task
from scaler.sampling import turn_split
from tools.stateful.crud import crud_descriptor

SPOILS = ("none", "malformed", "unanswered", "wrong_argument", "skip_last", "extra_read")


class GoldReplay:
    """A `Policy` that replays the gold calls of the task it recognises by its prompt."""

    version = "gold-replay"

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.plans = {t.prompt: turn_split(t.ground_truth["calls"]) for t in tasks}

    def describe(self) -> dict[str, Any]:
        return {"kind": type(self).__name__, "tasks": len(self.plans)}

    def spoil(self, params: SamplingParams | None, prompt: str) -> str:
        return "none"

    async def complete(self, messages: list[dict[str, Any]], tools: list[ToolSpec] | None = None,
                       params: SamplingParams | None = None, n: int = 1) -> list[Completion]:
        user = next((m["content"] for m in messages if m["role"] == "user"), "")
        return [self.reply(messages, tools or [], self.spoil(params, user))] * n

    def reply(self, messages: list[dict[str, Any]], tools: list[ToolSpec],
              spoil: str = "none") -> Completion:
        """The next reply, spoilt one way (`SPOILS`) or not; usable as a
        `ScriptedPolicy` handler: ``ScriptedPolicy(lambda m, t: replay.reply(m, t))``."""
        user = [i for i, m in enumerate(messages) if m["role"] == "user"]
        plan = self.plans.get(messages[user[0]]["content"]) if user else None
        if plan is None:
            return Completion("I do not know this task.")
        turn = len(user) - 1
        tried = sum(1 for m in messages[user[-1]:] if m["role"] == "assistant"
                    and m.get("tool_calls"))
        calls = list(plan[turn]) if turn < len(plan) else []
        return self.plan_turn(calls, tried, spoil, turn == 0, turn == len(plan) - 1, tools)

    def plan_turn(self, calls: list[dict[str, Any]], tried: int, spoil: str, first: bool,
                  last: bool, tools: list[ToolSpec]) -> Completion:
        """The reply after ``tried`` replies with calls in this user turn."""
        if spoil == "malformed" and first and calls:
            if tried == 0:
                return Completion(None, [make_call("call_bad", calls[0]["name"],
                                                   '{"broken": ')], "tool_calls")
            tried -= 1
        if spoil == "wrong_argument":
            calls = [_spoilt(c) for c in calls]
        if spoil == "skip_last" and last:
            calls = calls[:-1]
        if spoil == "extra_read" and last:
            calls = calls + _read_after(calls, tools)
        if spoil == "unanswered" and last:
            calls = [*calls, {"name": "no_such_tool", "arguments": {}}]
        if tried < len(calls):
            return _call(calls[tried]["name"], calls[tried]["arguments"], tried)
        return Completion("Done.")


class NoisyReplay(GoldReplay):
    """`GoldReplay` with one spoil per rollout, drawn from its seed (see the module doc)."""

    version = "noisy-replay"

    def __init__(self, tasks: Sequence[Task], clean_share: float = 0.4) -> None:
        super().__init__(tasks)
        self.clean_share = clean_share

    def spoil(self, params: SamplingParams | None, prompt: str) -> str:
        seed = params.seed if params is not None and params.seed is not None else 0
        rng = random.Random(f"{seed}:{prompt}")
        if rng.random() < self.clean_share:
            return "none"
        return rng.choice(SPOILS[1:])


def _read_after(calls: list[dict[str, Any]], tools: list[ToolSpec]) -> list[dict[str, Any]]:
    """One extra read call (a CRUD read tool whose key a gold call names), or none."""
    for spec in tools:
        desc = crud_descriptor(spec)
        if desc is None or desc["op"] != "read":
            continue
        for c in calls:
            if desc["key"] in c["arguments"]:
                return [{"name": spec["function"]["name"],
                         "arguments": {desc["key"]: c["arguments"][desc["key"]]}}]
    return []


def _spoilt(call: dict[str, Any]) -> dict[str, Any]:
    """The call with its first non-key string given a typo (or number moved by one)."""
    args = dict(call["arguments"])
    for k, v in args.items():
        if isinstance(v, str) and not k.endswith("id") and "date" not in k:
            args[k] = v + " (typo)"
            break
    else:
        for k, v in args.items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                args[k] = v - 1 if v > 1 else v + 1
                break
    return {"name": call["name"], "arguments": args}


def _call(name: str, arguments: dict[str, Any], i: int) -> Completion:
    return Completion(None, [make_call(f"call_{i}", name, json.dumps(arguments))], "tool_calls")
