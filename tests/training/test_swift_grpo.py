"""A real 2-step ms-swift GRPO run on CPU through the drillyard plugin.

The tiny model trains on the secret-word environment with a turn-budget
curriculum (1 turn at step 0, 2 at step 1). One task's environment fails
once (retried), one always fails (masked out). A second plugin file records
what swift encodes for training; afterwards the store must hold every turn
with the token ids and loss masks swift trained on, and the rewards swift
logged must be the store's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from engine.integrations import SWIFT_PLUGIN
from engine.store import TraceStore
from engine.training.trajectory import load_trajectory

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CAPTURE_PLUGIN = str(Path(__file__).with_name("capture_plugin.py"))
IM_END, NEWLINE = 2, 203  # <|im_end|> and "\n" in the tiny tokenizer


def rows() -> list[dict[str, Any]]:
    out = []
    for i, fail in enumerate(["", "once", "always"]):
        meta = {"secret": "paris", "fail": fail}
        out.append(
            {
                "messages": [{"role": "user", "content": "Say a word."}],
                "task_id": f"secret-{fail or 'ok'}",
                "ground_truth": "paris",
                "task_metadata": json.dumps(meta),
            }
        )
        del i
    return out


def labelled_runs(labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    prev = False
    for tok in labels:
        if tok != -100:
            if not prev:
                runs.append([])
            runs[-1].append(tok)
        prev = tok != -100
    return runs


@pytest.fixture
def swift_run(need_swift: None, tiny_model_dir: Path, tmp_path: Path) -> dict[str, Path]:
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows()))
    paths = {
        "store": tmp_path / "train.db",
        "capture": tmp_path / "capture.jsonl",
        "timings": tmp_path / "timings.jsonl",
        "out": tmp_path / "out",
        "log": tmp_path / "swift.log",
    }
    env = dict(os.environ)
    env.update(
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(ROOT),
        DRILLYARD_STORE=str(paths["store"]),
        DRILLYARD_RUN_ID="grpo-test",
        DRILLYARD_ENV="flaky_secret",
        DRILLYARD_SCORER="secret_share",
        DRILLYARD_TEXT_TOOL="say",
        DRILLYARD_CURRICULUM='{"budgets": [1, 2], "steps_per_stage": 1}',
        DRILLYARD_RETRY_BACKOFF="0.01",
        DRILLYARD_TIMINGS=str(paths["timings"]),
        DRILLYARD_CAPTURE=str(paths["capture"]),
    )
    cmd = [
        sys.executable, "-m", "swift.cli.rlhf", "--rlhf_type", "grpo",
        "--model", str(tiny_model_dir), "--model_type", "qwen2", "--template", "qwen2_5",
        "--tuner_type", "full", "--torch_dtype", "float32",
        "--dataset", str(data), "--split_dataset_ratio", "0",
        "--external_plugins", SWIFT_PLUGIN, CAPTURE_PLUGIN,
        "--multi_turn_scheduler", "drillyard", "--reward_funcs", "drillyard",
        "--callbacks", "drillyard", "--max_turns", "2", "--use_vllm", "false",
        "--num_generations", "4", "--per_device_train_batch_size", "12",
        "--gradient_accumulation_steps", "1", "--max_completion_length", "6",
        "--max_length", "256", "--max_steps", "2", "--beta", "0.04", "--logging_steps", "1",
        "--scale_rewards", "gdpo",
        "--save_strategy", "no", "--report_to", "none", "--dataloader_num_workers", "0",
        "--dataset_num_proc", "1", "--output_dir", str(paths["out"]),
    ]  # fmt: skip
    with paths["log"].open("wb") as log:
        proc = subprocess.run(
            cmd, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, timeout=280
        )
    tail = "\n".join(paths["log"].read_text(errors="replace").splitlines()[-30:])
    assert proc.returncode == 0, tail
    return paths


async def test_two_grpo_steps_through_the_plugin(swift_run: dict[str, Path]) -> None:
    captured = [json.loads(line) for line in swift_run["capture"].read_text().splitlines()]
    trained = [c for c in captured if not c["prompt_only"]]
    assert trained, "swift encoded no training sample"
    async with TraceStore(swift_run["store"]) as store:
        run = await store.run("grpo-test")
        assert run.status == "finished"  # closed at the trainer's exit
        assert run.config["metadata"]["curriculum"]["budgets"] == [1, 2]
        rollouts = await store.rollouts("grpo-test")
        assert len(rollouts) == 2 * 12  # every sample of both steps, none duplicated
        by_id = {r.id: r for r in rollouts}
        assert {r.state for r in rollouts} <= {"done", "failed", "error"}

        for r in rollouts:
            step = int(r.task_id.rsplit("@", 1)[1])
            kind = r.task_id.split("@")[0].removeprefix("secret-")
            attempts = await store.attempts(r.id)
            msgs = await store.messages(r.id)
            assert all(m.headers["step"] == step for m in msgs)
            assert all(m.headers["turn_budget"] == step + 1 for m in msgs)  # the curriculum
            assert r.policy_version == f"step-{step}"
            if kind == "always":
                assert r.state == "error" and r.reward is None
                assert len(attempts) == 3 and all(a.state == "error" for a in attempts)
            elif step == 0:  # a one-turn budget: the secret comes too late
                assert r.state == "failed" and r.reward == 0.0 and r.turns == 1
            else:  # two turns; "failed" when the random model wrote a broken tool call
                assert r.state in ("done", "failed") and r.turns == 2 and r.reward is not None
        retried = [r for r in rollouts if r.task_id.startswith("secret-once@")]
        tries = [len(await store.attempts(r.id)) for r in retried]
        assert sorted(tries) == [1, 1, 1, 1, 1, 1, 2, 2]  # one retried sample per step

        seen = set()
        for c in trained:
            r = by_id[c["rollout_id"]]
            seen.add(r.id)
            trajectory = await load_trajectory(store, r.id)  # its last attempt
            assert trajectory is not None
            sampled = [t.token_ids for t in trajectory.turns]
            assert sampled == c["response_token_ids"]
            runs = labelled_runs(c["labels"])
            if r.state == "error":  # masked out (all but one token, see masked_out)
                assert c["masked"] and sum(map(sum, c["response_loss_mask"])) == 1
                assert len(runs) == 1 and runs[0][0] == sampled[-1][-1]
                continue
            assert c["response_loss_mask"] == [[1] * len(ids) for ids in sampled]
            assert len(runs) == len(sampled)
            for got, ids in zip(runs, sampled, strict=True):
                assert got[: len(ids)] == ids  # the sampled ids, exactly
                assert set(got[len(ids) :]) <= {IM_END, NEWLINE}  # swift's turn suffix only
        assert seen == set(by_id)  # swift trained on every recorded rollout

    # the rewards swift logged are the store's (a masked sample counts 0 in swift's mean)
    logs = [json.loads(x) for x in (next(swift_run["out"].glob("v*")) / "logging.jsonl")
            .read_text().splitlines()]  # fmt: skip
    logged = [e["reward"] for e in logs if "reward" in e and "train_runtime" not in e]
    for step, value in enumerate(logged):
        rewards = [r.reward or 0.0 for r in rollouts if r.task_id.endswith(f"@{step}")]
        assert float(value) == pytest.approx(sum(rewards) / len(rewards), abs=1e-4)
    timings = [json.loads(x) for x in swift_run["timings"].read_text().splitlines()]
    assert [t["step"] for t in timings] == [0, 1]
    assert all(t["rollout_s"] > 0 and t["train_s"] > 0 for t in timings)
