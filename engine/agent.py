"""The agent: a policy, a prompt, a turn budget and how to read its answer."""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from engine.policy.base import Policy, SamplingParams
from engine.tasks import TaskView

_TAGGED = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_FINAL = re.compile(r"FINAL ANSWER:", re.IGNORECASE)


def extract_answer(text: str | None) -> str | None:
    """The answer in a final reply: whichever comes last of ``<answer>…</answer>``
    and ``FINAL ANSWER: …`` (to the end of the reply), else the whole reply
    stripped; None when there is nothing."""
    if text is None:
        return None
    candidates: list[tuple[int, str]] = []
    tagged = list(_TAGGED.finditer(text))
    if tagged:
        candidates.append((tagged[-1].start(), tagged[-1].group(1)))
    finals = list(_FINAL.finditer(text))
    if finals:
        rest = text[finals[-1].end() :]
        candidates.append((finals[-1].start(), rest.split("</answer>", 1)[0]))
    chosen = max(candidates)[1] if candidates else text
    return chosen.strip() or None


def function_name(fn: Callable[..., Any] | None) -> str | None:
    """``module:qualname`` of a module-level function (importable again), else None."""
    if fn is None or not inspect.isfunction(fn):  # a bound method or a partial: not by name
        return None
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
    if not module or not qualname or "<" in qualname:  # a lambda or a local function
        return None
    return f"{module}:{qualname}"


def function_by_name(name: str) -> Callable[..., Any]:
    """The function `function_name` named; ImportError/AttributeError when it is gone."""
    module_name, _, qualname = name.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise AttributeError(f"{name} is not callable")
    return cast(Callable[..., Any], obj)


@dataclass
class Agent:
    """What the engine needs to drive one rollout; plug in your own parts.

    ``policy`` is any object with the `Policy` ``complete`` method.
    ``request_extra(turn)`` may add per-turn request fields (for example a
    vLLM ``structured_outputs`` constraint). ``render_task`` turns the task
    view and the environment's first observation into the first user message.
    ``text_tool`` names a tool that takes a plain reply (one without tool calls)
    as ``{"text": reply}``, for text-action environments; without it a plain
    reply is the final answer.
    """

    policy: Policy
    system_prompt: str | None = None
    max_turns: int = 8
    sampling: SamplingParams = field(default_factory=SamplingParams)
    request_extra: Callable[[int], dict[str, Any]] | None = None
    answer_from: Callable[[str | None], str | None] = extract_answer
    render_task: Callable[[TaskView, str], str] | None = None
    name: str = "agent"
    text_tool: str | None = None

    def first_messages(self, task: TaskView, observation: str) -> list[dict[str, Any]]:
        msgs: list[dict[str, Any]] = []
        if self.system_prompt:
            msgs.append({"role": "system", "content": self.system_prompt})
        user = self.render_task(task, observation) if self.render_task else observation
        msgs.append({"role": "user", "content": user})
        return msgs

    def describe(self) -> dict[str, Any]:
        """A JSON description, stored with the run (and used by `resume` from the CLI)."""
        describe = getattr(self.policy, "describe", None)
        return {
            "name": self.name,
            "policy": describe() if callable(describe) else {"kind": type(self.policy).__name__},
            "system_prompt": self.system_prompt,
            "max_turns": self.max_turns,
            "sampling": self.sampling.to_dict(),
            # module-level functions by import name, so `resume` can rebuild them
            "answer_from": function_name(self.answer_from),
            "render_task": function_name(self.render_task),
            "text_tool": self.text_tool,
        }
