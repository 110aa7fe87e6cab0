"""The ``--http`` workload with no engine: what the HTTP client and JSON alone cost.

The control for `engine.benchmark.http`: the same N rollouts of T turns at C in
flight against the same loopback server, sending the bodies the engine sends
(system prompt, task, the sleep tool, the growing conversation, sampling with
``return_token_ids``) through one aiohttp session configured as
`OpenAIPolicy`'s (C connections kept alive, no cookie jar, a timeout a
request), with orjson both ways and ``asyncio.sleep`` as the tool. Nothing
else: no scheduler, no recording, no store, no token bookkeeping, no retry. Its
CPU per turn is the floor any engine built on this client pays on this
machine; the engine's figure over it, measured in the same run, is what the
engine adds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson


@dataclass
class ControlRun:
    """One control measurement at C in flight."""

    in_flight: int
    wall_s: float
    efficiency: float
    cpu_per_turn_ms: float
    requests: int
    answered: int  # conversations the server ended with the answer on their last turn
    load_before: float


async def measure_control(
    url: str,
    in_flight: int,
    rollouts: int,
    turns: int,
    tool_s: float,
    *,
    ideal_s: float,
    system_prompt: str,
    fields: dict[str, Any],
    answer: str,
    request_timeout: float = 120.0,
) -> ControlRun:
    """N rollouts of T turns, C at a time, through aiohttp alone (``url``: the server's
    /v1); each body is ``fields`` (all but the messages, as the engine's request
    body has them) with the conversation so far."""
    endpoint = url.rstrip("/") + "/chat/completions"
    headers = {"Content-Type": "application/json"}
    load = os.getloadavg()[0]
    todo = iter(range(rollouts))
    requests = itertools.count()
    answered = 0

    async def rollout(session: aiohttp.ClientSession, i: int) -> None:
        nonlocal answered
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": f"Task #{i}: sleep {turns - 1} times, then answer."},
        ]
        for turn in range(1, turns + 1):
            next(requests)
            body = orjson.dumps({**fields, "messages": messages})
            async with session.post(endpoint, data=body) as resp:
                resp.raise_for_status()
                reply = orjson.loads(await resp.read())
            message = reply["choices"][0]["message"]
            calls = message.get("tool_calls") or []
            messages.append({"role": "assistant", "content": message.get("content"),
                             **({"tool_calls": calls} if calls else {})})  # fmt: skip
            if not calls:
                answered += turn == turns and message.get("content") == answer
                return
            await asyncio.sleep(tool_s)
            messages.append({"role": "tool", "tool_call_id": calls[0]["id"],
                             "content": f"slept {tool_s}s (turn {turn})"})  # fmt: skip

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in todo:
            await rollout(session, i)

    connector = aiohttp.TCPConnector(limit=in_flight, keepalive_timeout=30)
    async with aiohttp.ClientSession(
        connector=connector,
        headers=headers,
        timeout=aiohttp.ClientTimeout(total=request_timeout),
        cookie_jar=aiohttp.DummyCookieJar(),
    ) as session:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(in_flight, rollouts)):
                tg.create_task(worker(session))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    return ControlRun(
        in_flight=in_flight,
        wall_s=wall,
        efficiency=ideal_s / wall,
        cpu_per_turn_ms=cpu / (rollouts * turns) * 1e3,
        requests=next(requests),
        answered=answered,
        load_before=load,
    )
