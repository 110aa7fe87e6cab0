"""The colocate training feed: the trainer generates, the engine's own driver does the rest.

Trainer-neutral (ms-swift's plugin in `swift_plugin` is a thin adapter). One
`Feed` per training job holds one live run (`engine.live`); every sample the
trainer rolls out is one rollout there, driven by the same `Rollout` driver,
scheduler, retries, backend and store as `Engine.run`. Only the policy
differs: `TrainerTurns`, whose ``complete`` hands the conversation to the
trainer and waits for what the trainer's own engine generated::

    start(row)      the rollout starts (environment leased and reset); the
                    trainer gets the first messages to generate from
    turn_end(reply) the reply goes to the driver, which runs its tool calls and
                    records everything; the trainer gets the observations for
                    the next turn, or the end of the episode

So a fault ends the same way here as in evaluation: a tool that raises or
times out is an observation; an environment that is lost fails the attempt,
which is retried from a fresh environment (the replies the trainer already
generated are replayed, the trainer is not asked again). When the attempts
run out the sample ends ``error`` with its loss mask zeroed but for one token
(`swift_protocol.masked_out`) and no reward: it is never replaced by another
sample. Everything runs on the feed's own loop thread (`LoopThread`).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from engine.agent import Agent, extract_answer
from engine.api import Engine
from engine.environment import EnvSpec, ToolCall, ToolSpec
from engine.errors import NotRetryable
from engine.integrations.bridge import LoopThread
from engine.integrations.config import FeedConfig
from engine.integrations.rows import group_task, system_prompt, task_from_row
from engine.integrations.swift_protocol import masked_out
from engine.live import BatchItem, BatchResult, LiveRun
from engine.policy.base import Completion, SamplingParams
from engine.policy.toolcalls import parse_hermes
from engine.recording import RolloutState
from engine.training.curriculum import TurnSchedule

log = structlog.get_logger("drillyard.feed")
S = RolloutState


@dataclass(slots=True)
class TurnResult:
    """What the trainer gets back for one turn."""

    done: bool
    token_ids: list[int]
    loss_mask: list[int]
    logprobs: list[float]
    next_messages: list[dict[str, Any]] = field(default_factory=list)
    infos: dict[str, Any] = field(default_factory=dict)


class TrainerTurns:
    """The policy of one trainer-driven rollout: its replies are the trainer's.

    The k-th model call of an attempt (k assistant messages in the conversation
    so far) gets the trainer's k-th reply: a retried attempt replays the replies
    already generated, and only a new turn is asked of the trainer.
    """

    def __init__(self, episode: Episode) -> None:
        self.episode = episode
        self.replies: list[Completion] = []
        self._waiting: asyncio.Future[Completion] | None = None

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None = None,
        params: SamplingParams | None = None,
        n: int = 1,
    ) -> list[Completion]:
        index = sum(1 for m in messages if m.get("role") == "assistant")
        if index < len(self.replies):
            return [self.replies[index]]
        self._waiting = asyncio.get_running_loop().create_future()
        self.episode.events.put_nowait(("generate", messages))
        reply = await self._waiting
        self.replies.append(reply)
        return [reply]

    def deliver(self, reply: Completion) -> None:
        if self._waiting is None or self._waiting.done():
            raise RuntimeError(f"sample {self.episode.uuid}: a reply came that no turn asked for")
        self._waiting.set_result(reply)

    def abandon(self, reason: str) -> None:
        """End the rollout's wait for the trainer (the trainer restarted the sample)."""
        if self._waiting is not None and not self._waiting.done():
            self._waiting.set_exception(NotRetryable(reason))


class Episode:
    """One sample of the trainer: one rollout of the live run, and its turns so far."""

    def __init__(self, uuid: str, step: int, budget: int | None) -> None:
        self.uuid = uuid
        self.step = step
        self.budget = budget
        self.turns = TrainerTurns(self)
        self.events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self.item: BatchItem | None = None
        self.result: BatchResult | None = None
        self.known = 0  # messages of the conversation the trainer already has

    @property
    def rollout_id(self) -> str:
        return self.item.rollout_id if self.item and self.item.rollout_id else "?"

    async def next_event(self) -> tuple[str, Any]:
        return await self.events.get()

    @property
    def masked(self) -> bool:
        return self.result is not None and self.result.state in (S.ERROR, S.CANCELLED)

    def infos(self) -> dict[str, Any]:
        result = self.result
        return {
            "rollout_id": self.rollout_id,
            "state": str(result.state) if result else "generating",
            "reward": result.outcome.reward if result else None,
            "turns": len(self.turns.replies),
            "turn_budget": self.budget,
            "step": self.step,
            "attempts": result.attempts if result else None,
            "masked": self.masked,
        }


