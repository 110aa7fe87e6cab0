"""An app's own agent loop as Drillyard rollouts, through the recording gateway.

The app here is a hand-written loop on the real openai-python client (the
frameworks' own tests, against real vLLM, are in test_agent_frameworks.py);
the policy is scripted, or a real HTTP model server that fails on purpose.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import (
    AppAgent,
    Completion,
    ConfigError,
    Engine,
    EnvironmentLost,
    Observation,
    OpenAIPolicy,
    ScriptedPolicy,
    Task,
    TaskView,
    ToolCall,
)
from engine.config import agent_from_description
from engine.envs.arithmetic import ArithmeticEnvironment, arithmetic_tasks
from engine.training.sft import export_sft
from engine.trajectory import export_token_rows
from tests.support.chat_server import ChatServer, reply
from tests.support.frameworks import chat_loop, require
from tests.support.scripted import calculator_then_answer

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]


def client_for(ctx: Any, agent: str | None = None, **kw: Any) -> Any:
    openai = require("openai")
    url = ctx.url_for(agent) if agent else ctx.base_url
    return openai.AsyncOpenAI(base_url=url, api_key=ctx.api_key, **kw)


async def solve(task: TaskView, ctx: Any) -> str | None:
    """The app: its own loop on the openai client, tools through ctx."""
    async with client_for(ctx) as client:
        return await chat_loop(client, task.prompt, ctx)


async def test_an_apps_loop_runs_through_the_gateway_into_the_store(
    make_engine: EngineFactory,
) -> None:
    tasks = arithmetic_tasks(3)
    async with make_engine() as engine:
        run = await engine.run(
            tasks, solve, policy=calculator_then_answer(), environment="arithmetic",
            samples=2, scorer="arithmetic",
        )  # fmt: skip
        rollouts = await run.rollouts()
        assert {r.state for r in rollouts} == {"done"} and all(r.reward == 1.0 for r in rollouts)
        assert all(r.turns == 2 for r in rollouts)
        assert (await run.pass_at_k([1, 2])).overall == {1: 1.0, 2: 1.0}
        msgs = await run.messages(rollouts[0].id)
        assert [m.seq for m in msgs] == list(range(len(msgs)))
        cats = [(str(m.category), m.sender, m.receiver) for m in msgs if m.category != "state"]
        assert cats == [
            ("task", "engine", "env"),
            ("observation", "env", "agent"),
            ("model_request", "agent", "policy"),
            ("model_reply", "policy", "agent"),
            ("tool_call", "agent", "env"),
            ("tool_result", "env", "agent"),
            ("model_request", "agent", "policy"),
            ("model_reply", "policy", "agent"),
            ("score", "scorer", "engine"),
        ]
        first, second = (m.payload for m in msgs if m.category == "model_request")
        # the request as the app sent it: the whole first, then only what is new
        assert first["keep"] == 0 and first["messages"] == [
            {"role": "user", "content": tasks[0].prompt}
        ]
        assert first["tools"][0]["function"]["name"] == "calculator"
        assert second["keep"] == 1 and [m["role"] for m in second["messages"]] == [
            "assistant", "tool",
        ]  # fmt: skip
        assert "tools" not in second  # unchanged, not stored again
        model_call = next(m.payload for m in msgs if m.category == "model_reply")["tool_calls"][0]
        tool_call = next(m.payload for m in msgs if m.category == "tool_call")
        assert tool_call["id"] == model_call["id"]  # the app's tool call is the model's
        config = (await engine.store.run(run.id)).config
        assert config["agent"]["kind"] == "function"
        assert config["agent"]["solve"] == "tests.test_gateway:solve"


async def test_a_streamed_reply_reads_back_whole_in_the_openai_client(
    make_engine: EngineFactory,
) -> None:
    seen: dict[str, Any] = {}

    async def streaming(task: TaskView, ctx: Any) -> str | None:
        async with client_for(ctx) as client:
            messages: list[dict[str, Any]] = [{"role": "user", "content": task.prompt}]
            async with client.chat.completions.stream(
                model="m", messages=messages, tools=ctx.tools,
                stream_options={"include_usage": True},
            ) as stream:  # fmt: skip
                async for _ in stream:
                    pass
                first = await stream.get_final_completion()
            call = first.choices[0].message.tool_calls[0]
            seen["call"] = (call.id, call.function.name, json.loads(call.function.arguments))
            seen["finish"] = first.choices[0].finish_reason
            messages.append(first.choices[0].message.model_dump(exclude_none=True))
            result = await ctx.call_tool(call.function.name, call.function.arguments)
            messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
            chunks = [
                c async for c in await client.chat.completions.create(
                    model="m", messages=messages, stream=True
                )
            ]  # fmt: skip
            seen["chunks"] = len(chunks)
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    task = Task("t", "What is 6*7?", "42")
    async with make_engine() as engine:
        run = await engine.run(
            [task], streaming, policy=calculator_then_answer(), environment="arithmetic",
            scorer="numeric",
        )  # fmt: skip
        (r,) = await run.rollouts()
        assert r.state == "done" and r.answer == "42" and r.reward == 1.0, r.error
        requests = [m.payload for m in await run.messages(r.id) if m.category == "model_request"]
    assert seen["call"][1:] == ("calculator", {"expression": "6*7"})
    assert seen["finish"] == "tool_calls"
    assert seen["chunks"] >= 3  # role, content, finish
    assert [p.get("stream") for p in requests] == [True, True]


async def test_a_key_is_refused_on_another_rollouts_path_and_after_its_attempt(
    make_engine: EngineFactory,
) -> None:
    openai = require("openai")
    both = anyio.Event()
    seen: dict[int, Any] = {}
    refused: dict[str, Any] = {}

    async def nosy(task: TaskView, ctx: Any) -> str | None:
        seen[ctx.sample_index] = ctx
        if len(seen) == 2:
            both.set()
        await both.wait()
        if ctx.sample_index == 0:
            other = seen[1]
            async with openai.AsyncOpenAI(base_url=other.base_url, api_key=ctx.api_key) as c:
                with pytest.raises(openai.PermissionDeniedError) as denied:
                    await c.chat.completions.create(model="m", messages=[{"role": "user",
                                                                          "content": "hi"}])
                refused["403"] = denied.value.status_code
            async with openai.AsyncOpenAI(base_url=ctx.base_url, api_key="dy-guess") as c:
                with pytest.raises(openai.AuthenticationError) as unknown:
                    await c.models.list()
                refused["401"] = unknown.value.status_code
        return await solve(task, ctx)

    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "What is 2+3?", "5")], nosy, policy=calculator_then_answer(),
            environment="arithmetic", samples=2, scorer="numeric",
        )  # fmt: skip
        rollouts = await run.rollouts()
        assert {r.state for r in rollouts} == {"done"}
        assert refused == {"403": 403, "401": 401}
        for r in rollouts:  # the refused calls wrote nothing: two model calls each
            replies = [m for m in await run.messages(r.id) if m.category == "model_request"]
            assert len(replies) == 2
        before = await engine.store.count_messages(run.id)
        # the attempt is over: its key is no longer good, even on its own path
        async with openai.AsyncOpenAI(base_url=seen[0].base_url, api_key=seen[0].api_key) as c:
            with pytest.raises(openai.AuthenticationError):
                await c.chat.completions.create(model="m", messages=[{"role": "user",
                                                                      "content": "late"}])
        await engine.store.commit()
        assert await engine.store.count_messages(run.id) == before
        gateway = await engine.gateway()
        assert gateway.refused == 3 and gateway.sessions == 0


async def test_a_crash_in_the_apps_code_is_failed_not_error(make_engine: EngineFactory) -> None:
    calls = {"n": 0}

    async def buggy(task: TaskView, ctx: Any) -> str:
        calls["n"] += 1
        async with client_for(ctx) as client:
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": task.prompt}]
            )
        raise KeyError("plan")  # the app's own bug

    async def silent(task: TaskView, ctx: Any) -> str | None:
        return None

    async with make_engine(max_attempts=3) as engine:
        run = await engine.run(
            arithmetic_tasks(1), buggy, policy=calculator_then_answer(),
            environment="arithmetic", samples=2, scorer="arithmetic",
        )  # fmt: skip
        rollouts = await run.rollouts()
        assert {r.state for r in rollouts} == {"failed"} and {r.reward for r in rollouts} == {0.0}
        assert calls["n"] == 2  # an agent's fault is a result: never retried
        assert rollouts[0].error == "the agent raised KeyError: 'plan'"
        error = next(m for m in await run.messages(rollouts[0].id) if m.category == "error")
        assert "raise KeyError" in error.payload["traceback"]
        assert (await run.pass_at_k([1])).overall == {1: 0.0}  # counted, as wrong
        run = await engine.run(
            arithmetic_tasks(1), silent, policy=calculator_then_answer(),
            environment="arithmetic", scorer="arithmetic",
        )  # fmt: skip
        (r,) = await run.rollouts()
        assert r.state == "failed" and r.error == "the agent returned no answer"


def flaky_chat_server(failures: int) -> ChatServer:
    """A model server whose first ``failures`` requests answer 500, then a model
    that calls the calculator and answers with its result."""

    def model(body: dict[str, Any]) -> dict[str, Any]:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return reply(last["content"])
        call = {"id": "c1", "type": "function",
                "function": {"name": "calculator", "arguments": '{"expression": "2+3"}'}}
        return reply(None, [call])  # fmt: skip

    return ChatServer([500] * failures + [model])


async def test_a_model_server_that_fails_and_recovers(make_engine: EngineFactory) -> None:
    runs = {"n": 0}

    async def counted(task: TaskView, ctx: Any) -> str | None:
        runs["n"] += 1
        return await solve(task, ctx)

    task = [Task("t", "What is 2+3?", "5")]
    async with make_engine(max_attempts=3) as engine:
        # two 500s: the policy's retries absorb them, the app never knows
        async with flaky_chat_server(2).running() as server:
            policy = OpenAIPolicy(server.url, "m", retries=3, backoff=0.01)
            async with policy:
                run = await engine.run(
                    task, counted, policy=policy, environment="arithmetic", scorer="numeric"
                )
            (r,) = await run.rollouts()
            assert r.state == "done" and r.attempt == 1 and runs["n"] == 1
            assert len(server.requests) == 4  # 2 failed + 2 model calls
        # three 500s against 2 tries a call: the attempt is an error, run again from the start
        runs["n"] = 0
        async with flaky_chat_server(3).running() as server:
            async with OpenAIPolicy(server.url, "m", retries=1, backoff=0.01) as policy:
                run = await engine.run(
                    task, counted, policy=policy, environment="arithmetic", scorer="numeric"
                )
        (r,) = await run.rollouts()
        assert r.state == "done" and r.reward == 1.0 and runs["n"] == 2
        attempts = await engine.store.attempts(r.id)
        assert [a.state for a in attempts] == ["error", "done"]
        assert attempts[0].error is not None and "failed after 2 tries" in attempts[0].error
        errors = [m.payload for m in await run.messages(r.id) if m.category == "error"]
        assert errors[0]["retryable"] is True


class LosesItsWorker(ArithmeticEnvironment):
    """The calculator, but the first step of all goes to a worker that died."""

    lost = 0

    async def step(self, call: ToolCall) -> Observation:
        if LosesItsWorker.lost == 0:
            LosesItsWorker.lost += 1
            raise EnvironmentLost("worker 3 died")
        return await super().step(call)


async def test_a_lost_environment_is_error_even_when_the_app_swallows_it(
    make_engine: EngineFactory,
) -> None:
    swallowed: list[str] = []

    async def forgiving(task: TaskView, ctx: Any) -> str | None:
        # like a framework that turns a tool's exception into text for the model
        async with client_for(ctx) as client:
            reply = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": task.prompt}], tools=ctx.tools
            )
            call = reply.choices[0].message.tool_calls[0]
            try:
                return await ctx.call_tool(call.function.name, call.function.arguments)
            except Exception as exc:
                swallowed.append(type(exc).__name__)
                return "I could not compute it"

    LosesItsWorker.lost = 0
    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "What is 2+3?", "5")], forgiving, policy=calculator_then_answer(),
            environment=LosesItsWorker, scorer="numeric",
        )  # fmt: skip
        (r,) = await run.rollouts()
        attempts = await engine.store.attempts(r.id)
    assert [a.state for a in attempts] == ["error", "done"]
    assert attempts[0].error == "EnvironmentLost: worker 3 died"
    assert r.state == "done" and r.answer == "5"
    assert swallowed in ([], ["EnvironmentLost"])  # the app may not even get to see it


async def test_several_agents_each_speak_under_their_name(make_engine: EngineFactory) -> None:
    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        system = messages[0]["content"]
        if system == "plan":
            return "use the calculator"
        return calculator_then_answer().handler(messages[1:], tools)

    async def team(task: TaskView, ctx: Any) -> str | None:
        async with client_for(ctx, "planner") as planner, client_for(ctx, "solver") as solver:
            plan = await planner.chat.completions.create(
                model="m", messages=[{"role": "system", "content": "plan"},
                                     {"role": "user", "content": task.prompt}],
            )  # fmt: skip
            assert plan.choices[0].message.content == "use the calculator"
            messages: list[dict[str, Any]] = [{"role": "system", "content": "solve"},
                                              {"role": "user", "content": task.prompt}]
            for _ in range(2):
                out = await solver.chat.completions.create(
                    model="m", messages=messages, tools=ctx.tools
                )
                msg = out.choices[0].message
                if not msg.tool_calls:
                    return msg.content
                messages.append(msg.model_dump(exclude_none=True))
                for call in msg.tool_calls:
                    result = await ctx.call_tool(call.function.name, call.function.arguments)
                    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        return None

    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "What is 3*4?", "12")], team, policy=ScriptedPolicy(handler),
            environment="arithmetic", scorer="numeric",
        )  # fmt: skip
        (r,) = await run.rollouts()
        assert r.state == "done" and r.reward == 1.0
        talk = [
            (m.sender, m.receiver, m.topic)
            for m in await run.messages(r.id)
            if m.category in ("model_request", "model_reply", "tool_call", "tool_result")
        ]
    assert talk == [
        ("planner", "policy", "turn 1"),
        ("policy", "planner", "turn 1"),
        ("solver", "policy", "turn 1"),
        ("policy", "solver", "turn 1"),
        ("solver", "env", "calculator"),  # the call the solver's reply asked for
        ("env", "solver", "calculator"),
        ("solver", "policy", "turn 2"),
        ("policy", "solver", "turn 2"),
    ]


async def test_n_choices_come_back_and_are_all_recorded(make_engine: EngineFactory) -> None:
    got: list[list[str]] = []

    async def sampler(task: TaskView, ctx: Any) -> str | None:
        async with client_for(ctx) as client:
            out = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "pick"}], n=3
            )
        got.append([c.message.content for c in out.choices])
        return out.choices[2].message.content

    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "pick", "c")], sampler, policy=ScriptedPolicy(lambda m, t: ["a", "b", "c"]),
            environment="arithmetic", scorer="exact",
        )  # fmt: skip
        (r,) = await run.rollouts()
        (recorded,) = [m.payload for m in await run.messages(r.id) if m.category == "model_reply"]
    assert got == [["a", "b", "c"]] and r.reward == 1.0
    assert recorded["content"] == "a" and [c["content"] for c in recorded["others"]] == ["b", "c"]


# ---- trainable trajectories ------------------------------------------------------------


def render(messages: list[dict[str, Any]]) -> str:
    """A toy chat template: what the model's prompt is, as text."""
    out = ""
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            fn = m["tool_calls"][0]["function"]
            out += f"<assistant>CALL {fn['name']} {fn['arguments']}</>"
        else:
            out += f"<{m['role']}>{m.get('content') or ''}</>"
    return out + "<assistant>"


