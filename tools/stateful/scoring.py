"""Scorers for stateful tasks, run in the driver: ``scorer(task, answer) -> reward``.

The answer is what the ``stateful`` environment ends an episode with
(``{"reply", "state", "calls"}``, JSON); the task's ground truth is
``{"final_state": ..., "calls": [{"name", "arguments"}, ...]}``.

- ``state_alignment``: 1.0 when the final state equals the gold final state
  (both as canonical JSON: key order, tuples vs lists and SQLite row order do
  not matter; every value does).
- ``call_match``: 1.0 when the agent's calls equal the gold sequence. The
  tolerance rules:

  1. calls that failed (an error observation: bad arguments, an unknown tool,
     the tool raised) are dropped first: a mistake the agent corrected is not
     a mismatch, a failed call changed nothing;
  2. the rest must equal the gold calls one for one, in order, by name;
  3. arguments compare as JSON values, except that an argument whose value is
     null counts as absent, numbers compare by value (``2 == 2.0``), and
     strings compare after trimming surrounding whitespace; nothing else is
     forgiven (no case folding, no reordering of list items, no extra keys).

`check` returns the reason along with the verdict, for reports and the filter.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine.tasks import Task
from tools.stateful.state import canonical


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str


def json_object(answer: str | None) -> dict[str, Any] | None:
    """An answer that is a JSON object (an environment's end-of-episode record), else None."""
    if not answer:
        return None
    try:
        data = json.loads(answer)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def parse_answer(answer: str | None) -> dict[str, Any] | None:
    """The ``stateful`` environment's end-of-episode answer, or None when it is not one."""
    data = json_object(answer)
    if data is None or "state" not in data or "calls" not in data:
        return None
    return data


def _gold(task: Task) -> dict[str, Any]:
    truth = task.ground_truth
    if isinstance(truth, str):
        truth = json.loads(truth)
    if not isinstance(truth, dict):
        raise ValueError(f"task {task.id}: ground truth must be {{final_state, calls}}")
    return truth


def normalise(value: Any) -> Any:
    """An argument value under the tolerance rules (see the module doc)."""
    if isinstance(value, dict):
        return {k: normalise(v) for k, v in sorted(value.items()) if v is not None}
    if isinstance(value, list | tuple):
        return [normalise(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return value.strip()
    return value


def check_state(task: Task, answer: str | None) -> Verdict:
    data = parse_answer(answer)
    if data is None:
        return Verdict(False, "the episode did not end with the environment's state")
    want = canonical(_gold(task)["final_state"])
    got = canonical(data["state"])
    if got == want:
        return Verdict(True, "final state equals the gold state")
    tables = sorted(t for t in set(want) | set(got) if want.get(t) != got.get(t))
    return Verdict(False, f"final state differs in {', '.join(tables)}")


def agent_calls(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The calls that succeeded, in order (rule 1)."""
    return [c for c in data.get("calls") or [] if c.get("ok")]


def check_calls(task: Task, answer: str | None) -> Verdict:
    data = parse_answer(answer)
    if data is None:
        return Verdict(False, "the episode did not end with the environment's call log")
    gold = _gold(task)["calls"]
    got = agent_calls(data)
    if len(got) != len(gold):
        return Verdict(False, f"{len(got)} successful calls, the gold sequence has {len(gold)}")
    for i, (g, c) in enumerate(zip(gold, got, strict=True)):
        if g["name"] != c["name"]:
            return Verdict(False, f"call {i + 1} is {c['name']}, gold is {g['name']}")
        if normalise(g.get("arguments") or {}) != normalise(c.get("arguments") or {}):
            return Verdict(False, f"call {i + 1} ({g['name']}) has other arguments than gold")
    return Verdict(True, "calls equal the gold sequence")


def state_alignment(task: Task, answer: str | None) -> float:
    """Registered scorer ``state_alignment``: final state equals gold."""
    return 1.0 if check_state(task, answer).ok else 0.0


def call_match(task: Task, answer: str | None) -> float:
    """Registered scorer ``call_match``: calls equal the gold sequence (tolerances above)."""
    return 1.0 if check_calls(task, answer).ok else 0.0
