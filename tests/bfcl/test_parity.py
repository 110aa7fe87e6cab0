"""Drillyard reports what BFCL's own pipeline reports for the same model outputs.

One deterministic model is served over real HTTP (a scripted OpenAI-compatible
server): it replays the possible answers, and spoils one argument of the first
call on about a third of the entries. BFCL's own inference loop (its OpenAI
function-calling handler, ``inference_multi_turn_FC``) and its own per-entry
evaluation (``eval_runner._evaluate_single_multi_turn_entry``, taken from the
installed package's source: importing its module imports every vendor SDK BFCL
supports) score it; Drillyard runs the same entries against the same server
with `OpenAIPolicy` and the ``bfcl`` environment and scorer. The decoded calls
and the verdicts must be the same, entry by entry.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from bfcl import package
from bfcl.agent import bfcl_agent, replay_policy
from bfcl.loader import load_bfcl
from engine import Engine, OpenAIPolicy
from engine.policy.base import SamplingParams
from tests.support.chat_server import ChatServer, reply

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]


def model(tasks: list[Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The served model: the replay, with the first call's first argument spoilt on
    entries whose first user message hashes to 1 mod 3."""
    handler = replay_policy(tasks).handler

    def complete(body: dict[str, Any]) -> dict[str, Any]:
        messages = [m for m in body["messages"] if isinstance(m, dict)]
        out = handler(messages, body.get("tools") or [])
        if isinstance(out, str):
            return reply(out)
        first_user = next(m["content"] for m in messages if m["role"] == "user")
        calls = out["tool_calls"]
        if zlib.crc32(first_user.encode()) % 3 == 1:
            args = json.loads(calls[0]["arguments"])
            if args:
                key = next(iter(args))
                args[key] = f"{args[key]}x" if isinstance(args[key], str) else 7
                calls = [{**calls[0], "arguments": json.dumps(args)}, *calls[1:]]
        return reply(None, [{"id": f"call_{i}", "type": "function",
                             "function": {"name": c["name"], "arguments": c["arguments"]}}
                            for i, c in enumerate(calls)])

    return complete


def bfcl_entry_evaluation() -> Callable[..., dict[str, Any]]:
    """``_evaluate_single_multi_turn_entry`` from the installed BFCL's own source."""
    spec = importlib.util.find_spec("bfcl_eval.eval_checker.eval_runner")
    assert spec is not None and spec.origin is not None
    source = Path(spec.origin).read_text()
    [fn] = [n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)
            and n.name == "_evaluate_single_multi_turn_entry"]
    utils = package.module("eval_checker.multi_turn_eval.multi_turn_utils")
    namespace: dict[str, Any] = {
        "multi_turn_checker": package.checker(),
        "is_empty_execute_response": utils.is_empty_execute_response,
        "BaseHandler": package.module("model_handler.base_handler").BaseHandler,
    }
    exec(compile(ast.Module(body=[fn], type_ignores=[]), spec.origin, "exec"), namespace)
    evaluate: Callable[..., dict[str, Any]] = namespace["_evaluate_single_multi_turn_entry"]
    return evaluate


def flat(turns: list[list[list[str]]]) -> list[list[str]]:
    return [[call for step in turn for call in step] for turn in turns]


async def test_verdicts_match_bfcls_own_pipeline_for_the_same_outputs(
        make_engine: EngineFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    handler_module = package.module("model_handler.api_inference.openai_completion")
    evaluate = bfcl_entry_evaluation()
    results: dict[str, tuple[bool, list[list[str]]]] = {}
    ours: dict[str, tuple[bool, list[list[str]]]] = {}
    for category in ("base", "miss_func", "miss_param", "long_context"):
        tasks = load_bfcl([category], limit=4)
        server = ChatServer([model(tasks)])
        async with server.running():
            monkeypatch.setenv("OPENAI_BASE_URL", server.url)
            monkeypatch.setenv("OPENAI_API_KEY", "unused")
            handler = handler_module.OpenAICompletionsHandler(
                model_name="stub", temperature=0.0, registry_name="stub-FC", is_fc_model=True)
            for task in tasks:  # BFCL's pipeline: its inference loop, then its evaluation
                entry = package.entry(task.id)
                result, _ = await anyio.to_thread.run_sync(
                    handler.inference_multi_turn_FC, entry, False, True)
                verdict = evaluate(handler, task.id, result, task.ground_truth,
                                   package.entry(task.id), "stub-FC", package.category_of(task.id))
                decoded = [[c for step in turn for c in _decode(handler, step)]
                           for turn in result]
                results[task.id] = (verdict["valid"], decoded)
            package.release("stub")
            async with OpenAIPolicy(server.url, "stub") as policy, \
                    make_engine(max_rollouts=4) as engine:  # Drillyard's
                agent = bfcl_agent(policy, tasks, SamplingParams(temperature=0.0))
                run = await engine.run(tasks, agent, environment="bfcl", scorer="bfcl")
                for r in await run.rollouts():
                    turns = json.loads(r.answer or "")["turns"]
                    ours[r.task_id] = (r.reward == 1.0, flat(turns))
    assert ours == results
    verdicts = [ok for ok, _ in results.values()]
    assert 0 < sum(verdicts) < len(verdicts)  # both right and wrong entries were compared


def _decode(handler: Any, step: Any) -> list[str]:
    try:
        calls: list[str] = handler.decode_execute(step, has_tool_call_tag=False)
    except Exception:  # a text reply: BFCL's evaluation skips it too
        return []
    return calls
