"""Agents for BFCL multi-turn: the evaluation agent, and a replay of the possible answers.

`bfcl_agent` runs a policy the way BFCL's function-calling handlers do: no
system prompt (the entry's turns are the conversation), the entry's tools,
and a turn budget of BFCL's step limit per user turn
(``(MAXIMUM_STEP_LIMIT + 2) × turns``: BFCL fails an entry whose model takes
more than 20 steps in one turn; Drillyard's budget counts model calls over the
whole episode, so a model that loops is failed too, a little later).

`replay_policy` is a scripted agent that, in each user turn, makes all of the
possible answer's calls for that turn in one reply (parallel tool calls) and
then says "Done." — the check that every loaded task is solvable and scored
as BFCL scores it. It reads the possible answers, so it is for checking the
pipeline, never for evaluation. It tells tasks apart by the user turns so far
and the tools on offer, which is enough within one category (``long_context``
repeats ``base``'s conversations with other answers: replay one category at a
time).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
from collections.abc import Sequence
from typing import Any

from bfcl import package
from engine.agent import Agent
from engine.policy.base import Policy, SamplingParams
from engine.policy.scripted import ScriptedPolicy
from engine.tasks import Task


def turn_budget(tasks: Sequence[Task]) -> int:
    turns = max((int(t.metadata.get("turns", 1)) for t in tasks), default=1)
    return (package.step_limit() + 2) * turns


def bfcl_agent(policy: Policy, tasks: Sequence[Task], sampling: SamplingParams | None = None,
               **options: Any) -> Agent:
    options.setdefault("max_turns", turn_budget(tasks))
    return Agent(policy, system_prompt=None, sampling=sampling or SamplingParams(),
                 name="bfcl", **options)


def parse_call(text: str, classes: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """A possible-answer call string (``mv(source='a', destination='b')``) as a name and
    keyword arguments; positional ones are named from the backend method's signature."""
    node = ast.parse(text.strip(), mode="eval").body
    if not isinstance(node, ast.Call):
        raise ValueError(f"not a call: {text}")
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(
        func, ast.Attribute) else ""
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords if k.arg}
    if node.args:
        mapping = package.module("constants.executable_backend_config").CLASS_FILE_PATH_MAPPING
        for cls_name in classes:
            cls = getattr(importlib.import_module(mapping[cls_name]), cls_name)
            if hasattr(cls, name):
                params = [p for p in inspect.signature(getattr(cls, name)).parameters
                          if p != "self"]
                kwargs.update({params[i]: ast.literal_eval(a) for i, a in enumerate(node.args)})
                break
    return name, kwargs


def _expected(task: Task) -> tuple[list[str], list[tuple[str, ...]]]:
    """The user messages the ``bfcl`` environment will say, and the tools on offer, per turn."""
    entry = package.entry(str(task.metadata.get("bfcl_id") or task.id))
    functions = [f["name"] for f in entry["function"]]
    said, tools = [], []
    for turn, messages in enumerate(entry["question"]):
        held = (entry.get("missed_function") or {}).get(str(turn))
        if held:
            functions += [f["name"] for f in held]
            said.append(package.extra_functions_prompt())
        else:
            said.append("\n\n".join(str(m["content"]) for m in messages))
        tools.append(tuple(sorted(functions)))
    return said, tools


def replay_policy(tasks: Sequence[Task]) -> ScriptedPolicy:
    """A `ScriptedPolicy` replaying each task's possible answer (see the module doc)."""
    plans: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    classes: dict[tuple[tuple[str, ...], tuple[str, ...]], list[str]] = {}
    for task in tasks:
        said, offered = _expected(task)
        for turn, calls in enumerate(task.ground_truth):
            key = (tuple(said[: turn + 1]), offered[turn])
            plans[key] = list(calls)
            classes[key] = list(task.metadata["involved_classes"])

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        users = [i for i, m in enumerate(messages) if m["role"] == "user"]
        key = (tuple(messages[i]["content"] for i in users),
               tuple(sorted(t["function"]["name"] for t in tools)))
        calls = plans.get(key)
        if calls is None:
            return "I cannot tell which task this is."
        if any(m["role"] == "assistant" and m.get("tool_calls") for m in messages[users[-1]:]):
            return "Done."
        if not calls:
            return "I cannot do that with the functions I have."
        parsed = [parse_call(c, classes[key]) for c in calls]
        return {"tool_calls": [{"name": n, "arguments": json.dumps(a)} for n, a in parsed]}

    return ScriptedPolicy(handler)
