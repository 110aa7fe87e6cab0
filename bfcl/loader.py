"""BFCL v4 multi-turn entries as `engine.Task`s.

    tasks = load_bfcl(["base", "miss_func"], limit=20)

Task id = the BFCL id (``multi_turn_base_0``); prompt = the first user turn;
ground truth = the possible answer (call strings per turn), which stays in
the driver; metadata: ``category`` (``base``, ``miss_func``, ``miss_param``,
``long_context``: report pass@k ``by=["category"]``), ``bfcl_id``,
``involved_classes`` and ``turns``.
"""

from __future__ import annotations

from collections.abc import Iterable

from bfcl import package
from engine.tasks import Task


def load_bfcl(categories: list[str] | None = None, *, limit: int | None = None,
              ids: Iterable[str] | None = None) -> list[Task]:
    """The entries of the given categories (all four by default), the first ``limit``
    of each, or only ``ids``."""
    wanted = set(ids) if ids is not None else None
    tasks: list[Task] = []
    for category in package.categories(categories):
        picked = [e for e in package.entries(category) if wanted is None or e["id"] in wanted]
        for entry in picked[:limit]:
            first = entry["question"][0] if entry["question"] else []
            tasks.append(Task(
                entry["id"], "\n\n".join(str(m["content"]) for m in first) or "(no message)",
                package.possible_answer(entry["id"]),
                metadata={"category": package.short_category(category), "bfcl_id": entry["id"],
                          "involved_classes": entry["involved_classes"],
                          "turns": len(entry["question"])}))
    return tasks
