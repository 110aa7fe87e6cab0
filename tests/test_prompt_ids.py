"""Prompt token ids recorded once: the store holds each call's new ids only,
readers get whole prompts back."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

from engine import prompt_ids
from engine.messages import Category, Message


async def _run(tmp_path: Path, turns: int) -> list[dict[str, Any]]:
    from engine import Agent, Engine, EnvSpec, OpenAIPolicy, SamplingParams, Task
    from engine.benchmark.http import ENV_NAME, openai_server
    from engine.benchmark.openai_server import MODEL

    async with openai_server(0.0, turns, 1, reply_tokens=7) as server:
        async with OpenAIPolicy(server.url, MODEL) as policy, Engine(
            store=tmp_path / "s.db", progress=False
        ) as engine:
            agent = Agent(policy, max_turns=turns, sampling=SamplingParams(return_token_ids=True))
            run = await engine.run([Task("t", "Task #0", "42")], agent,
                                   environment=EnvSpec(ENV_NAME, {"seconds": 0.0}))  # fmt: skip
            assert await run.counts() == {"done": 1}
            (r,) = await run.rollouts()
            return [m.payload for m in await run.messages(r.id) if m.category == "model_reply"]


def test_the_store_holds_each_prompt_id_once_and_readers_get_whole_prompts(
        tmp_path: Path) -> None:
    turns = 6
    replies = asyncio.run(_run(tmp_path, turns))
    assert len(replies) == turns
    for k, reply in enumerate(replies):  # whole again, as the server counted them
        assert len(reply["prompt_token_ids"]) == reply["usage"]["prompt_tokens"] > 0
        assert prompt_ids.TAIL not in reply
        if k:
            before = replies[k - 1]["prompt_token_ids"] + replies[k - 1]["token_ids"]
            assert reply["prompt_token_ids"][: len(before)] == before
    with sqlite3.connect(tmp_path / "s.db") as db:
        stored = [json.loads(p) for (p,) in db.execute(
            "SELECT payload FROM messages WHERE category='model_reply' ORDER BY seq")]
    assert stored[0]["prompt_token_ids"] == replies[0]["prompt_token_ids"]
    for raw, whole in zip(stored[1:], replies[1:], strict=True):
        assert raw["prompt_token_ids"] is None and raw["continues"]["extends"]
        assert whole["prompt_token_ids"][-len(raw[prompt_ids.TAIL]):] == raw[prompt_ids.TAIL]
    # linear, not quadratic: every id of the last prompt is stored once
    kept = sum(len(r["prompt_token_ids"] or r[prompt_ids.TAIL]) for r in stored)
    completions = sum(len(r["token_ids"]) for r in stored[:-1])
    assert kept + completions == len(replies[-1]["prompt_token_ids"])


def _reply(seq: int, agent: str, prompt: list[int] | None, ids: list[list[int]],
           attempt: int = 1, **extra: Any) -> Message:
    payload: dict[str, Any] = {"agent": agent, "prompt_token_ids": prompt, "token_ids": ids[0],
                               **extra}
    if len(ids) > 1:
        payload["others"] = [{"token_ids": i, "prompt_token_ids": None} for i in ids[1:]]
    return Message("run", "r", seq, attempt, "policy", agent, Category.MODEL_REPLY,
                   f"turn {seq}", payload)


def _continuing(previous: list[int], prompt: list[int], choice: int) -> dict[str, Any]:
    return {**prompt_ids.tail(previous, prompt), "continues": {"extends": True, "choice": choice}}


def test_expand_follows_the_chosen_completion_per_agent_and_attempt() -> None:
    a1, b1 = [1, 2, 3], [50, 51]
    a_choices = [[4, 5], [6, 7, 8]]  # n = 2: the next prompt continues the second
    a2 = [*a1, 6, 7, 8, 9, 10]
    b2 = [*b1, 52, 53, 60]
    messages = [
        _reply(0, "a", a1, a_choices),
        _reply(1, "b", b1, [[52, 53]]),  # another agent in between
        Message("run", "r", 2, 1, "env", "a", Category.TOOL_RESULT, "t", {"content": "x"}),
        _reply(3, "a", None, [[11]], **_continuing([*a1, 6, 7, 8], a2, 1)),
        _reply(4, "b", None, [[61]], **_continuing([*b1, 52, 53], b2, 0)),
        _reply(5, "a", [100], [[101]], attempt=2),  # a new attempt starts whole
        _reply(6, "a", None, [[103]], attempt=2, **_continuing([100, 101], [100, 101, 102], 0)),
    ]
    out = prompt_ids.expand(messages)
    prompts = [m.payload.get("prompt_token_ids") for m in out]
    assert prompts == [a1, b1, None, a2, b2, [100], [100, 101, 102]]
    assert all(prompt_ids.TAIL not in m.payload for m in out)
    assert out[2] is messages[2] and out[0] is messages[0]  # nothing else touched
    assert messages[3].payload["prompt_token_ids"] is None  # the input is not changed


def test_expand_leaves_whole_prompts_and_cannot_invent_a_missing_predecessor() -> None:
    old = [_reply(0, "a", [1, 2], [[3]]), _reply(1, "a", [1, 2, 3, 4], [[5]],
                                                  continues={"extends": True, "choice": 0})]
    assert prompt_ids.expand(old) == old  # a store written before: whole prompts, unchanged
    orphan = _reply(7, "a", None, [[9]], **_continuing([1, 2], [1, 2, 8], 0))
    (seen,) = prompt_ids.expand([orphan])  # its previous call not among the messages
    assert seen.payload["prompt_token_ids"] is None  # no ids, never wrong ids
