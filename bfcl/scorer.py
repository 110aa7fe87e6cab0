"""The ``bfcl`` scorer: BFCL's own ``multi_turn_checker`` on a rollout's decoded calls.

The answer is what the ``bfcl`` environment ends an episode with: the Python
call strings the model's tool calls decoded to, by user turn and step. The
verdict follows BFCL's per-entry evaluation (``eval_runner.
_evaluate_single_multi_turn_entry``): a result with fewer turns than the
possible answer is force-terminated (wrong); empty steps are dropped; then
``multi_turn_checker(decoded, possible_answer, test_entry, category, model)``
re-executes the model's calls and the possible answer turn by turn on fresh
backends and compares their states and execution results. Each check runs
under its own unique model name, so samples of one task never share backend
instances; they are removed afterwards.
"""

from __future__ import annotations

from typing import Any

from bfcl import package
from engine.tasks import Task
from tools.stateful.scoring import json_object


def decoded_turns(answer: str | None) -> list[list[list[str]]] | None:
    """The per-turn, per-step call strings of an answer, or None when it is not one."""
    data = json_object(answer)
    turns = data.get("turns") if data is not None else None
    if not isinstance(turns, list):
        return None
    return turns


def check_entry(entry_id: str, turns: list[list[list[str]]] | None,
                ground_truth: list[list[str]]) -> dict[str, Any]:
    """BFCL's verdict for one entry: ``{"valid": bool, ...}`` with its error type."""
    if turns is None:
        return {"valid": False, "error_type": "multi_turn:inference_error",
                "error_message": ["the rollout did not end with the environment's call log"]}
    if len(turns) != len(ground_truth):
        return {"valid": False, "error_type": "multi_turn:force_terminated",
                "error_message": [f"{len(turns)} turns, the possible answer has "
                                  f"{len(ground_truth)}"]}
    decoded = [[step for step in turn if step] for turn in turns]
    name = package.unique_name("score")
    try:
        result: dict[str, Any] = package.checker()(
            decoded, ground_truth, package.entry(entry_id), package.category_of(entry_id), name)
    finally:
        package.release(name)
    return result


def check(task: Task, answer: str | None) -> dict[str, Any]:
    entry_id = str(task.metadata.get("bfcl_id") or task.id)
    return check_entry(entry_id, decoded_turns(answer), task.ground_truth)


def bfcl_score(task: Task, answer: str | None) -> float:
    """Registered scorer ``bfcl``: 1.0 when BFCL's multi-turn checker accepts the rollout."""
    return 1.0 if check(task, answer).get("valid") else 0.0
