"""A model reply's prompt token ids, recorded once.

A call's prompt usually extends its agent's previous call: the previous
prompt + one choice's completion, then the tokens of what came back (the
template's end of turn, the observations). Recording every call's whole
prompt makes a rollout's stored ids grow with the square of its turns (a
GAIA-length rollout: most of the store's bytes). So a reply whose prompt
extends its agent's previous call (``continues.extends``) records only the
ids after that sequence::

    {"prompt_token_ids": null, "prompt_tail": [...], "continues": {"extends": true, "choice": k}}

`expand` rebuilds the whole prompts from a rollout's messages in order;
`TraceStore.messages` applies it, so every reader (trajectories, export, the
swift feed, GAIA's submission) sees whole prompts as before. Stores written
before this hold whole prompts, which `expand` leaves as they are. The
viewer's message pages show the stored form.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any

from engine.messages import Category, Message

TAIL = "prompt_tail"


def sequences(
    prompt: Sequence[int] | None, completions: Iterable[Sequence[int] | None]
) -> list[list[int]]:
    """Prompt + completion of each choice that has its ids (all choices of one
    call share the prompt): what the next call's prompt may extend."""
    if prompt is None:
        return []
    return [[*prompt, *ids] for ids in completions if ids is not None]


def tail(previous: Sequence[int], prompt: list[int]) -> dict[str, Any]:
    """The recorded form of ``prompt``, which starts with ``previous``."""
    return {"prompt_token_ids": None, TAIL: prompt[len(previous) :]}


def expand(messages: Iterable[Message]) -> list[Message]:
    """``messages`` (one rollout's, in order) with each recorded tail made the
    whole prompt again. A tail whose previous call is not among ``messages``
    stays a tail (``prompt_token_ids`` null: no ids, as a reader sees it)."""
    out: list[Message] = []
    last: dict[tuple[int, str], list[list[int]]] = {}  # (attempt, agent) -> sequences
    for m in messages:
        if m.category != Category.MODEL_REPLY:
            out.append(m)
            continue
        p = m.payload
        key = (m.attempt, str(p.get("agent")))
        prompt = p.get("prompt_token_ids")
        ids_tail = p.get(TAIL)
        if ids_tail is not None:
            choice = (p.get("continues") or {}).get("choice")
            previous = last.get(key, [])
            if isinstance(choice, int) and 0 <= choice < len(previous):
                prompt = [*previous[choice], *ids_tail]
                p = {k: v for k, v in p.items() if k != TAIL}
                p["prompt_token_ids"] = prompt
                m = dataclasses.replace(m, payload=p)
        others = p.get("others") or []
        last[key] = sequences(prompt, [p.get("token_ids"), *(o.get("token_ids") for o in others)])
        out.append(m)
    return out
