"""The ``stateful`` environment: tools that read and write a per-rollout state.

    EnvSpec("stateful", {"domain": "domains/orders.json"})   # or the domain dict itself

A *domain* (a JSON document, written by `scaler` or by hand) names its state
kind and its tools, each an OpenAI function spec with an implementation::

    {"name": "orders", "state": "json",            # or "sqlite" with "schema": "CREATE …"
     "tools": [{"spec": {"type": "function", "function": {...}},
                "impl": {"kind": "crud", "op": "create", "table": "orders", "key": "order_id"}}]}

A task gives the initial state and, optionally, the simulated user's later
turns in its metadata (``initial_state``, ``user_turns``); its ground truth
(gold calls, gold final state) stays in the driver. On reset the state is a
fresh copy of the initial one. Every call is validated against its spec's JSON
schema, run as one transaction, and recorded with what it changed (the tool
result's ``info["changes"]``, so every write is in the trace store). When the
model replies without tool calls, `respond` gives the next user turn, or ends
the episode with the answer a scorer reads (`tools.stateful.scoring`):
``{"reply": <last text>, "state": <final snapshot>, "calls": [{name, arguments,
ok, error, changes}]}``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from engine.environment import Observation, ToolCall, ToolSpec
from engine.errors import ConfigError
from engine.tasks import TaskView
from tools.stateful.implementations import Implementation, ToolFailed, build_implementation
from tools.stateful.state import State, diff, make_state


@dataclass
class DomainTool:
    spec: ToolSpec
    impl: Implementation
    validator: jsonschema.protocols.Validator

    @property
    def name(self) -> str:
        return str(self.spec["function"]["name"])


@dataclass
class Domain:
    name: str
    state: str
    schema: str | None
    tools: dict[str, DomainTool]


def check_schema(where: str, schema: Any) -> jsonschema.protocols.Validator:
    """A validator for ``schema`` after checking it against its meta-schema;
    ConfigError naming ``where`` when it is not valid JSON schema."""
    if not isinstance(schema, dict):
        raise ConfigError(where, f"parameters must be a JSON schema object, got {schema!r}",
                          '{"type": "object", "properties": {...}}')
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError as exc:
        at = "/".join(str(p) for p in exc.path) or "(root)"
        raise ConfigError(where, f"parameters are not valid JSON schema at {at}: {exc.message}",
                          "fix the schema (see json-schema.org)") from exc
    validator: jsonschema.protocols.Validator = cls(schema)
    return validator


def load_domain(domain: str | Path | dict[str, Any]) -> Domain:
    """Read and check a domain (a dict or a JSON file); ConfigError naming the tool."""
    where = "domain"
    if not isinstance(domain, dict):
        path = Path(domain)
        where = f"domain {path}"
        try:
            domain = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(where, f"cannot be read as JSON: {exc}", "check the path") from exc
        if not isinstance(domain, dict):
            raise ConfigError(where, "must be a JSON object", None)
    name = str(domain.get("name") or "domain")
    state = str(domain.get("state") or "json")
    tools: dict[str, DomainTool] = {}
    for i, entry in enumerate(domain.get("tools") or []):
        spec = entry.get("spec") if isinstance(entry, dict) else None
        fn = spec.get("function") if isinstance(spec, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ConfigError(f"{where}, tool {i}", "spec is not an OpenAI function spec",
                              '{"type": "function", "function": {"name": ..., ...}}')
        tool = fn["name"]
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        validator = check_schema(f"{where}, tool {tool}", params)
        impl = build_implementation(tool, entry.get("impl"))
        if tool in tools:
            raise ConfigError(f"{where}, tool {tool}", "named twice", "give each tool its own name")
        tools[tool] = DomainTool({"type": "function", "function": {**fn, "parameters": params}},
                                 impl, validator)
    if not tools:
        raise ConfigError(where, "has no tools", 'add {"spec": ..., "impl": ...} entries')
    schema = domain.get("schema")
    make_state(state, schema)  # an unknown kind or a sqlite state without schema fails here
    return Domain(name, state, schema, tools)


class StatefulEnvironment:
    """Environment ``stateful``: a domain's tools over a fresh state per rollout."""

    def __init__(self, domain: str | dict[str, Any]) -> None:
        self.domain = load_domain(domain)
        self.state: State = make_state(self.domain.state, self.domain.schema)
        self.calls: list[dict[str, Any]] = []
        self.user_turns: list[str] = []
        self.task: TaskView | None = None

    @property
    def tools(self) -> list[ToolSpec]:
        return [t.spec for t in self.domain.tools.values()]

    async def reset(self, task: TaskView) -> Observation:
        self.state.reset(task.metadata.get("initial_state"))
        turns = task.metadata.get("user_turns") or []
        if not isinstance(turns, list) or not all(isinstance(t, str) for t in turns):
            raise ConfigError(f"task {task.id}", "metadata.user_turns must be a list of strings")
        self.user_turns = list(turns)
        self.calls = []
        self.task = task
        return Observation(task.prompt)

    async def step(self, call: ToolCall) -> Observation:
        tool = self.domain.tools.get(call.name)
        if tool is None:
            known = ", ".join(self.domain.tools)
            return self._log(call, {}, f"unknown tool '{call.name}'; the tools are: {known}")
        args = call.parsed if call.parsed is not None else {}
        if call.parsed is None:
            return self._log(call, args, f"the arguments of {call.name} are not a JSON object")
        problems = sorted(tool.validator.iter_errors(args), key=lambda e: list(e.path))
        if problems:
            text = "; ".join(f"{'/'.join(map(str, e.path)) or 'arguments'}: {e.message}"
                             for e in problems[:5])
            return self._log(call, args, f"bad arguments for {call.name}: {text}")
        before = self.state.snapshot()
        try:
            result = await tool.impl(self.state, args)
        except ToolFailed as exc:
            return self._log(call, args, f"{call.name} failed: {exc}")
        except Exception as exc:  # the tool's own fault: the agent sees it, the state is kept
            return self._log(call, args, f"{call.name} raised {type(exc).__name__}: {exc}")
        changes = diff(before, self.state.snapshot())
        self.calls.append({"name": call.name, "arguments": args, "ok": True, "error": None,
                           "changes": len(changes)})
        text = result if isinstance(result, str) else json.dumps(result, default=str)
        return Observation(text, info={"changes": changes})

    def _log(self, call: ToolCall, args: dict[str, Any], error: str) -> Observation:
        self.calls.append({"name": call.name, "arguments": args, "ok": False, "error": error,
                           "changes": 0})
        return Observation.error(error)

    async def respond(self, reply: str | None) -> Observation:
        """The simulated user: the next of the task's ``user_turns``, then the end."""
        if self.user_turns:
            return Observation(self.user_turns.pop(0))
        answer = {"reply": reply, "state": self.state.snapshot(), "calls": self.calls}
        return Observation("episode over", done=True, answer=json.dumps(answer, default=str))

    async def close(self) -> None:
        self.state.close()
        self.calls = []
        self.task = None