def token_policy() -> ScriptedPolicy:
    """A model whose tokens are characters: prompt ids are the rendered
    conversation's, completion ids those of its reply (with the end marker)."""

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Completion:
        prompt = [ord(ch) for ch in render(messages)]
        if messages[-1]["role"] == "tool":
            text, calls = messages[-1]["content"], []
        else:
            expr = messages[-1]["content"].split("What is ", 1)[1].rstrip("?")
            args = json.dumps({"expression": expr})
            text, calls = f"CALL calculator {args}", [ToolCall("c1", "calculator", args)]
        completion = [ord(ch) for ch in text + "</>"]
        return Completion(
            content=None if calls else text, tool_calls=calls, prompt_token_ids=prompt,
            token_ids=completion, logprobs=[-0.5] * len(completion),
        )  # fmt: skip

    return ScriptedPolicy(handler)


async def test_an_agents_calls_form_one_token_exact_trajectory(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    async def trimming(task: TaskView, ctx: Any) -> str | None:
        """Keeps only the last tool result in its history (sample 1 only)."""
        async with client_for(ctx) as client:
            messages: list[dict[str, Any]] = [{"role": "user", "content": task.prompt}]
            out = await client.chat.completions.create(model="m", messages=messages,
                                                       tools=ctx.tools)  # fmt: skip
            msg = out.choices[0].message
            call = msg.tool_calls[0]
            result = await ctx.call_tool(call.function.name, call.function.arguments)
            tool = {"role": "tool", "tool_call_id": call.id, "content": result}
            if ctx.sample_index == 0:
                messages += [msg.model_dump(exclude_none=True), tool]
            else:
                messages = [{"role": "user", "content": task.prompt + " (summary)"}, tool]
            out = await client.chat.completions.create(model="m", messages=messages)
            return out.choices[0].message.content

    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "What is 2+3?", "5")], trimming, policy=token_policy(),
            environment="arithmetic", samples=2, scorer="numeric",
        )  # fmt: skip
        whole, trimmed = await run.rollouts()
        (t,) = await run.token_trajectories(whole.id)
        assert t.trainable and t.agent == "agent" and t.calls == 2
        text = "".join(chr(i) for i in t.token_ids)
        final = [{"role": "user", "content": "What is 2+3?"},
                 {"role": "assistant", "tool_calls": [{"function": {
                     "name": "calculator", "arguments": '{"expression": "2+3"}'}}]},
                 {"role": "tool", "content": "5"}]  # fmt: skip
        assert text == render(final) + "5</>"
        pairs = zip(t.token_ids, t.loss_mask, strict=True)
        generated = "".join(chr(i) for i, keep in pairs if keep)
        assert generated == 'CALL calculator {"expression": "2+3"}</>5</>'
        assert t.logprobs is not None and len(t.logprobs) == len(t.token_ids)
        assert {lp for lp, keep in zip(t.logprobs, t.loss_mask, strict=True) if keep} == {-0.5}
        # the rewritten history is detected, recorded on the reply, and never trained on
        (u,) = await run.token_trajectories(trimmed.id)
        assert not u.trainable and u.problem == "not_continued" and u.token_ids == []
        replies = [m.payload for m in await run.messages(trimmed.id) if m.category == "model_reply"]
        assert replies[1]["continues"]["extends"] is False
        requests = [m.payload for m in await run.messages(trimmed.id)
                    if m.category == "model_request"]  # fmt: skip
        assert requests[1]["rewritten"] is True
        written = await export_token_rows(engine.store, run.id, tmp_path / "grpo.jsonl")
        assert written.rows == 1 and written.skipped == {"not_continued": 1}
        (row,) = [json.loads(x) for x in (tmp_path / "grpo.jsonl").read_text().splitlines()]
        assert row["rollout_id"] == whole.id and row["reward"] == 1.0 and row["group_id"] == "t"
        # SFT: the conversation as the app sent it, whatever it did to its history
        assert await export_sft(engine.store, run.id, tmp_path / "sft.jsonl") == 2
        rows = [json.loads(x) for x in (tmp_path / "sft.jsonl").read_text().splitlines()]
        roles = [[m["role"] for m in row["messages"]] for row in rows]
        assert sorted(roles) == [["user", "tool_call", "tool_response", "assistant"],
                                 ["user", "tool_response", "assistant"]]  # fmt: skip


