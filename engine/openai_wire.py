"""The OpenAI chat-completions wire format, as the gateway reads and writes it.

A request body becomes a `ChatRequest` (the messages, tools, ``n``, sampling
settings, and every other field passed on to the server as-is); completions
become a ``chat.completion`` body or the ``chat.completion.chunk`` events of
a stream (role, content, tool-call name then arguments, finish reason, an
optional usage chunk, ``[DONE]``), the way OpenAI and vLLM send them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from engine.environment import ToolSpec
from engine.policy.base import Completion, SamplingParams

MAX_N = 64

# fields read into SamplingParams or handled by the gateway; every other one is
# passed on to the server as-is (tool_choice, response_format, vLLM's own, ...)
_MAPPED = frozenset(
    {
        "model", "messages", "tools", "n", "stream", "stream_options", "temperature", "top_p",
        "max_tokens", "max_completion_tokens", "seed", "stop", "logprobs", "top_logprobs",
        "return_token_ids",
    }
)  # fmt: skip
# OpenAI-platform fields a local server has no use for
_DROPPED = frozenset({"store", "metadata", "prompt_cache_retention", "prompt_cache_options"})


class WireError(ValueError):
    """A request the gateway cannot read: the app gets a 400 naming the field."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param


@dataclass(slots=True)
class ChatRequest:
    """One chat-completions request, read."""

    messages: list[dict[str, Any]]
    tools: list[ToolSpec]
    n: int
    stream: bool
    include_usage: bool
    params: SamplingParams
    model: str | None
    wants_logprobs: bool
    wants_token_ids: bool
    passed_on: dict[str, Any] = field(default_factory=dict)


def _number(body: dict[str, Any], name: str, kind: type, default: Any = None) -> Any:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WireError(name, f"must be a number, got {value!r}")
    return kind(value)


def parse_request(body: Any, *, token_ids: bool) -> ChatRequest:
    """Read a request body; with ``token_ids`` ask the server for token ids and logprobs."""
    if not isinstance(body, dict):
        raise WireError("body", "must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise WireError("messages", "must be a non-empty list of messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise WireError(f"messages[{i}]", 'must be an object with a "role"')
    tools = body.get("tools") or []
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise WireError("tools", "must be a list of tool objects")
    n = _number(body, "n", int, 1)
    if not 1 <= n <= MAX_N:
        raise WireError("n", f"must be between 1 and {MAX_N}, got {n}")
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop is not None and not (isinstance(stop, list) and all(isinstance(s, str) for s in stop)):
        raise WireError("stop", "must be a string or a list of strings")
    stream_options = body.get("stream_options") or {}
    wants_logprobs = bool(body.get("logprobs")) or body.get("top_logprobs") is not None
    wants_token_ids = bool(body.get("return_token_ids"))
    top_logprobs = _number(body, "top_logprobs", int)
    max_tokens = _number(body, "max_completion_tokens", int) or _number(body, "max_tokens", int)
    passed_on = {k: v for k, v in body.items() if k not in _MAPPED and k not in _DROPPED}
    params = SamplingParams(
        temperature=_number(body, "temperature", float, 1.0),
        top_p=_number(body, "top_p", float, 1.0),
        max_tokens=max_tokens,
        seed=_number(body, "seed", int),
        logprobs=token_ids or wants_logprobs,
        top_logprobs=top_logprobs,
        return_token_ids=token_ids or wants_token_ids,
        stop=tuple(stop or ()),
        extra=passed_on,
    )
    return ChatRequest(
        messages=messages,
        tools=tools,
        n=n,
        stream=bool(body.get("stream")),
        include_usage=bool(
            isinstance(stream_options, dict) and stream_options.get("include_usage")
        ),
        params=params,
        model=body.get("model") if isinstance(body.get("model"), str) else None,
        wants_logprobs=wants_logprobs,
        wants_token_ids=wants_token_ids,
        passed_on=passed_on,
    )


def _logprobs(c: Completion) -> dict[str, Any] | None:
    if c.logprobs_content is not None:
        return {"content": c.logprobs_content}
    if c.logprobs is not None:
        return {
            "content": [
                {"token": "", "logprob": lp, "bytes": None, "top_logprobs": []} for lp in c.logprobs
            ]
        }
    return None


def _usage(choices: list[Completion]) -> dict[str, int] | None:
    usage = choices[0].usage
    return dict(usage) if usage else None


def completion_body(
    req: ChatRequest, choices: list[Completion], completion_id: str, model: str
) -> dict[str, Any]:
    """A ``chat.completion`` response, holding only what the app asked for."""
    out_choices = []
    for i, c in enumerate(choices):
        message: dict[str, Any] = {"role": "assistant", "content": c.content}
        if c.tool_calls:
            message["tool_calls"] = [call.to_openai() for call in c.tool_calls]
        choice: dict[str, Any] = {
            "index": i,
            "message": message,
            "finish_reason": c.finish_reason or ("tool_calls" if c.tool_calls else "stop"),
            "logprobs": _logprobs(c) if req.wants_logprobs else None,
        }
        if req.wants_token_ids:
            choice["token_ids"] = c.token_ids
        out_choices.append(choice)
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": out_choices,
        "usage": _usage(choices),
    }
    if req.wants_token_ids:
        body["prompt_token_ids"] = choices[0].prompt_token_ids
    return body


def stream_events(
    req: ChatRequest, choices: list[Completion], completion_id: str, model: str
) -> Iterator[dict[str, Any]]:
    """The ``chat.completion.chunk`` events of a streamed reply, in order."""
    created = int(time.time())

    def chunk(index: int, delta: dict[str, Any], **extra: Any) -> dict[str, Any]:
        choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
        choice.update(extra)
        return {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [choice],
        }

    for i, c in enumerate(choices):
        yield chunk(i, {"role": "assistant", "content": ""})
        if c.content:
            extra = {"logprobs": _logprobs(c)} if req.wants_logprobs else {}
            yield chunk(i, {"content": c.content}, **extra)
        for j, call in enumerate(c.tool_calls):
            head = {"index": j, "id": call.id, "type": "function",
                    "function": {"name": call.name, "arguments": ""}}  # fmt: skip
            yield chunk(i, {"tool_calls": [head]})
            yield chunk(
                i, {"tool_calls": [{"index": j, "function": {"arguments": call.arguments}}]}
            )
        finish = c.finish_reason or ("tool_calls" if c.tool_calls else "stop")
        yield chunk(i, {}, finish_reason=finish)
    if req.include_usage:
        yield {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(choices),
        }


def error_body(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    """An OpenAI-format error."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
