"""Trajectories out of a rollout's record: each agent's token sequence and conversation.

A rollout's model calls of one agent form one token-exact trajectory when
every call's prompt token ids (as the server returned them) start with the
previous call's prompt + completion ids: then the last prompt + completion
is the whole episode, the completions' ids sit in it exactly as they were
sampled, and ``loss_mask`` is 1 over them and 0 over every token the model
did not generate (system prompt, user turns, tool results, chat-template
glue). When an app rewrites its conversation between calls (a framework that
trims history, a summary in place of old turns, a branch) or the chat
template renders an earlier reply differently from how it was sampled, the
prompt does not continue the previous call: that is recorded on the reply
(``continues.extends`` false, with the first differing token) and the
trajectory is not trainable (``trainable`` false, ``reason`` says where); no
export hands it to training.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import orjson

from engine.messages import Category, Message
from engine.store import RolloutRecord, TraceStore

TRAINABLE_STATES = ("done", "failed")
"""States whose rollouts are GRPO samples (a failed one has reward 0)."""


@dataclass(frozen=True, slots=True)
class Continuation:
    """How one call's prompt relates to the same agent's previous call."""

    extends: bool
    choice: int | None = None  # which of the previous call's choices it continues
    at: int | None = None  # where the tokens first differ, when it does not

    def to_dict(self) -> dict[str, Any]:
        if self.extends:
            return {"extends": True, "choice": self.choice}
        return {"extends": False, "at": self.at}


def _common_prefix(a: list[int], b: list[int]) -> int:
    """How many leading ids ``a`` and ``b`` share (a bisection of slice compares,
    which run in C, not a Python loop over every id)."""
    lo, hi = 0, min(len(a), len(b))  # a[:lo] == b[:lo]; they differ within [:hi + 1]
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def continuation(previous: list[list[int]], prompt: list[int]) -> Continuation:
    """Whether ``prompt`` starts with one of ``previous`` (each a prompt + completion)."""
    at = 0
    for i, seq in enumerate(previous):
        if len(prompt) >= len(seq) and prompt[: len(seq)] == seq:
            return Continuation(True, choice=i)
        at = max(at, _common_prefix(seq, prompt))
    return Continuation(False, at=at)


@dataclass(slots=True)
class TokenTrajectory:
    """One agent's model calls in one rollout as a single token sequence.

    ``token_ids`` is the last call's prompt + completion; ``loss_mask`` and
    ``logprobs`` line up with it (logprob 0.0 where the mask is 0; None when
    the server sent none). ``prompt_length`` is the first call's prompt length.
    ``closing`` lists the positions of end-of-turn tokens that close a turn the
    model did not end itself (cut at its length limit): trainers train them as
    part of that turn, so they are in the mask, with the logprobs the server
    gave for them (`engine.policy.tokens`).
    With several choices (``n``) a call continues the choice the next prompt
    starts with; the last call's first choice ends the trajectory.
    """

    rollout_id: str
    agent: str
    calls: int
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float] | None
    prompt_length: int
    trainable: bool
    reason: str | None = None
    problem: str | None = None  # "no_token_ids" or "not_continued" when not trainable
    closing: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "agent": self.agent,
            "calls": self.calls,
            "token_ids": self.token_ids,
            "loss_mask": self.loss_mask,
            "logprobs": self.logprobs,
            "prompt_length": self.prompt_length,
            "trainable": self.trainable,
            "reason": self.reason,
        }


def _replies(messages: Iterable[Message], attempt: int | None) -> dict[str, list[Message]]:
    """Each agent's model replies in order (of one attempt, when given)."""
    out: dict[str, list[Message]] = {}
    for m in messages:
        if m.category == Category.MODEL_REPLY and (attempt is None or m.attempt == attempt):
            out.setdefault(str(m.payload.get("agent") or m.receiver), []).append(m)
    return out


def _choices(payload: dict[str, Any]) -> list[dict[str, Any]]:
    return [payload, *(payload.get("others") or [])]


def _untrainable(
    rollout_id: str, agent: str, calls: int, problem: str, reason: str
) -> TokenTrajectory:
    return TokenTrajectory(rollout_id, agent, calls, [], [], None, 0, False, reason, problem)


