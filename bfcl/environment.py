"""The ``bfcl`` environment: one BFCL v4 multi-turn entry's user turns and stateful backends.

On reset it finds the task's entry in the installed ``bfcl-eval`` (by the
task id, which is the BFCL id), builds the entry's backends (file system,
messaging, posting, ticketing, trading, travel, vehicle, math) from its
initial config through BFCL's own executor, offers the entry's functions as
tools (BFCL's converter for OpenAI function calling), and returns the first
user turn. Each tool call is decoded into the Python call BFCL would execute
(its FC handler's decoder) and run on this rollout's own backend instances;
the execution result is the observation, as in BFCL's inference loop. When
the model replies without tool calls the turn is over: `respond` gives the
next user turn (on a miss-func holdout turn: the held-out functions join the
tools and the user says BFCL's "I have updated some more functions…"), and
after the last turn ends the episode with the answer the ``bfcl`` scorer
checks: ``{"id": ..., "turns": [[[call], …] per turn]}``.

Differences from BFCL's own inference loop, none of which changes what the
checker sees for the same model outputs: a call whose arguments are not JSON
is an error observation the model can recover from (BFCL ends the turn); each
decoded call is recorded as its own step (an environment cannot see which
calls came in one reply; the checker concatenates a turn's steps); BFCL's
limit of 20 steps per user turn is the agent's turn budget here (see
`bfcl.agent`). The possible answers never enter the environment.
"""

from __future__ import annotations

import json
from typing import Any

from bfcl import package
from engine.environment import Observation, ToolCall, ToolSpec
from engine.tasks import TaskView


class BFCLEnvironment:
    """Environment ``bfcl``: a fresh set of BFCL backends per rollout."""

    def __init__(self) -> None:
        package.module("eval_checker.multi_turn_eval.multi_turn_utils")  # fails now if missing
        self.entry: dict[str, Any] | None = None
        self.functions: list[dict[str, Any]] = []
        self._tools: list[ToolSpec] = []
        self.name: str | None = None
        self.turn = 0
        self.log: list[list[list[str]]] = []

    @property
    def tools(self) -> list[ToolSpec]:
        return list(self._tools)

    def _turn_text(self, turn: int) -> str:
        assert self.entry is not None
        held = (self.entry.get("missed_function") or {}).get(str(turn))
        if held:
            self.functions += held
            self._tools = package.openai_tools(self.functions)
            return package.extra_functions_prompt()
        return "\n\n".join(str(m["content"]) for m in self.entry["question"][turn])

    async def reset(self, task: TaskView) -> Observation:
        self._release()
        entry_id = str(task.metadata.get("bfcl_id") or task.id)
        self.entry = package.entry(entry_id)
        self.functions = list(self.entry["function"])
        self._tools = package.openai_tools(self.functions)
        self.name = package.unique_name("env")
        package.execute([], self.entry, self.name)  # build the backends from the initial config
        self.turn, self.log = 0, [[]]
        return Observation(self._turn_text(0))

    async def step(self, call: ToolCall) -> Observation:
        if self.entry is None or self.name is None:
            return Observation.error("the environment was not reset")
        try:
            text = package.function_call(call.name, call.arguments)
        except (ValueError, TypeError, AttributeError) as exc:
            return Observation.error(f"cannot decode the call to {call.name}: {exc}")
        results, _ = package.execute([text], self.entry, self.name)
        self.log[self.turn].append([text])
        result = results[0] if results else ""
        return Observation(result, is_error=result.startswith("Error during execution"))

    async def respond(self, reply: str | None) -> Observation:
        assert self.entry is not None
        self.turn += 1
        if self.turn < len(self.entry["question"]):
            self.log.append([])
            return Observation(self._turn_text(self.turn))
        answer = json.dumps({"id": self.entry["id"], "turns": self.log})
        return Observation("conversation over", done=True, answer=answer)

    def _release(self) -> None:
        if self.name is not None:
            package.release(self.name)
            self.name = None

    async def close(self) -> None:
        self._release()
        self.entry = None