# ---- the engine's guard rails --------------------------------------------------------------


async def test_wrong_agents_are_clear_errors_before_anything_starts(
    make_engine: EngineFactory,
) -> None:
    def not_async(task: TaskView, ctx: Any) -> str:
        return "x"

    async with make_engine() as engine:
        tasks = [Task("t", "q", "a")]
        with pytest.raises(ConfigError, match="needs the policy"):
            await engine.run(tasks, solve, environment="arithmetic")
        with pytest.raises(ConfigError, match="not an async function"):
            await engine.run(tasks, not_async, policy=calculator_then_answer(),
                             environment="arithmetic")  # fmt: skip
        with pytest.raises(ConfigError, match="has no complete"):
            await engine.run(tasks, solve, policy="gpt", environment="arithmetic")  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="is not an agent"):
            await engine.run(tasks, 42, environment="arithmetic")  # type: ignore[arg-type]
        assert await engine.store.runs() == []


async def test_a_cancelled_run_of_an_apps_agent_resumes_once(make_engine: EngineFactory) -> None:
    gate = anyio.Event()
    started: list[str] = []

    async def waits(task: TaskView, ctx: Any) -> str | None:
        started.append(ctx.rollout_id)
        async with client_for(ctx) as client:
            if not gate.is_set():
                await client.models.list()
                await anyio.sleep_forever()
            return await chat_loop(client, task.prompt, ctx)

    async with make_engine() as engine:
        async with anyio.create_task_group() as tg:

            async def cancel_when_all_started() -> None:
                while len(started) < 4:
                    await anyio.wait_all_tasks_blocked()
                tg.cancel_scope.cancel()

            tg.start_soon(cancel_when_all_started)
            await engine.run(
                arithmetic_tasks(2), waits, policy=calculator_then_answer(),
                environment="arithmetic", samples=2, scorer="arithmetic", run_id="r1",
            )  # fmt: skip
        run = engine.open_run("r1")
        assert await run.counts() == {"cancelled": 4}
        assert (await engine.gateway()).sessions == 0
        gate.set()
        await engine.resume("r1", waits, policy=calculator_then_answer())
        rollouts = await run.rollouts()
        assert {r.state for r in rollouts} == {"done"} and len(started) == 8
        attempts = await engine.store.attempts(rollouts[0].id)
        assert [a.state for a in attempts] == ["cancelled", "done"]


