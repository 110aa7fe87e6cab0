"""A trainer's dataset row as a Drillyard task, and the GRPO group of one step.

Rows carry ``task_id``, ``answer`` (or ``ground_truth``) and ``task_metadata``
(an object or its JSON text) beside the chat ``messages``; the prompt is the
last user message. Each training step's samples of one task form one group,
stored as the task ``{task_id}@{step}``: a task seen again in a later epoch
is a new group, never mixed with the old one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from engine.tasks import Task


def task_from_row(messages: list[dict[str, Any]], data: dict[str, Any]) -> Task:
    """A task from a dataset row (see the module docstring)."""
    prompt = next(
        (str(m.get("content") or "") for m in reversed(messages) if m.get("role") == "user"), ""
    )
    prompt = str(data.get("prompt") or prompt)
    task_id = data.get("task_id")
    if task_id is None:
        task_id = "t-" + hashlib.sha1(prompt.encode()).hexdigest()[:12]
    truth = data.get("answer", data.get("ground_truth"))
    meta = data.get("task_metadata") or {}
    if isinstance(meta, str):
        meta = json.loads(meta) if meta.strip() else {}
    return Task(str(task_id), prompt, truth, metadata=dict(meta))


def group_task(base: Task, step: int) -> Task:
    """The task of ``base``'s GRPO group at training step ``step``."""
    return Task(
        f"{base.id}@{step}",
        base.prompt,
        base.ground_truth,
        base.attachments,
        {**base.metadata, "task_id": base.id, "step": step},
    )


def system_prompt(messages: list[dict[str, Any]]) -> str | None:
    """The content of a conversation's system message, if it has one."""
    return next((str(m["content"]) for m in messages if m.get("role") == "system"), None)
