"""The ``--http`` workload with no engine: what the HTTP client and JSON alone cost.

The control for `engine.benchmark.http`: the same N rollouts of T turns at C in
flight against the same loopback server, sending the bodies the engine sends
(system prompt, task, the sleep tool, the growing conversation, sampling with
``return_token_ids``) through the HTTP client `OpenAIPolicy` uses, opened as it
opens it (`engine.policy.transport`: C connections kept alive, no cookies, a
timeout a request), with orjson both ways and ``asyncio.sleep`` as the tool. Nothing
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

import orjson

from engine.policy.transport import Failure, Transport, open_transport, resolve_client

from .threads import cpu_by_thread, per_turn_ms, thread_cpu


@dataclass
class ControlRun:
    """One control measurement at C in flight."""

    in_flight: int
    http_client: str
    wall_s: float
    efficiency: float
    cpu_per_turn_ms: float
    requests: int
    answered: int  # conversations the server ended with the answer on their last turn
    load_before: float
    cpu_by_thread_ms: dict[str, float] | None = None  # ms a turn by thread; None off Linux


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
    http_client: str | None = None,
) -> ControlRun:
    """N rollouts of T turns, C at a time, through the HTTP client alone (``url``: the
    server's /v1); each body is ``fields`` (all but the messages, as the engine's
    request body has them) with the conversation so far."""
    endpoint = url.rstrip("/") + "/chat/completions"
    client = resolve_client(http_client)
    load = os.getloadavg()[0]
    todo = iter(range(rollouts))
    requests = itertools.count()
    answered = 0

    async def rollout(transport: Transport, i: int) -> None:
        nonlocal answered
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": system_prompt},
            {"role": "user", "content": f"Task #{i}: sleep {turns - 1} times, then answer."},
        ]
        for turn in range(1, turns + 1):
            next(requests)
            body = orjson.dumps({**fields, "messages": messages})
            got = await transport.request("POST", endpoint, body)
            if isinstance(got, Failure) or got.status != 200:
                raise RuntimeError(f"the floor's request failed: {got}")
            reply = orjson.loads(got.body)
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

    async def worker(transport: Transport) -> None:
        for i in todo:
            await rollout(transport, i)

    transport = open_transport(
        client, max_connections=in_flight, timeout=request_timeout,
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    try:
        threads0 = thread_cpu()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        async with asyncio.TaskGroup() as tg:
            for _ in range(min(in_flight, rollouts)):
                tg.create_task(worker(transport))
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        threads = cpu_by_thread(threads0, thread_cpu())
    finally:
        await transport.aclose()
    return ControlRun(
        in_flight=in_flight,
        http_client=client,
        wall_s=wall,
        efficiency=ideal_s / wall,
        cpu_per_turn_ms=cpu / (rollouts * turns) * 1e3,
        requests=next(requests),
        answered=answered,
        load_before=load,
        cpu_by_thread_ms=per_turn_ms(threads, rollouts * turns),
    )
