"""Successful trajectories out of the store, as an SFT set ms-swift reads.

One JSONL line per rollout that ended ``done`` with reward ≥ ``threshold``
(the cold start the AWorld recipe did with 886 trajectories)::

    {"messages": [{"role": "system", ...}, {"role": "user", ...},
                  {"role": "assistant", "content": "..."},          # optional text
                  {"role": "tool_call", "content": "{\"name\": ..., \"arguments\": {...}}"},
                  {"role": "tool_response", "content": "..."},
                  {"role": "assistant", "content": "<final answer>"}],
     "tools": "[{\"type\": \"function\", ...}]"}

Train with ``swift sft --dataset FILE --agent_template hermes ...``. A plain
reply that an environment answered (a text-action environment) is an
assistant message followed by a user message; the last message is always the
assistant's. A run of an app's own agent (`engine.AppAgent`) gives one row
per agent of each rollout: the conversation of that agent's last model call,
as the app sent it, with the reply, and the tools that call offered.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

import anyio

from engine.backend import build_environment
from engine.environment import EnvSpec, ToolSpec
from engine.store import RolloutRecord, TraceStore
from engine.training.trajectory import load_trajectory
from engine.trajectory import conversations


def _arguments(raw: str) -> Any:
    try:
        return json.loads(raw) if raw.strip() else {}
    except ValueError:
        return raw


def _tool_call(name: Any, arguments: str) -> dict[str, Any]:
    body = {"name": name, "arguments": _arguments(arguments)}
    return {"role": "tool_call", "content": json.dumps(body, ensure_ascii=False)}


async def _run_tools(store: TraceStore, run_id: str) -> list[ToolSpec]:
    env = (await store.run(run_id)).config.get("environment") or {}
    if "name" not in env:
        return []
    environment = build_environment(EnvSpec(env["name"], env.get("config") or {}))
    try:
        return list(environment.tools)
    finally:
        await environment.close()


def _run_setting(config: dict[str, Any], name: str) -> Any:
    """A setting of the run's agent: its own, else the run's (a training job's
    rollouts each bring an agent; their shared settings are in the metadata)."""
    agent = config.get("agent") or {}
    return agent.get(name) or config.get(name) or (config.get("metadata") or {}).get(name)


def _system_prompt(config: dict[str, Any]) -> str | None:
    value = _run_setting(config, "system_prompt")
    return str(value) if value else None


async def sft_row(
    store: TraceStore, rollout: RolloutRecord, tools: list[ToolSpec], system: str | None
) -> dict[str, Any] | None:
    """A rollout's trajectory (`engine.training.trajectory`) as an SFT row (None
    when it has no final reply)."""
    trajectory = await load_trajectory(store, rollout.id)
    if trajectory is None:
        return None
    out: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
    out.append({"role": "user", "content": trajectory.first_observation})
    for turn in trajectory.turns:
        content = turn.content or ""
        if content or not turn.tool_calls:
            out.append({"role": "assistant", "content": content})
        for call in turn.tool_calls:
            out.append(_tool_call(call.get("name"), call["arguments"]))
        for obs in turn.observations:
            role = "tool_response" if obs["role"] == "tool" else "user"
            out.append({"role": role, "content": obs["content"]})
    while out and out[-1]["role"] != "assistant":  # the environment's word after the answer
        out.pop()
    if not any(m["role"] == "assistant" for m in out):
        return None
    row: dict[str, Any] = {"messages": out}
    if tools:
        row["tools"] = json.dumps(tools, ensure_ascii=False)
    return row


def _text(content: Any) -> str:
    """A message's content as text (OpenAI content parts joined)."""
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def swift_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI-format messages in ms-swift's agent format (``tool_call``/``tool_response``)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        role, content = m.get("role"), _text(m.get("content"))
        if role == "assistant":
            calls = m.get("tool_calls") or []
            if content or not calls:
                out.append({"role": "assistant", "content": content})
            for call in calls:
                fn = call.get("function") or {}
                out.append(_tool_call(fn.get("name"), fn.get("arguments") or ""))
        elif role == "tool":
            out.append({"role": "tool_response", "content": content})
        elif role in ("system", "user"):
            out.append({"role": role, "content": content})
    while out and out[-1]["role"] != "assistant":
        out.pop()
    return out


async def app_sft_rows(store: TraceStore, rollout: RolloutRecord) -> list[dict[str, Any]]:
    """An app agent's rollout as SFT rows: one per agent that ended on a reply."""
    rows = []
    recorded = await store.messages(rollout.id)
    for messages, tools in conversations(recorded, rollout.attempt).values():
        out = swift_messages(messages)
        if any(m["role"] == "assistant" for m in out):
            row: dict[str, Any] = {"messages": out}
            if tools:
                row["tools"] = json.dumps(tools, ensure_ascii=False)
            rows.append(row)
    return rows


async def export_sft(
    store: TraceStore,
    run_id: str,
    path: str | Path,
    *,
    threshold: float = 1.0,
    tools: list[ToolSpec] | None = None,
    rollout_ids: Collection[str] | None = None,
) -> int:
    """Write the run's successful trajectories as swift SFT JSONL; return the count.

    ``rollout_ids`` keeps only those rollouts (say, the ones a filter kept)."""
    record = await store.run(run_id)
    app_agent = (record.config.get("agent") or {}).get("kind") == "function"
    if tools is None and not app_agent:  # a text-action environment's tool is not the model's
        text_actions = bool(_run_setting(record.config, "text_tool"))
        tools = [] if text_actions else await _run_tools(store, run_id)
    system = _system_prompt(record.config)
    rows = []
    for r in await store.rollouts(run_id, "done"):
        if r.reward is None or r.reward < threshold:
            continue
        if rollout_ids is not None and r.id not in rollout_ids:
            continue
        if app_agent:
            rows.extend(await app_sft_rows(store, r))
            continue
        row = await sft_row(store, r, tools or [], system)
        if row is not None:
            rows.append(row)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    await anyio.Path(path).write_text(text)
    return len(rows)
