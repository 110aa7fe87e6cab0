"""Environments for benchmarks and backend tests, registered by name on import.

- ``cpu``: one tool, ``crunch``, that counts primes below ``n`` in pure Python:
  a compute-bound tool, for measuring what worker processes buy on many cores.
- ``probe``: the arithmetic ``calculator`` plus tools that misbehave on
  request: ``hang`` (never returns), ``boom`` (raises), ``crash`` (the hosting
  process exits at once), ``whoami`` (the pid and the task view it was given).

Workers build them when started with ``--plugin backends.testenvs`` (the
backends' ``plugins=["backends.testenvs"]`` option).
"""

from __future__ import annotations

import json
import os
from typing import Any

import anyio

from engine.environment import Observation, ToolCall, ToolSpec
from engine.envs.arithmetic import CALCULATOR, ArithmeticEnvironment
from engine.errors import EnvironmentLost
from engine.registry import declare
from engine.tasks import TaskView

PLUGIN = "backends.testenvs"


def _tool(name: str, description: str, props: dict[str, Any] | None = None) -> ToolSpec:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props or {},
                       "required": list(props or {})}}}


def count_primes(n: int) -> int:
    """Primes below ``n`` by trial division: deliberately CPU-bound."""
    count = 0
    for k in range(2, n):
        d = 2
        while d * d <= k:
            if k % d == 0:
                break
            d += 1
        else:
            count += 1
    return count


class CpuEnvironment:
    """``crunch(n)`` counts primes below n (default ``work``) on this process's CPU."""

    def __init__(self, work: int = 20000) -> None:
        self.work = work

    @property
    def tools(self) -> list[ToolSpec]:
        return [_tool("crunch", "Count the primes below n.", {"n": {"type": "integer"}})]

    async def reset(self, task: TaskView) -> Observation:
        return Observation(task.prompt)

    async def step(self, call: ToolCall) -> Observation:
        n = int((call.parsed or {}).get("n", self.work))
        return Observation(str(count_primes(n)))

    async def close(self) -> None:
        pass


class ProbeEnvironment(ArithmeticEnvironment):
    """The calculator, plus ``hang``, ``boom``, ``crash``, ``lost``, ``missing``, ``whoami``
    and ``shout``."""

    def __init__(self, tool_delay: float = 0.0) -> None:
        super().__init__(tool_delay)
        self.view: TaskView | None = None

    @property
    def tools(self) -> list[ToolSpec]:
        return [CALCULATOR, _tool("hang", "Never returns."), _tool("boom", "Raises."),
                _tool("crash", "Ends the hosting process."),
                _tool("lost", "Says the environment is gone (EnvironmentLost)."),
                _tool("missing", "Opens a file that is not there."),
                _tool("whoami", "Who hosts me."),
                _tool("shout", "Prints to stdout, as chatty libraries do.")]

    async def reset(self, task: TaskView) -> Observation:
        self.view = task
        return await super().reset(task)

    async def step(self, call: ToolCall) -> Observation:
        if call.name == "hang":
            await anyio.sleep_forever()
        if call.name == "boom":
            raise ValueError("boom on request")
        if call.name == "crash":
            os._exit(17)
        if call.name == "lost":
            raise EnvironmentLost("probe: the environment's browser died")
        if call.name == "missing":
            raise FileNotFoundError("no such file: data.csv")
        if call.name == "shout":
            print("loading weights... 100%\n" * 20_000, flush=True)  # more than a pipe holds
            print('{"progress": 1.0}', end="", flush=True)  # JSON, and no newline
            return Observation("shouted")
        if call.name == "whoami":
            view = self.view.to_dict() if self.view else None
            return Observation(json.dumps({"pid": os.getpid(), "view": view}))
        return await super().step(call)


declare("environments", "cpu", f"{PLUGIN}:CpuEnvironment")
declare("environments", "probe", f"{PLUGIN}:ProbeEnvironment")
