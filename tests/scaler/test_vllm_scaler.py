"""A synthesized-style domain with a real vLLM server (CPU) and the tiny random model.

Its first reply is constrained (vLLM structured outputs) to a Hermes call of
``update_note`` on one of two notes, its second to "Done."; vLLM's hermes parser
returns the call, the ``stateful`` environment writes the state, and the
scorers reward exactly the rollouts whose write matches the gold.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from engine import Agent, Engine, EnvSpec, OpenAIPolicy, SamplingParams, Task
from scaler.filter import filter_runs
from tests.scaler import notes

pytestmark = [pytest.mark.anyio, pytest.mark.vllm]

UPDATE = ('<tool_call>\\n\\{"name": "update_note", "arguments": \\{"note_id": "(n-1|n-2)", '
          '"text": "z"\\}\\}\\n</tool_call>')


def constrained(turn: int) -> dict[str, Any]:
    return {"structured_outputs": {"regex": UPDATE if turn == 1 else "Done\\."}}


async def test_a_real_model_writes_the_state_and_is_scored_and_filtered(
        vllm_server: Any, make_engine: Callable[..., Engine]) -> None:
    final = copy.deepcopy(notes.INITIAL)
    final["notes"]["n-1"]["text"] = "z"
    gold = [{"name": "update_note", "arguments": {"note_id": "n-1", "text": "z"}}]
    task = Task("update", "Change note n-1 to say 'z'.", {"calls": gold, "final_state": final},
                metadata={"domain": "notes", "initial_state": notes.INITIAL})
    sampling = SamplingParams(temperature=1.0, max_tokens=256, seed=11,
                              extra={"skip_special_tokens": False})
    async with OpenAIPolicy(vllm_server.base_url, vllm_server.model, timeout=60) as policy:
        agent = Agent(policy, max_turns=3, sampling=sampling, request_extra=constrained,
                      system_prompt="Use the tools.")
        async with make_engine(max_rollouts=4) as engine:
            run = await engine.run([task], agent, samples=6, scorer="state_alignment",
                                   environment=EnvSpec("stateful", {"domain": notes.DOMAIN}))
            rollouts = await run.rollouts()
            assert {r.state for r in rollouts} == {"done"}, [r.error for r in rollouts]
            for r in rollouts:
                [call] = json.loads(r.answer or "")["calls"]
                assert call["name"] == "update_note" and call["ok"]
                assert r.reward == (1.0 if call["arguments"]["note_id"] == "n-1" else 0.0)
            result = await filter_runs(engine.store, [run.id])
            kept = {j.rollout.id for j in result.kept}
            assert kept == {r.id for r in rollouts if r.reward == 1.0}