class Feed:
    """One training job's link to Drillyard: its engine, its live run, its episodes."""

    def __init__(self, config: FeedConfig | None = None) -> None:
        self.config = config or FeedConfig.from_env()
        self.spec = EnvSpec(self.config.environment, dict(self.config.env_config))
        self.schedule = TurnSchedule.from_config(self.config.curriculum)
        self.run_id = self.config.run_id or time.strftime("swift-%Y%m%d-%H%M%S")
        self.engine = Engine(
            store=self.config.store,
            backend=self.config.backend,
            backend_options=self.config.backend_options,
            max_attempts=self.config.max_attempts,
            retry_backoff=self.config.retry_backoff,
            step_timeout=self.config.step_timeout,
            progress=False,
        )
        self.store = self.engine.store
        self.live: LiveRun | None = None
        self.episodes: dict[str, Episode] = {}
        self.global_step: int | None = None  # set by the trainer's callback
        self.batches = 0
        self._batches: set[asyncio.Task[list[BatchResult]]] = set()
        self._timing: dict[int, dict[str, Any]] = {}
        self.closed = False
        self.loop = LoopThread()
        try:
            self.loop.call(self._open())
        except BaseException:
            self.loop.stop()
            raise

    async def _open(self) -> None:
        await self.engine.__aenter__()
        try:
            self.live = await self.engine.live_run(
                None,  # every rollout has its own agent, whose turns are the trainer's
                environment=self.spec,
                scorer=self.config.scorer,
                run_id=self.run_id,
                metadata={
                    "trainer": "ms-swift GRPO (drillyard scheduler plugin)",
                    "curriculum": self.schedule.to_dict() if self.schedule else None,
                    "text_tool": self.config.text_tool,
                    "system_prompt": self.config.system_prompt,
                },
            )
        except BaseException:
            await self.engine.aclose()
            raise
        log.info("training feed open", run=self.run_id, store=str(self.store.path))

    # ---- steps -----------------------------------------------------------

    def current_step(self) -> int:
        return self.global_step if self.global_step is not None else self.batches

    def policy_version(self, step: int) -> str:
        return f"step-{step}"

    def turn_budget(self, step: int, trainer_max: int | None) -> int | None:
        if self.schedule is not None:
            budget = self.schedule.max_turns(step)
            return min(budget, trainer_max) if trainer_max else budget
        return trainer_max

    # ---- episodes (run on the loop thread) -------------------------------

    async def start_many(
        self, rows: list[tuple[str, list[dict[str, Any]], dict[str, Any]]], trainer_max: int | None
    ) -> list[list[dict[str, Any]]]:
        """For each ``(uuid, messages, data)``: start a rollout, return its first messages."""
        assert self.live is not None
        step = self.current_step()
        self.batches += 1
        timing = self._timing.setdefault(step, {"rollout_start": time.time(), "rewards": []})
        timing.setdefault("rollout_start", time.time())
        episodes, items = [], []
        for uuid, messages, data in rows:
            old = self.episodes.pop(uuid, None)
            if old is not None and old.result is None:
                old.turns.abandon("the trainer restarted this sample")
            episode = Episode(uuid, step, self.turn_budget(step, trainer_max))
            self.episodes[uuid] = episode
            task = group_task(task_from_row(messages, data), step)
            agent = Agent(
                episode.turns,
                system_prompt=self.config.system_prompt or system_prompt(messages),
                max_turns=episode.budget or 8,
                answer_from=extract_answer,
                text_tool=self.config.text_tool,
            )
            headers = {"step": step, "trainer": "swift", "turn_budget": episode.budget}
            episode.item = BatchItem(task, agent=agent, headers=headers)
            episodes.append(episode)
            items.append(episode.item)

        def ended(index: int, result: BatchResult) -> None:
            episodes[index].result = result
            episodes[index].events.put_nowait(("ended", result))

        batch = asyncio.create_task(self.live.run_batch(items, all_in_flight=True, on_result=ended))
        self._batches.add(batch)
        batch.add_done_callback(self._batches.discard)
        firsts = []
        for episode, (_, messages, _) in zip(episodes, rows, strict=True):
            kind, value = await episode.next_event()
            if kind == "generate":
                episode.known = len(value)
                firsts.append(_plain(value))
            else:  # never came up: the sample still needs a prompt; it is masked out
                system = self.config.system_prompt or system_prompt(messages)
                head = [{"role": "system", "content": system}] if system else []
                firsts.append(head + [m for m in messages if m.get("role") != "system"])
        return firsts

    async def turn_end(
        self,
        uuid: str,
        turn: int,
        content: str | None,
        tool_calls: list[ToolCall] | None,
        token_ids: list[int],
        logprobs: list[float],
        finish_reason: str | None,
    ) -> TurnResult:
        episode = self.episodes.get(uuid)
        if episode is None:
            raise RuntimeError(f"turn_end for unknown sample {uuid}: on_trajectory_start not run")
        calls = list(tool_calls or [])
        if not calls and content and "<tool_call>" in content:
            content, calls = parse_hermes(content, id_prefix=f"call_{turn}")
        next_messages: list[dict[str, Any]] = []
        if episode.result is None:
            episode.turns.deliver(
                Completion(
                    content=content,
                    tool_calls=calls,
                    finish_reason=finish_reason,
                    token_ids=list(token_ids),
                    logprobs=list(logprobs) or None,
                    policy_version=self.policy_version(episode.step),
                )
            )
            kind, value = await episode.next_event()
            if kind == "generate":
                next_messages = _plain(value[episode.known :])
                next_messages = [m for m in next_messages if m["role"] != "assistant"]
                episode.known = len(value)
        mask = masked_out(len(token_ids)) if episode.masked else [1] * len(token_ids)
        done = episode.result is not None
        if done:
            self.episodes.pop(uuid, None)
        return TurnResult(done, list(token_ids), mask, list(logprobs), next_messages,
                          episode.infos())  # fmt: skip

    async def rewards(self, rollout_ids: list[str | None]) -> list[float | None]:
        """Each rollout's reward as the store holds it (None: masked or unknown)."""
        await self.store.commit()
        out: list[float | None] = []
        for rid in rollout_ids:
            if rid is None:
                out.append(None)
                continue
            rec = await self.store.rollout(rid)
            ok = rec.state in ("done", "failed", "timed_out")
            out.append((rec.reward if rec.reward is not None else 0.0) if ok else None)
        step = self.current_step()
        timing = self._timing.setdefault(step, {"rewards": []})
        timing["rollout_end"] = time.time()
        timing.setdefault("rewards", []).extend(r for r in out if r is not None)
        return out

    # ---- timings and shutdown -------------------------------------------

    def step_timing(self, step: int, began: float, ended: float) -> dict[str, Any]:
        """Rollout and training seconds of one trainer step; appended to ``timings``."""
        t = self._timing.pop(step, {})
        rollout = max(0.0, t.get("rollout_end", began) - t.get("rollout_start", began))
        rewards = t.get("rewards", [])
        row = {
            "step": step,
            "step_s": round(ended - began, 4),
            "rollout_s": round(rollout, 4),
            "train_s": round(max(0.0, ended - began - rollout), 4),
            "samples": len(rewards),
            "mean_reward": sum(rewards) / len(rewards) if rewards else None,
        }
        if self.live is not None:
            data = {k: v for k, v in row.items() if k != "step"}
            self.store.record_train_step(self.live.id, step, **data)
        if self.config.timings:
            path = Path(self.config.timings)
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        return row

    async def _close(self) -> None:
        for episode in self.episodes.values():
            episode.turns.abandon("training ended")
        for batch in list(self._batches):
            batch.cancel()
        await asyncio.gather(*self._batches, return_exceptions=True)
        self.episodes.clear()
        try:
            if self.live is not None:
                await self.live.finish("finished")
        finally:
            await self.engine.aclose()

    def flush(self) -> None:
        if not self.closed:
            self.loop.call(self.store.commit())

    def close(self) -> None:
        """Finish open episodes, close the engine (backend and store), stop the loop."""
        if self.closed:
            return
        self.closed = True
        try:
            if self.loop.alive:
                self.loop.call(self._close(), timeout=60)
        finally:
            self.loop.stop()


def _plain(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the trainer keeps them: role and content only."""
    return [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
