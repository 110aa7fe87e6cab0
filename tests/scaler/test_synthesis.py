"""Synthesis from tool specs: determinism, the figures, bad specs, raising tools,
broken gold sequences, and policy-written implementations checked in the jail."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from engine import ScriptedPolicy
from engine.policy.toolcalls import make_call
from engine.tasks import load_tasks
from scaler.data import SPECS
from scaler.graph import tool_graph
from scaler.sampling import GoldSequenceError, verify_tasks
from scaler.specs import load_specs
from scaler.synthesize import synthesize
from tools.stateful.environment import StatefulEnvironment, load_domain

pytestmark = pytest.mark.anyio

CONVERT = '''Here it is:
```python
def convert_balance(state, account_id, currency):
    rates = {"EUR": 1.0, "USD": 1.1, "GBP": 0.85}
    account = state["accounts"][account_id]
    account["balance"] = round(account["balance"] / rates[account["currency"]] * rates[currency], 2)
    account["currency"] = currency
    return account
```'''


def files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): p.read_text() for p in sorted(folder.rglob("*.json*"))}


async def test_synthesis_is_deterministic_for_a_seed_and_its_tasks_replay(tmp_path: Path) -> None:
    first = await synthesize(SPECS, tmp_path / "a", seed=0, tasks_per_domain=4)
    again = await synthesize(SPECS, tmp_path / "b", seed=0, tasks_per_domain=4)
    await synthesize(SPECS, tmp_path / "c", seed=1, tasks_per_domain=4)
    assert files(tmp_path / "a") == files(tmp_path / "b")
    assert files(tmp_path / "a") != files(tmp_path / "c")
    assert first.to_dict() == again.to_dict()
    assert (first.specs_read, first.specs_kept) == (34, 34)
    assert len(first.domains) >= 4 and first.tasks == 4 * len(first.domains)
    # the one spec with no implementation (and no policy to write one) is named
    assert any(p.startswith("tool convert_balance: no implementation")
               for p in first.tool_problems)
    for d in first.domains:
        domain = load_domain(tmp_path / "a" / "domains" / f"{d.name}.json")
        tasks = load_tasks(tmp_path / "a" / "tasks" / f"{d.name}.jsonl")
        good, problems = await verify_tasks(domain, tasks)
        assert problems == [] and len(good) == d.tasks
        for t in tasks:
            assert 2 <= len(t.ground_truth["calls"]) <= 4
            assert t.ground_truth["final_state"] != t.metadata["initial_state"]
            assert set(t.metadata) == {"domain", "initial_state", "user_turns"}


def test_edges_link_tools_that_share_parameters_only() -> None:
    graph = tool_graph(load_specs(SPECS).tools)
    assert graph.has_edge("transfer_funds", "get_account")  # from_account_id ~ account_id
    assert graph.has_edge("get_order", "update_order")
    # similar words but no shared parameter feature (category vs genre): no edge
    assert not graph.has_edge("list_products", "search_books")
    assert graph.edges["get_book", "get_event"]["param"] < 0.1  # only the weak token "id"
    edge = graph.edges["get_order", "delete_order"]
    assert edge["param"] == 1.0 and 0 < edge["weight"] <= 1


async def test_bad_specs_and_raising_tools_are_named_and_the_rest_goes_on(
        tmp_path: Path) -> None:
    specs = tmp_path / "specs"
    specs.mkdir()
    shutil.copy(SPECS / "shop.json", specs)
    (specs / "broken.json").write_text("{not json")
    (specs / "odd.json").write_text(json.dumps([
        {"name": "weigh_product", "description": "Weigh a product.",
         "parameters": {"type": "object", "properties": {"product_id": {"type": "strnig"}}}},
        {"name": "no_words", "parameters": {"type": "object", "properties": {}}},
        {"type": "function", "function": {
            "name": "audit_product", "description": "Audit a product's stock.",
            "x-implementation": "tests.scaler.test_synthesis:jammed",
            "parameters": {"type": "object", "properties": {"product_id": {"type": "string"}},
                           "required": ["product_id"]}}},
    ]))
    report = await synthesize(specs, tmp_path / "out", seed=0, tasks_per_domain=3)
    problems = "\n".join(report.spec_problems)
    assert "broken.json: not readable as JSON" in problems
    assert "odd.json#0: spec weigh_product: parameters are not valid JSON schema at " \
           "properties/product_id/type" in problems
    assert "odd.json#1: spec no_words: has no description" in problems
    assert report.specs_read == 15 and report.specs_kept == 13
    assert any(p.startswith("tool audit_product: every sampled call failed (last: "
                            "RuntimeError: the scale is jammed") for p in report.tool_problems)
    assert report.tasks > 0 and all("audit_product" not in d.tools for d in report.domains)


def jammed(state: dict[str, Any], product_id: str) -> Any:
    raise RuntimeError("the scale is jammed")


async def test_a_task_whose_gold_calls_do_not_execute_is_named_and_left_out(
        tmp_path: Path) -> None:
    await synthesize(SPECS, tmp_path, seed=0, tasks_per_domain=2)
    domain = load_domain(tmp_path / "domains" / "orders.json")
    good, broken = load_tasks(tmp_path / "tasks" / "orders.jsonl")
    broken.ground_truth["calls"].insert(1, {"name": "get_order",
                                            "arguments": {"order_id": "ord-99"}})
    kept, problems = await verify_tasks(domain, [good, broken])
    assert kept == [good]
    assert problems == [f"task {broken.id}: gold call 2 (get_order) failed: KeyError: "
                        "\"no order with order_id 'ord-99'\"; task left out"]
    assert isinstance(GoldSequenceError("t", 0, "x", "y"), ValueError)


async def test_policy_written_code_is_checked_in_the_jail_and_runs_there(
        tmp_path: Path) -> None:
    asked: list[str] = []

    def coder(messages: list[dict[str, Any]], tools: Any) -> str:
        asked.append(messages[-1]["content"])
        return CONVERT if len(asked) > 1 else "I would rather not."

    report = await synthesize(SPECS, tmp_path, seed=0, tasks_per_domain=3,
                              policy=ScriptedPolicy(coder))
    assert "def convert_balance(state, **arguments)" in asked[0]
    assert "holds no ```python block" in asked[1]  # the model is told what was wrong
    assert report.implementations.get("code") == 1
    accounts = next(d for d in report.domains if "convert_balance" in d.tools)
    doc = json.loads((tmp_path / "domains" / f"{accounts.name}.json").read_text())
    [impl] = [t["impl"] for t in doc["tools"] if t["spec"]["function"]["name"] ==
              "convert_balance"]
    assert impl["kind"] == "code" and "rates" in impl["source"]
    env = StatefulEnvironment(doc)  # the kept code runs in the jail on every call
    [task, *_] = load_tasks(tmp_path / "tasks" / f"{accounts.name}.jsonl")
    await env.reset(task.view())
    account = sorted(task.metadata["initial_state"]["accounts"].values(),
                     key=lambda a: a["account_id"])[0]
    target = "GBP" if account["currency"] != "GBP" else "EUR"
    obs = await env.step(make_call("c1", "convert_balance",
                                   {"account_id": account["account_id"], "currency": target}))
    assert not obs.is_error and json.loads(obs.content)["currency"] == target
    assert obs.info["changes"][0]["table"] == "accounts"
    await env.close()


async def test_policy_written_code_that_always_fails_is_rejected(tmp_path: Path) -> None:
    bad = "```python\ndef convert_balance(state, **arguments):\n    raise ValueError('no')\n```"
    report = await synthesize(SPECS, tmp_path, seed=0, tasks_per_domain=2,
                              policy=ScriptedPolicy(lambda m, t: bad))
    assert "code" not in report.implementations
    assert any(p.startswith("tool convert_balance: the model's code was rejected: every "
                            "sampled call failed (last: ValueError: no)")
               for p in report.tool_problems)