def test_a_runs_app_agent_is_rebuilt_from_its_description() -> None:
    agent = AppAgent(solve, OpenAIPolicy("http://127.0.0.1:1/v1", "m"), name="triage")
    again = agent_from_description(agent.describe())
    assert isinstance(again, AppAgent) and again.solve is solve and again.name == "triage"
    assert isinstance(again.policy, OpenAIPolicy) and again.policy.model == "m"
    async def local(task: TaskView, ctx: Any) -> str | None:
        return await solve(task, ctx)

    with pytest.raises(ConfigError, match="not a module-level function"):
        agent_from_description(AppAgent(local, calculator_then_answer()).describe())


async def test_the_app_sees_the_task_tools_and_workspace(
    make_engine: EngineFactory, tmp_path: Path
) -> None:
    from tools._toolbox import FunctionToolbox, ToolboxEnvironment

    def shout(text: str) -> str:
        """Upper-case a text."""
        return text.upper()

    notes = tmp_path / "notes.txt"
    notes.write_text("the code is 7431")
    seen: dict[str, Any] = {}

    async def reads(task: TaskView, ctx: Any) -> str | None:
        assert ctx.workspace is not None
        files = sorted(p.name for p in ctx.workspace.iterdir())
        tools = [t["function"]["name"] for t in ctx.tools]
        seen.update(task=task.id, tools=tools, observation=ctx.observation, files=files)
        text = (ctx.workspace / "notes.txt").read_text()
        return (await ctx.call_tool("shout", {"text": text})).split()[-1]

    def env() -> ToolboxEnvironment:
        return ToolboxEnvironment([FunctionToolbox([shout])])

    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "What is the code?", "7431", attachments=(str(notes),))], reads,
            policy=calculator_then_answer(), environment=env, scorer="exact",
        )  # fmt: skip
        (r,) = await run.rollouts()
    assert r.state == "done" and r.reward == 1.0, r.error
    assert seen["task"] == "t" and seen["tools"] == ["shout"] and seen["files"] == ["notes.txt"]
    assert seen["observation"].startswith("What is the code?")
    assert "notes.txt" in seen["observation"]


