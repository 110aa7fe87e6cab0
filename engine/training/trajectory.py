"""A rollout's trajectory as the store holds it: the turns a trainer learns from.

One walk over a rollout's recorded messages serves every consumer (the rollout
server's replies to swift, SFT export): it starts at the attempt's environment
reset (an engine retry restarts the episode), and yields each model reply with
its exact token ids, prompt token ids, logprobs and policy version, followed by
the observations the environment answered it with. A plain reply that a
text-action tool answered, or that the environment's user answered with a new
turn (`Environment.respond`), is followed by a ``user`` observation, a tool
call's result by a ``tool`` one; replays of earlier actions are not observations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from engine.messages import Category, Message
from engine.store import TraceStore
from engine.trajectory import TokenTrajectory, token_trajectories


@dataclass(slots=True)
class Turn:
    """One model reply and what the environment answered it with."""

    content: str | None
    tool_calls: list[dict[str, Any]]
    token_ids: list[int] | None
    prompt_token_ids: list[int] | None
    logprobs: list[float] | None
    finish_reason: str | None
    policy_version: str | None
    observations: list[dict[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class Packed:
    """A trajectory after its first prompt as one id sequence. Per position:
    ``sampled`` (the model sampled it), ``closing`` (an end-of-turn token that
    closed a turn the model did not end, trained as part of that turn), and the
    ``logprob`` the server gave it (None: not known)."""

    token_ids: list[int]
    sampled: list[bool]
    closing: list[bool]
    position_logprobs: list[float | None]

    def mask(self, *, masked_out: bool = False) -> list[int]:
        """1 where a trainer trains: the sampled and closing ids; ``masked_out``
        (the infrastructure failed) keeps only the closing ids and the last sampled
        one (see `engine.integrations.swift_protocol.masked_out`)."""
        trained = [s or c for s, c in zip(self.sampled, self.closing, strict=True)]
        if masked_out:
            last = max(i for i, s in enumerate(self.sampled) if s)
            trained = [c or i == last for i, c in enumerate(self.closing)]
        return [int(t) for t in trained]

    def logprobs(self, mask: list[int]) -> list[float] | None:
        """The logprobs of the ids ``mask`` trains on, in order (None: one is unknown)."""
        out = [lp for lp, m in zip(self.position_logprobs, mask, strict=True) if m]
        return None if any(lp is None for lp in out) else [float(lp or 0.0) for lp in out]


@dataclass(slots=True)
class Trajectory:
    """The turns of one attempt of one rollout, from its environment reset on."""

    rollout_id: str
    attempt: int
    task: dict[str, Any]
    first_observation: str
    turns: list[Turn]
    tokens: TokenTrajectory | None = None  # the agent's model calls as one token sequence

    @property
    def token_exact(self) -> bool:
        """Every turn's prompt holds the previous turns exactly as they were sampled
        (the ids the model saw are the ids a trainer trains on)."""
        return self.packed() is not None

    @property
    def policy_versions(self) -> list[str | None]:
        return [t.policy_version for t in self.turns]

    def packed(self, end_token: int | None = None) -> Packed | None:
        """Everything after the first prompt as one sequence (`Packed`), from the
        agent's token trajectory (`engine.trajectory`); None unless every turn
        carries its ids and every later prompt extends the previous prompt and
        completion (see `engine.policy.tokens`). ``end_token`` (the end-of-turn id)
        is appended, not trained, when the last completion stopped without it (cut
        at its length limit), so a trainer's template adds none."""
        tokens = self.tokens
        if tokens is None or not tokens.trainable:
            return None
        start = tokens.prompt_length
        closing = set(tokens.closing)
        seq = tokens.token_ids[start:]
        sampled = [
            m == 1 and start + i not in closing for i, m in enumerate(tokens.loss_mask[start:])
        ]
        marks = [start + i in closing for i in range(len(seq))]
        lps: list[float | None] = (
            list(tokens.logprobs[start:]) if tokens.logprobs is not None else [None] * len(seq)
        )
        if end_token is not None and seq and seq[-1] != end_token:
            seq, sampled, marks, lps = (
                [*seq, end_token],
                [*sampled, False],
                [*marks, False],
                [*lps, None],
            )
        return Packed(seq, sampled, marks, lps)


def _is(message: Message, category: Category, topic: str) -> bool:
    return message.category == category and message.topic == topic


def trajectory_of(rollout_id: str, messages: list[Message]) -> Trajectory | None:
    """The trajectory of the last attempt that reached an environment reset."""
    resets = [
        i
        for i, m in enumerate(messages)
        if m.category == Category.OBSERVATION and m.topic == "reset"
    ]
    if not resets:
        return None
    start = resets[-1]
    reset = messages[start]
    task: dict[str, Any] = next(
        (m.payload.get("task", {}) for m in reversed(messages[:start]) if m.category == "task"),
        {},
    )
    turns: list[Turn] = []
    for m in messages[start + 1 :]:
        if m.attempt != reset.attempt:
            break
        p = m.payload
        if m.category == Category.MODEL_REPLY:
            turns.append(
                Turn(
                    content=p.get("content"),
                    tool_calls=list(p.get("tool_calls") or []),
                    token_ids=p.get("token_ids"),
                    prompt_token_ids=p.get("prompt_token_ids"),
                    logprobs=p.get("logprobs"),
                    finish_reason=p.get("finish_reason"),
                    policy_version=p.get("policy_version"),
                )
            )
        elif m.category == Category.TOOL_RESULT and m.topic != "replay" and turns:
            role = "tool" if turns[-1].tool_calls else "user"
            turns[-1].observations.append({"role": role, "content": str(p.get("content", ""))})
        elif _is(m, Category.OBSERVATION, "respond") and turns and not p.get("done"):
            # the environment's user speaks again: a new user turn
            turns[-1].observations.append({"role": "user", "content": str(p.get("content"))})
    agents = token_trajectories(rollout_id, messages[start + 1 :], reset.attempt)
    observation = str(reset.payload.get("content", ""))
    return Trajectory(rollout_id, reset.attempt, task, observation, turns,
                      agents[0] if len(agents) == 1 else None)  # fmt: skip


async def load_trajectory(store: TraceStore, rollout_id: str) -> Trajectory | None:
    """`trajectory_of` the rollout's committed messages (None: no attempt reached a reset)."""
    return trajectory_of(rollout_id, await store.messages(rollout_id))