def _agent_trajectory(rollout_id: str, agent: str, replies: list[Message]) -> TokenTrajectory:
    tokens: list[int] = []
    mask: list[int] = []
    lps: list[float] = []
    have_lps = True
    first_prompt = 0
    closing: list[int] = []
    candidates: list[tuple[list[int], list[float] | None]] = []  # previous call's completions
    for k, reply in enumerate(replies, 1):
        choices = _choices(reply.payload)
        prompt = choices[0].get("prompt_token_ids")
        if not prompt or any(c.get("token_ids") is None for c in choices):
            return _untrainable(
                rollout_id,
                agent,
                len(replies),
                "no_token_ids",
                f"call {k} has no token ids from the server (ask for them: vLLM's"
                " return_token_ids)",
            )
        if k == 1:
            first_prompt = len(prompt)
            tokens, mask, lps = list(prompt), [0] * first_prompt, [0.0] * first_prompt
        else:
            seqs = [tokens + ids for ids, _ in candidates]
            cont = continuation(seqs, prompt)
            if not cont.extends:
                return _untrainable(
                    rollout_id,
                    agent,
                    len(replies),
                    "not_continued",
                    f"call {k}'s prompt does not continue call {k - 1} (tokens differ at"
                    f" {cont.at}): the conversation was rewritten or re-rendered",
                )
            assert cont.choice is not None
            ids, lp = candidates[cont.choice]
            have_lps = have_lps and lp is not None
            tokens = tokens + ids
            mask = mask + [1] * len(ids)
            lps = lps + (lp if lp is not None else [0.0] * len(ids))
            rest = prompt[len(tokens) :]
            tokens, mask, lps = tokens + rest, mask + [0] * len(rest), lps + [0.0] * len(rest)
            span, span_lps = choices[0].get("closing"), choices[0].get("closing_logprobs")
            if span:  # the previous turn's end-of-turn tokens, trained as part of it
                have_lps = have_lps and span_lps is not None
                for k2, pos in enumerate(range(span[0], span[1])):
                    mask[pos] = 1
                    lps[pos] = float(span_lps[k2]) if span_lps else 0.0
                    closing.append(pos)
        candidates = []
        for c in choices:
            ids = list(c["token_ids"])
            lp = c.get("logprobs")
            candidates.append((ids, list(lp) if lp is not None and len(lp) == len(ids) else None))
    ids, lp = candidates[0]
    have_lps = have_lps and lp is not None
    tokens, mask = tokens + ids, mask + [1] * len(ids)
    lps = lps + (lp if lp is not None else [0.0] * len(ids))
    return TokenTrajectory(
        rollout_id, agent, len(replies), tokens, mask, lps if have_lps else None, first_prompt,
        True, closing=closing,
    )  # fmt: skip


def token_trajectories(
    rollout_id: str, messages: Iterable[Message], attempt: int | None = None
) -> list[TokenTrajectory]:
    """One `TokenTrajectory` per agent that made model calls (in ``attempt``, when given)."""
    return [
        _agent_trajectory(rollout_id, agent, replies)
        for agent, replies in _replies(messages, attempt).items()
    ]


async def rollout_trajectories(store: TraceStore, rollout: RolloutRecord) -> list[TokenTrajectory]:
    """The token trajectories of a rollout's last attempt, from the store."""
    return token_trajectories(rollout.id, await store.messages(rollout.id), rollout.attempt)


def conversations(
    messages: Iterable[Message], attempt: int | None = None
) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per agent: its last request's messages with its reply appended (OpenAI
    format), and the tools that request offered, rebuilt from the recorded
    requests (each holds only what changed since the agent's previous one)."""
    state: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    out: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    for m in messages:
        if attempt is not None and m.attempt != attempt:
            continue
        p = m.payload
        if m.category == Category.MODEL_REQUEST and "keep" in p:
            agent = str(p.get("agent") or m.sender)
            msgs, tools = state.get(agent, ([], []))
            msgs = msgs[: int(p["keep"])] + list(p.get("messages") or [])
            state[agent] = (msgs, list(p["tools"]) if "tools" in p else tools)
        elif m.category == Category.MODEL_REPLY:
            agent = str(p.get("agent") or m.receiver)
            if agent in state:
                msgs, tools = state[agent]
                out[agent] = ([*msgs, _assistant(p)], tools)
    return out


def _assistant(reply: dict[str, Any]) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": reply.get("content") or ""}
    calls = reply.get("tool_calls") or []
    if calls:
        msg["tool_calls"] = [
            {"id": c.get("id"), "type": "function",
             "function": {"name": c.get("name"), "arguments": c.get("arguments")}}
            for c in calls
        ]  # fmt: skip
    return msg


@dataclass(slots=True)
class TrainingRows:
    """What `export_token_rows` wrote, and what it left out and why."""

    rows: int
    skipped: dict[str, int]


async def token_rows(store: TraceStore, run_id: str) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """GRPO rows of a run: one per trainable agent trajectory of a rollout that
    ended ``done`` or ``failed``, with its reward and group (the task); and how
    many trajectories were left out, by reason."""
    rows: list[dict[str, Any]] = []
    skipped: dict[str, int] = {}
    for r in await store.rollouts(run_id, TRAINABLE_STATES):
        for t in await rollout_trajectories(store, r):
            if not t.trainable:
                key = t.problem or "untrainable"
                skipped[key] = skipped.get(key, 0) + 1
                continue
            rows.append(
                {
                    **t.to_dict(),
                    "run_id": run_id,
                    "task_id": r.task_id,
                    "group_id": r.group_id,
                    "sample_index": r.sample_index,
                    "reward": r.reward,
                    "state": r.state,
                    "policy_version": r.policy_version,
                }
            )
    return rows, skipped


async def export_token_rows(store: TraceStore, run_id: str, path: str | Path) -> TrainingRows:
    """Write a run's GRPO rows (`token_rows`) as JSONL."""
    rows, skipped = await token_rows(store, run_id)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    await anyio.Path(path).write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return TrainingRows(len(rows), skipped)