async def test_the_engines_limits_hold_for_an_apps_calls(make_engine: EngineFactory) -> None:
    live = {"now": 0, "max": 0, "hang": True}
    release = anyio.Event()

    async def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        live["now"] += 1
        live["max"] = max(live["max"], live["now"])
        try:
            if live["now"] == 2 and not release.is_set():
                await anyio.wait_all_tasks_blocked()  # every other call has come as far as it can
                release.set()
            await release.wait()
            return calculator_then_answer().handler(messages, tools)
        finally:
            live["now"] -= 1

    async with make_engine(max_model_requests=2, max_rollouts=8) as engine:
        run = await engine.run(
            arithmetic_tasks(4), solve, policy=ScriptedPolicy(handler),
            environment="arithmetic", samples=2, scorer="arithmetic",
        )  # fmt: skip
        assert await run.counts() == {"done": 8}
    assert live["max"] == 2  # however many rollouts want the model, two calls at a time

    async def hangs(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if live["hang"]:
            live["hang"] = False
            await anyio.sleep_forever()  # cut at the step deadline
        return calculator_then_answer().handler(messages, tools)

    async with make_engine(step_timeout=0.2) as engine:
        run = await engine.run(
            [Task("t", "What is 2+3?", "5")], solve, policy=ScriptedPolicy(hangs),
            environment="arithmetic", scorer="numeric",
        )  # fmt: skip
        (r,) = await run.rollouts()
        attempts = await engine.store.attempts(r.id)
    assert [a.state for a in attempts] == ["error", "done"]
    assert attempts[0].error == "InfraError: model call took longer than 0.2s"


async def test_a_manager_runs_its_workers_at_once(make_engine: EngineFactory) -> None:
    async def manager(task: TaskView, ctx: Any) -> str | None:
        async def worker(name: str, expression: str) -> str:
            async with client_for(ctx, name) as client:
                out = await client.chat.completions.create(
                    model="m", messages=[{"role": "user", "content": f"What is {expression}?"}],
                    tools=ctx.tools,
                )  # fmt: skip
                call = out.choices[0].message.tool_calls[0]
                return await ctx.call_tool(call.function.name, call.function.arguments)

        async with anyio.create_task_group() as tg:
            results: dict[str, str] = {}

            async def run(name: str, expression: str) -> None:
                results[name] = await worker(name, expression)

            tg.start_soon(run, "left", "2*3")
            tg.start_soon(run, "right", "4*5")
        return str(int(results["left"]) + int(results["right"]))

    async with make_engine() as engine:
        run = await engine.run(
            [Task("t", "What is 2*3 + 4*5?", "26")], manager, policy=calculator_then_answer(),
            environment="arithmetic", scorer="numeric",
        )  # fmt: skip
        (r,) = await run.rollouts()
        msgs = await run.messages(r.id)
    assert r.state == "done" and r.reward == 1.0, r.error
    assert [m.seq for m in msgs] == list(range(len(msgs)))
    by_agent: dict[str, list[str]] = {}
    for m in msgs:
        if m.category in ("model_request", "model_reply", "tool_call", "tool_result"):
            agent = m.sender if m.category in ("model_request", "tool_call") else m.receiver
            by_agent.setdefault(agent, []).append(str(m.category))
    assert by_agent == {a: ["model_request", "model_reply", "tool_call", "tool_result"]
                        for a in ("left", "right")}  # fmt: skip
