"""The ``stateful`` environment: fresh state per rollout, every write on record,
transactions, schema checks, user turns, and the state/call scorers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anyio
import pytest

from engine import Agent, Engine, EnvSpec, Observation, ScriptedPolicy, Task
from engine.errors import ConfigError
from engine.policy.base import Completion, SamplingParams
from engine.policy.toolcalls import make_call
from tests.scaler import notes
from tools.stateful.environment import StatefulEnvironment, load_domain
from tools.stateful.scoring import call_match, check_calls, state_alignment

pytestmark = pytest.mark.anyio

EngineFactory = Callable[..., Engine]


def call(name: str, **arguments: Any) -> Completion:
    return Completion(None, [make_call(f"c-{name}", name, json.dumps(arguments))], "tool_calls")


class Writers:
    """Every rollout writes its own seed into the state; all of them hold their writes
    at once (they wait for each other after the first write) before going on."""

    def __init__(self, rollouts: int) -> None:
        self.rollouts = rollouts
        self.wrote = 0
        self.all_wrote = anyio.Event()

    async def complete(self, messages: list[dict[str, Any]], tools: Any = None,
                       params: SamplingParams | None = None, n: int = 1) -> list[Completion]:
        assert params is not None and params.seed is not None
        mine = f"s{params.seed}"
        replies = [m for m in messages if m["role"] == "assistant"]
        users = [m for m in messages if m["role"] == "user"]
        if not replies:
            return [call("create_note", note_id="n-3", text=mine)]
        if len(replies) == 1:
            self.wrote += 1
            if self.wrote == self.rollouts:
                self.all_wrote.set()
            await self.all_wrote.wait()
            return [Completion("Created.")]
        if len(users) == 2 and messages[-1]["role"] != "tool":
            return [call("update_note", note_id="n-1", text=mine)]
        return [Completion("Updated.")]


@pytest.mark.parametrize("backend", ["inprocess", "subprocess"])
async def test_each_rollout_has_its_own_state_and_every_write_is_on_record(
        make_engine: EngineFactory, backend: str) -> None:
    samples = 6
    task = Task("isolation", "Write your seed.", None,
                metadata={"initial_state": notes.INITIAL,
                          "user_turns": ["Now put your seed into n-1 too."]})
    agent = Agent(Writers(samples), max_turns=6, sampling=SamplingParams(seed=100))  # type: ignore[arg-type]
    options = {"workers": 2, "slots_per_worker": 3} if backend == "subprocess" else {}
    async with make_engine(backend=backend, backend_options=options,
                           max_rollouts=samples) as engine:
        run = await engine.run([task], agent, environment=EnvSpec("stateful",
                                                                    {"domain": notes.DOMAIN}),
                               samples=samples, scorer=lambda t, a: 1.0)
        rollouts = await run.rollouts()
        assert {r.state for r in rollouts} == {"done"}, [r.error for r in rollouts]
        for r in rollouts:
            mine = f"s{100 + r.sample_index}"
            answer = json.loads(r.answer or "")
            assert answer["state"]["notes"] == {
                "n-1": {"note_id": "n-1", "text": mine},
                "n-2": {"note_id": "n-2", "text": "b"},
                "n-3": {"note_id": "n-3", "text": mine},
            }
            assert [c["name"] for c in answer["calls"]] == ["create_note", "update_note"]
            msgs = await run.messages(r.id)
            results = [m.payload for m in msgs if m.category == "tool_result"]
            assert results[0]["info"]["changes"] == [{
                "table": "notes", "removed": [],
                "added": [{"key": "n-3", "row": {"note_id": "n-3", "text": mine}}]}]
            update = results[1]["info"]["changes"][0]
            assert update["removed"] == [{"key": "n-1", "row": {"note_id": "n-1", "text": "a"}}]
            turns = [m.payload for m in msgs if m.category == "observation"
                     and m.topic == "respond"]
            assert turns[0]["content"] == "Now put your seed into n-1 too."
            assert not turns[0]["done"] and turns[-1]["done"]


async def test_a_tool_that_raises_leaves_the_state_and_the_agent_sees_which_tool() -> None:
    env = StatefulEnvironment(notes.DOMAIN)
    await env.reset(notes.task().view())
    obs = await env.step(make_call("c1", "shred_note", {"note_id": "n-1"}))
    assert obs.is_error
    assert obs.content == ("Error: shred_note raised RuntimeError: the shredder jammed on n-1")
    bad = await env.step(make_call("c2", "update_note", {"note_id": 7}))
    assert bad.is_error and "bad arguments for update_note" in bad.content
    assert "note_id: 7 is not of type 'string'" in bad.content
    missing = await env.step(make_call("c3", "get_note", {"note_id": "n-9"}))
    assert missing.is_error and "no note with note_id 'n-9'" in missing.content
    end = await env.respond("done")
    assert isinstance(end, Observation) and not end.done  # the task's second user turn
    end = await env.respond("done")
    answer = json.loads(end.answer or "")
    assert answer["state"] == notes.INITIAL  # the shredder's write was rolled back
    assert [c["ok"] for c in answer["calls"]] == [False, False, False]
    await env.close()


async def test_sqlite_state_runs_crud_tools_and_scores_by_rows(
        make_engine: EngineFactory) -> None:
    domain = {"name": "accounts", "state": "sqlite",
              "schema": "CREATE TABLE accounts (account_id TEXT PRIMARY KEY, owner TEXT, "
                        "balance REAL);",
              "tools": [{"spec": {"type": "function", "function": {
                  "name": f"{op}_account", "description": f"{op} an account",
                  "parameters": {"type": "object", "properties": props}}},
                  "impl": {"kind": "crud", "op": op, "table": "accounts", "key": "account_id"}}
                  for op, props in [
                      ("create", {"account_id": {"type": "string"}, "owner": {"type": "string"},
                                  "balance": {"type": "number"}}),
                      ("update", {"account_id": {"type": "string"},
                                  "balance": {"type": "number"}}),
                      ("delete", {"account_id": {"type": "string"}})]]}
    initial = {"accounts": [{"account_id": "a1", "owner": "Ada", "balance": 5.0},
                            {"account_id": "a2", "owner": "Bob", "balance": 1.0}]}
    gold = {"accounts": [{"account_id": "a1", "owner": "Ada", "balance": 9.5},
                         {"account_id": "a3", "owner": "Cy", "balance": 2}]}
    task = Task("sql", "Open a3 for Cy with 2, set a1 to 9.5, close a2.",
                {"final_state": gold, "calls": []}, metadata={"initial_state": initial})
    script = iter([call("create_account", account_id="a3", owner="Cy", balance=2),
                   call("update_account", account_id="a1", balance=9.5),
                   call("delete_account", account_id="a2"), Completion("All done.")])
    agent = Agent(ScriptedPolicy(lambda m, t: next(script)), max_turns=6)
    async with make_engine() as engine:
        run = await engine.run([task], agent, scorer="state_alignment",
                               environment=EnvSpec("stateful", {"domain": domain}))
        [r] = await run.rollouts()
        assert r.state == "done" and r.reward == 1.0, r.error
        assert json.loads(r.answer or "")["state"] == gold


def test_a_domain_tool_whose_parameters_are_not_json_schema_is_named() -> None:
    bad = json.loads(json.dumps(notes.DOMAIN))
    bad["tools"][1]["spec"]["function"]["parameters"]["properties"]["note_id"]["type"] = "txt"
    with pytest.raises(ConfigError) as err:
        load_domain(bad)
    assert "tool get_note" in str(err.value) and "not valid JSON schema" in str(err.value)
    unknown = json.loads(json.dumps(notes.DOMAIN))
    unknown["tools"][0]["impl"] = {"kind": "magic"}
    with pytest.raises(ConfigError, match="tool create_note: implementation"):
        load_domain(unknown)


def answer(state: Any, calls: list[dict[str, Any]]) -> str:
    return json.dumps({"reply": "ok", "state": state, "calls": calls})


def test_call_match_tolerances_are_the_documented_ones() -> None:
    task = Task("t", "p", {"final_state": {}, "calls": [
        {"name": "pay", "arguments": {"to": "ada", "amount": 2, "memo": None}},
        {"name": "log", "arguments": {}}]})

    def ok(*calls: dict[str, Any]) -> bool:
        return check_calls(task, answer({}, list(calls))).ok

    pay = {"name": "pay", "arguments": {"to": " ada ", "amount": 2.0}, "ok": True}
    log = {"name": "log", "arguments": {}, "ok": True}
    failed = {"name": "pay", "arguments": {"to": "bob"}, "ok": False}
    assert ok(pay, log)  # 2 == 2.0, trimmed strings, a null argument is absent
    assert ok(failed, pay, log)  # a failed call is dropped
    assert not ok(log, pay)  # order matters
    assert not ok({**pay, "arguments": {"to": "Ada", "amount": 2}}, log)  # case matters
    assert not ok({**pay, "arguments": {"to": "ada", "amount": 2, "x": 1}}, log)  # extra key
    assert not ok(pay)  # a call missing
    assert call_match(task, "not the environment's answer") == 0.0
    assert state_alignment(Task("s", "p", {"final_state": {"t": {"k": [1, 2]}}, "calls": []}),
                           answer({"t": {"k": (1, 2)}}, [])) == 1.0

