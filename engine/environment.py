"""What the driver sees of an environment: tool specs, reset, step, close."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from engine.tasks import TaskView

ToolSpec = dict[str, Any]
"""One tool in OpenAI function-calling form: ``{"type": "function", "function": {...}}``."""


@dataclass(slots=True)
class ToolCall:
    """One tool call the model asked for.

    ``arguments`` is the model's raw JSON text; ``parsed`` is set when it is a
    JSON object, ``error`` says what was wrong otherwise. A broken call is
    never an exception: it becomes an error observation the agent sees.
    """

    id: str
    name: str
    arguments: str
    parsed: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments, "error": self.error}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ToolCall:
        """Rebuild a call sent over the wire (arguments are parsed again)."""
        from engine.policy.toolcalls import make_call

        call = make_call(str(data.get("id", "")), str(data.get("name", "")), data.get("arguments"))
        if data.get("error"):
            call.error, call.parsed = str(data["error"]), None
        return call

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


@dataclass(slots=True)
class Observation:
    """What an environment returns: text for the agent, and optionally the end.

    ``done`` with ``answer`` lets a tool (say, ``submit``) end the episode.
    ``is_error`` marks a tool error the agent should see and recover from.
    """

    content: str
    done: bool = False
    answer: str | None = None
    is_error: bool = False
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "done": self.done,
            "answer": self.answer,
            "is_error": self.is_error,
            "info": self.info,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Observation:
        return cls(
            content=str(data.get("content", "")),
            done=bool(data.get("done", False)),
            answer=data.get("answer"),
            is_error=bool(data.get("is_error", False)),
            info=dict(data.get("info") or {}),
        )

    @classmethod
    def error(cls, text: str) -> Observation:
        return cls(content=f"Error: {text}", is_error=True)


@runtime_checkable
class Environment(Protocol):
    """An environment handle. It may live in this process, a worker or a pod.

    Optional: ``async def respond(self, reply: str | None) -> Observation | None``
    (see `Responsive`), the environment's turn after a model reply with no
    tool calls, for multi-turn user conversations and simulated users.
    Without it, or when it returns None, that reply is the final answer.
    """

    @property
    def tools(self) -> list[ToolSpec]: ...

    async def reset(self, task: TaskView) -> Observation: ...

    async def step(self, call: ToolCall) -> Observation: ...

    async def close(self) -> None: ...


@runtime_checkable
class Responsive(Protocol):
    """An environment that speaks for a user between the model's turns.

    The driver calls ``respond(reply)`` when the model's reply has no tool
    calls (``reply`` is its text). It returns:

    - None: no more user turns; the reply is the final answer, as without it;
    - an `Observation` with ``done=False``: its ``content`` is the next user
      message (appended as role ``user``) and the loop goes on; the driver
      reads ``tools`` again, so a user turn may offer new tools;
    - an `Observation` with ``done=True``: the episode ends with its
      ``answer`` (failed when None). An environment that keeps a call log or
      a state puts it in ``answer`` for the scorer; the ground truth never
      enters the environment.

    Each call counts against the step timeout; the turn budget counts model
    calls, user turns included.
    """

    async def respond(self, reply: str | None) -> Observation | None: ...


def responds(env: object) -> bool:
    """Whether ``env`` has a `Responsive.respond` method."""
    return callable(getattr(env, "respond", None))


@dataclass(frozen=True, slots=True)
class EnvSpec:
    """An environment named in the registry plus its config (JSON-serialisable)."""

    name: str
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config}


def tool_names(tools: list[ToolSpec]) -> list[str]:
    return [t["function"]["name"] for t in tools]
