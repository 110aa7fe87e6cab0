"""Third-party agent frameworks (the ``agents`` extra) and a hand-written app loop."""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Any

import pytest


def require(module: str) -> ModuleType:
    """Import ``module``; skip when it is missing, unless DRILLYARD_REQUIRE_AGENTS=1
    (CI), where a missing framework is a failure."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        fix = "pip install -e '.[agents]'"
        if os.environ.get("DRILLYARD_REQUIRE_AGENTS") == "1":
            pytest.fail(f"{module} is not installed but DRILLYARD_REQUIRE_AGENTS=1: {fix} ({exc})")
        pytest.skip(f"{module} not installed: {fix}")


async def chat_loop(client: Any, prompt: str, ctx: Any, *, max_turns: int = 4, **kw: Any) -> Any:
    """An app's own loop with the openai client: model, tools (through ``ctx``), model, …"""
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    for _ in range(max_turns):
        reply = await client.chat.completions.create(
            model="app-model", messages=messages, tools=ctx.tools, **kw
        )
        message = reply.choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if not message.tool_calls:
            return message.content
        for call in message.tool_calls:
            result = await ctx.call_tool(call.function.name, call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    return None
