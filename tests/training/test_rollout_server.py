"""The rollout server swift's GRPO trainer talks to in server mode, without a model server.

swift's own client (`VLLMClient`, the code the trainer runs) connects, sets up
its weight-update group (a group of one: the server offers no NCCL ranks),
asks the engine type and rolls out a batch; what comes back validates as
swift's `RolloutOutput`. Rollouts go through the engine's driver into the
store, one run for the job, the step on every message. Bad requests get a 4xx
that names what was wrong.
"""

from __future__ import annotations

import atexit
import json
import socket
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from engine.integrations.config import FeedConfig
from engine.integrations.rollout_server import RolloutServer
from engine.policy import Completion, ScriptedPolicy
from engine.store import TraceStore

pytestmark = pytest.mark.anyio


def replies(messages: list[dict[str, Any]], tools: Any) -> Completion:
    turn = sum(1 for m in messages if m["role"] == "assistant")
    text = ["hello there", "paris paris"][min(turn, 1)]
    return Completion(content=text, token_ids=[10 + turn, 20 + turn], logprobs=[-0.5, -0.25])


def row(task_id: str, fail: str = "") -> dict[str, Any]:
    meta = json.dumps({"secret": "paris", "fail": fail})
    return {
        "messages": [{"role": "user", "content": "Say a word."}],
        "data_dict": {"task_id": task_id, "ground_truth": "paris", "task_metadata": meta},
    }


@pytest.fixture
async def server(tmp_path: Path, flaky_registered: None) -> AsyncIterator[RolloutServer]:
    config = FeedConfig(
        store=str(tmp_path / "server.db"), run_id="job", environment="flaky_secret",
        scorer="secret_share", text_tool="say", system_prompt="Repeat the word.",
        max_turns=2, retry_backoff=0.0, port=0,
    )  # fmt: skip
    async with RolloutServer(config, policy=ScriptedPolicy(replies)) as srv:
        yield srv


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_swifts_own_client_rolls_out_a_batch(server: RolloutServer, need_swift: None) -> None:
    from swift.infer_engine.protocol import RequestConfig, RolloutInferRequest, RolloutOutput
    from swift.rlhf_trainers.vllm_client import VLLMClient

    def trainer_side() -> tuple[dict[str, Any], list[Any]]:
        client = VLLMClient(base_urls=[server.url], group_ports=free_port(), connection_timeout=10)
        client.close_communicator()
        client.init_communicator(device="cpu")  # what the trainer does at start-up
        engine = client.get_engine_type()
        requests = [RolloutInferRequest(**row("a")), RolloutInferRequest(**row("a")),
                    RolloutInferRequest(**row("b"))]  # fmt: skip
        outputs = client.infer([asdict(r) for r in requests], asdict(RequestConfig(max_tokens=4)))
        atexit.unregister(client.close_communicator)  # the server is gone by then
        return engine, outputs

    engine, outputs = await anyio.to_thread.run_sync(trainer_side)
    assert engine["engine_type"] == "AsyncLLMEngine" and not engine["use_gym_env"]
    assert len(outputs) == 3 and all(isinstance(o, RolloutOutput) for o in outputs)
    infos = [o.rollout_infos["drillyard"] for o in outputs]
    assert [i["task_id"] for i in infos] == ["a", "a", "b"]  # one output per request, in order
    assert len({i["rollout_id"] for i in infos}) == 3
    for out, info in zip(outputs, infos, strict=True):
        assert info["state"] == "done" and info["reward"] == 1.0 and info["step"] == 0
        assert out.response_token_ids == [[10, 20], [11, 21]]  # per turn, as the policy gave them
        assert out.response_loss_mask == [[1, 1], [1, 1]]
        assert out.rollout_logprobs == [[-0.5, -0.25], [-0.5, -0.25]]
        roles = [m["role"] for m in out.messages]
        assert roles == ["system", "user", "assistant", "user", "assistant"]
        assert out.messages[3]["content"].startswith("The word is paris.")
    async with TraceStore(server.config.store) as store:
        rollouts = await store.rollouts("job")
        assert {r.id for r in rollouts} == {i["rollout_id"] for i in infos}
        assert {r.task_id for r in rollouts} == {"a@0", "b@0"}  # one GRPO group per task and step
        msgs = await store.messages(infos[0]["rollout_id"])
        assert all(m.headers["step"] == 0 for m in msgs)
        steps = await store.train_steps("job")
        assert steps[0].step == 0 and steps[0].data["rollouts"] == 3


async def test_a_sample_whose_infrastructure_failed_is_masked_never_copied(
    server: RolloutServer,
) -> None:
    body = {"infer_requests": [row("ok"), row("bad", fail="always")], "request_config": {}}
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.url}/infer/", json=body) as resp:
            assert resp.status == 200, await resp.text()
            ok, bad = await resp.json()
    info = bad["rollout_infos"]["drillyard"]
    assert info["state"] == "error" and info["masked"] and info["reward"] is None
    assert info["attempts"] == 3 and "worker lost" in info["error"]
    assert info["rollout_id"] != ok["rollout_infos"]["drillyard"]["rollout_id"]
    # its own (last) attempt's turn, trained on nothing but its last token
    assert bad["response_token_ids"] == [[10, 20]] and bad["response_loss_mask"] == [[0, 1]]
    async with TraceStore(server.config.store) as store:
        rec = await store.rollout(info["rollout_id"])
        assert (rec.state, rec.reward, rec.task_id) == ("error", None, "bad@0")
        attempts = await store.attempts(rec.id)
        assert [a.state for a in attempts] == ["error"] * 3


@pytest.mark.parametrize(
    ("route", "body", "status", "says"),
    [
        ("/v1/chat/completions", {}, 404, "unknown route POST /v1/chat/completions"),
        ("/infer/", {"infer_requests": "x"}, 400, "infer_requests"),
        ("/infer/", {"infer_requests": [{"messages": []}]}, 400, "infer_requests.0.messages"),
        ("/infer/", {"infer_requests": [row("a")], "request_config": {"n": 2}}, 400,
         "request_config.n"),
        ("/infer/", {"infer_requests": [{"messages": [{"role": "user", "content": "x"}]}]},
         400, "--vllm_server_pass_dataset true"),
        ("/drillyard/weights/", {"step": 1}, 400, "weights_path"),
        ("/drillyard/weights/", {"weights_path": "/nowhere", "step": -1}, 400, "step"),
    ],
)  # fmt: skip
async def test_a_bad_request_gets_a_4xx_naming_what_was_wrong(
    server: RolloutServer, route: str, body: dict[str, Any], status: int, says: str
) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(server.url + route, json=body) as resp:
            assert resp.status == status
            assert says in (await resp.json())["error"]
        async with http.get(f"{server.url}/health") as resp:  # and the server goes on
            assert resp.status == 200


async def test_a_checkpoint_that_cannot_load_stops_the_run(
    server: RolloutServer, tmp_path: Path
) -> None:
    broken = tmp_path / "step-1"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"\x10\x00\x00\x00not a header")
    async with aiohttp.ClientSession() as http:
        body = {"weights_path": str(broken), "step": 1, "overlap": False}
        async with http.post(f"{server.url}/drillyard/weights/", json=body) as resp:
            assert resp.status == 409
            assert "cannot be read" in (await resp.json())["error"]
        batch = {"infer_requests": [row("a")]}
        async with http.post(f"{server.url}/infer/", json=batch) as resp:
            assert resp.status == 409 and "stopped" in (await resp.json())["error"]
    assert server.sync.step == 0 and server.sync.history == []
