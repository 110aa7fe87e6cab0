"""User turns (`Environment.respond`) on every backend, and the worker's respond route."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from engine import Agent, Engine, EnvSpec, ScriptedPolicy
from scaler.agents import GoldReplay
from tests.backends.conftest import BackendFactory, worker_process
from tests.backends.test_worker import call, view
from tests.scaler import notes

pytestmark = pytest.mark.anyio


async def test_user_turns_run_the_same_on_every_backend(make_backend: BackendFactory,
                                                        store_path: Path) -> None:
    task = notes.task()
    replay = GoldReplay([task])
    agent = Agent(ScriptedPolicy(lambda m, t: replay.reply(m, t)), max_turns=8)
    async with Engine(store=store_path, backend=make_backend(slots=4), progress=False) as engine:
        run = await engine.run([task], agent, samples=3, scorer="call_match",
                               environment=EnvSpec("stateful", {"domain": notes.DOMAIN}))
        rollouts = await run.rollouts()
        assert {(r.state, r.reward) for r in rollouts} == {("done", 1.0)}, [
            r.error for r in rollouts]
        msgs = await run.messages(rollouts[0].id)
        users = [m.payload for m in msgs if m.category == "observation" and m.topic == "respond"]
        assert [u["done"] for u in users] == [False, True]
        assert users[0]["content"] == "One more thing: please also read note n-3."
        states = [m.payload["to"] for m in msgs if m.category == "state"]
        # the user's turn is the environment's: generating → acting → generating
        assert states[:6] == ["starting", "generating", "acting", "generating", "acting",
                              "generating"]


async def test_the_respond_route_only_for_environments_that_have_it(tmp_path: Path) -> None:
    spec: dict[str, Any] = {"name": "stateful", "config": {"domain": notes.DOMAIN}}
    task = notes.task().view().to_dict()
    with worker_process(tmp_path) as w:
        async with aiohttp.ClientSession() as s:
            status, probe = await call(s, w, "POST", "/envs", {"spec": {"name": "probe"}})
            assert status == 200 and probe["respond"] is False
            status, body = await call(s, w, "POST", f"/envs/{probe['env_id']}/respond",
                                      {"reply": "hi"})
            assert status == 400 and "has no respond" in body["error"]
            status, made = await call(s, w, "POST", "/envs", {"spec": spec})
            assert status == 200 and made["respond"] is True
            env = made["env_id"]
            status, obs = await call(s, w, "POST", f"/envs/{env}/reset", {"task_view": task})
            assert status == 200 and obs["content"] == task["prompt"]
            assert [t["function"]["name"] for t in obs["tools"]] == [
                "create_note", "get_note", "update_note", "shred_note"]
            status, body = await call(s, w, "POST", f"/envs/{env}/respond", {"reply": 5})
            assert status == 400
            status, turn = await call(s, w, "POST", f"/envs/{env}/respond", {"reply": "ok"})
            assert status == 200 and not turn["observation"]["done"]
            assert turn["observation"]["content"].startswith("One more thing")
            assert len(turn["tools"]) == 4
            status, end = await call(s, w, "POST", f"/envs/{env}/respond", {"reply": None})
            assert status == 200 and end["observation"]["done"]
            assert '"state"' in end["observation"]["answer"]
            status, obs = await call(s, w, "POST", f"/envs/{probe['env_id']}/reset",
                                     {"task_view": view()})
            assert status == 200 and "tools" in obs
