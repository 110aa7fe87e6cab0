"""Rollout states, their legal transitions, and the recorder that writes them.

Every rollout's record is a sequence of `Message`s numbered by ``seq``; each
state transition is one of them, checked against `TRANSITIONS`. `Recorder`
is shared by the engine's own rollouts (`engine.rollout.Rollout`) and by the
trainer-driven episodes of `engine.integrations.feed`, so both keep the same
record.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

from engine.messages import Category
from engine.store import TraceStore


class RolloutState(StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    GENERATING = "generating"
    ACTING = "acting"
    SCORING = "scoring"
    DONE = "done"
    FAILED = "failed"
    ERROR = "error"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


S = RolloutState
TERMINAL = frozenset({S.DONE, S.FAILED, S.ERROR, S.TIMED_OUT, S.CANCELLED})
_ENDS = {S.ERROR, S.TIMED_OUT, S.CANCELLED}
TRANSITIONS: dict[RolloutState, frozenset[RolloutState]] = {
    S.QUEUED: frozenset({S.STARTING, S.CANCELLED}),
    # an app's own agent may call a tool first, or end before any model call
    S.STARTING: frozenset({S.GENERATING, S.ACTING, S.SCORING, S.FAILED, *_ENDS}),
    S.GENERATING: frozenset({S.ACTING, S.SCORING, S.FAILED, *_ENDS}),
    S.ACTING: frozenset({S.GENERATING, S.SCORING, S.FAILED, *_ENDS}),
    S.SCORING: frozenset({S.DONE, S.FAILED, S.ERROR, S.CANCELLED}),
    # a new attempt (retry after error, resume after cancel) starts from queued
    S.ERROR: frozenset({S.QUEUED}),
    S.CANCELLED: frozenset({S.QUEUED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset(),
    S.TIMED_OUT: frozenset(),
}


class IllegalTransition(RuntimeError):
    """A transition the state machine does not allow (a bug, not a fault)."""


class Recorder:
    """Writes one rollout's messages in ``seq`` order and its state transitions."""

    def __init__(
        self,
        store: TraceStore,
        run_id: str,
        rollout_id: str,
        *,
        next_seq: int = 0,
        state: RolloutState = RolloutState.QUEUED,
        attempt: int = 0,
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.id = rollout_id
        self.seq = next_seq
        self.state = state
        self.attempt = attempt

    def headers(self) -> dict[str, Any]:
        """Headers stamped on every message (none by default)."""
        return {}

    def reserve(self) -> tuple[int, int, float]:
        """A place in the record for a message whose content is known only later."""
        self.seq += 1
        return self.seq - 1, self.attempt, time.time()

    def emit(
        self,
        category: Category,
        sender: str,
        receiver: str,
        topic: str = "",
        payload: dict[str, Any] | None = None,
        *,
        at: tuple[int, int, float] | None = None,
    ) -> None:
        """Record one message; ``at`` fills a place taken earlier with `reserve`."""
        if at is None:
            seq, attempt, created = self.seq, self.attempt, time.time()
            self.seq += 1
        else:
            seq, attempt, created = at
        self.store.append(
            self.id, seq, attempt, sender, receiver, category, topic, payload or {},
            self.headers(), created,
        )  # fmt: skip

    def transition(self, new: RolloutState, reason: str | None = None) -> None:
        """Move to ``new`` (it must be allowed), recording it and the rollout's state."""
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"rollout {self.id}: {self.state} → {new} is not allowed")
        payload: dict[str, Any] = {"from": str(self.state), "to": str(new)}
        if reason:
            payload["reason"] = reason
        self.emit(Category.STATE, "engine", "engine", str(new), payload)
        self.state = new
        self.store.update_rollout(self.id, state=str(new))
