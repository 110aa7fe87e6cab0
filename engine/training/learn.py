"""A GRPO loop that learns on CPU: ms-swift trains on rollouts Drillyard owns.

    python -m engine.bench learn [--steps 120] [--mode server|colocate] [--out bench/results]

Trains a tiny random Qwen2 model (built locally) with real GRPO steps in
ms-swift on the two-turn `secret_env`.

- ``--mode server`` (the default): the policy is served by a real vLLM (CPU)
  server; ``python -m engine serve-rollouts`` runs every batch's rollouts
  through the engine against it, with token-exact prompts; swift trains in
  server mode with ``--async_generate`` (the next batch rolls out while the
  current step trains) and rollout importance sampling on; after every
  optimizer step the weights go back into vLLM by checkpoint reload. Then a
  short second run without overlap measures the wall time per step without it.
- ``--mode colocate``: swift generates with its own engine and only the
  environment steps go through Drillyard (the simple path).

Afterwards it reads the mean reward per step, and per step the rollout,
training and weight-sync seconds and the policy-version lag, back from the
store, and writes ``learn.png``, ``learn.json`` and ``learn.md`` under
``--out``. Exit status 0 when the reward rose from ≤ ``--start-max`` to
≥ ``--end-min`` (first and last ``--window`` steps), else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from engine.integrations import SWIFT_PLUGIN
from engine.store import TraceStore
from engine.training.secret_env import secret_tasks, swift_rows

SYSTEM_PROMPT = "Repeat the word."


def _support(name: str) -> Any:
    """A module of a repository checkout's test support (the tiny model, vLLM)."""
    try:
        return importlib.import_module(f"tests.support.{name}")
    except ImportError as exc:
        raise ConfigError(
            "learn", f"tests.support.{name} is only in a checkout of drillyard",
            "run from the repository root",
        ) from exc  # fmt: skip


def build_model(model_dir: Path, seed: int = 0) -> Path:
    """The tiny test model (a repository checkout's ``tests.support.tiny_model``)."""
    path: Path = _support("tiny_model").make_tiny_model(model_dir, seed=seed)
    return path


def swift_command(
    args: argparse.Namespace, model: Path, data: Path, out: Path, steps: int
) -> list[str]:
    cmd = [
        sys.executable, "-m", "swift.cli.rlhf",
        "--rlhf_type", "grpo", "--model", str(model), "--model_type", "qwen2",
        "--template", "qwen2_5", "--tuner_type", "full", "--torch_dtype", "float32",
        "--dataset", str(data), "--split_dataset_ratio", "0",
        "--external_plugins", SWIFT_PLUGIN, "--reward_funcs", "drillyard",
        "--callbacks", "drillyard",
        "--num_generations", str(args.generations),
        "--per_device_train_batch_size", str(args.batch),
        "--gradient_accumulation_steps", "1",
        "--max_completion_length", str(args.completion_length), "--max_length", "256",
        "--max_steps", str(steps), "--learning_rate", str(args.lr),
        "--beta", str(args.beta), "--temperature", "1.0", "--seed", str(args.seed),
        "--logging_steps", "10", "--save_strategy", "no", "--report_to", "none",
        "--dataloader_num_workers", "0", "--dataset_num_proc", "1",
        "--output_dir", str(out),
    ]  # fmt: skip
    if args.mode == "colocate":
        return [*cmd, "--multi_turn_scheduler", "drillyard", "--max_turns", "2",
                "--use_vllm", "false"]  # fmt: skip
    return cmd


def server_flags(url: str, overlap: bool) -> list[str]:
    return [
        "--use_vllm", "true", "--vllm_mode", "server", "--vllm_server_base_url", url,
        "--vllm_server_pass_dataset", "true", "--vllm_server_timeout", "120",
        "--vllm_server_group_port", str(_free_port()),
        "--async_generate", "true" if overlap else "false",
        "--rollout_importance_sampling_mode", "token_truncate",
    ]  # fmt: skip


async def per_step(store_path: Path, run_id: str) -> tuple[dict[int, list[float]], list[Any]]:
    """Rewards per training step (from the rollouts) and the step records of a run."""
    rewards: dict[int, list[float]] = {}
    async with TraceStore(store_path) as store:
        for r in await store.rollouts(run_id):
            step = int(r.task_id.rsplit("@", 1)[1])
            if r.reward is not None and r.state in ("done", "failed"):
                rewards.setdefault(step, []).append(r.reward)
        steps = [s.data | {"step": s.step} for s in await store.train_steps(run_id)]
    return dict(sorted(rewards.items())), steps


def plot(path: Path, steps: list[int], means: list[float], timings: list[dict[str, Any]],
         mode: str) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(8, 9), sharex=True,
                                        gridspec_kw={"height_ratios": [3, 3, 1]})  # fmt: skip
    ax1.plot(steps, means, lw=0.6, alpha=0.5, label="mean reward per step")
    w = max(1, len(means) // 25)
    smooth = [sum(means[max(0, i - w + 1) : i + 1]) / len(means[max(0, i - w + 1) : i + 1])
              for i in range(len(means))]  # fmt: skip
    ax1.plot(steps, smooth, lw=2, label=f"moving average ({w} steps)")
    ax1.set_ylabel("reward (from the trace store)")
    ax1.set_ylim(-0.02, 1.02)
    ax1.legend(loc="upper left")
    title = ("swift GRPO (server mode) on Drillyard's rollouts, vLLM on CPU"
             if mode == "server" else "swift GRPO (colocate) through Drillyard")  # fmt: skip
    ax1.set_title(f"{title}, tiny Qwen2, secret-word env")
    ts = [t["step"] for t in timings]
    wait = [t.get("rollout_wait_s", t.get("rollout_s", 0.0)) for t in timings]
    train = [t.get("train_s", 0.0) for t in timings]
    sync = [t.get("sync_s", 0.0) for t in timings]
    ax2.bar(ts, wait, width=1.0, label="trainer waits for rollouts")
    ax2.bar(ts, train, bottom=wait, width=1.0, label="training")
    ax2.bar(ts, sync, bottom=[a + b for a, b in zip(wait, train, strict=True)], width=1.0,
            label="weight sync (checkpoint + reload)")  # fmt: skip
    if any("rollout_s" in t for t in timings) and mode == "server":
        ax2.plot(ts, [t.get("rollout_s", 0.0) for t in timings], color="black", lw=1,
                 label="batch rollout time (server)")  # fmt: skip
    ax2.set_ylabel("seconds per step")
    ax2.legend(loc="upper right", fontsize=8)
    ax3.step(ts, [t.get("lag_max") or 0 for t in timings], where="mid")
    ax3.set_ylabel("policy lag")
    ax3.set_xlabel("training step")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m engine.bench learn",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--mode", choices=("server", "colocate"), default="server")
    p.add_argument("--steps", type=int, default=120, help="GRPO steps (default 120)")
    p.add_argument(
        "--compare-steps",
        type=int,
        default=20,
        help="server mode: steps of the run without overlap (0: skip)",
    )
    p.add_argument("--batch", type=int, default=32, help="samples per step (default 32)")
    p.add_argument("--generations", type=int, default=8, help="samples per task (default 8)")
    p.add_argument("--completion-length", type=int, default=4, help="tokens per turn (4)")
    p.add_argument("--lr", type=float, default=3e-3, help="learning rate (3e-3)")
    p.add_argument("--beta", type=float, default=0.1, help="KL coefficient (0.1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", type=Path, help="model dir (default: build the tiny model)")
    p.add_argument("--work-dir", type=Path, help="keep the store, logs and data here")
    p.add_argument("--out", type=Path, default=Path("bench/results"), help="results folder")
    p.add_argument("--name", default="learn", help="results file stem (default learn)")
    p.add_argument("--window", type=int, default=10, help="steps averaged at start and end")
    p.add_argument("--start-max", type=float, default=0.2)
    p.add_argument("--end-min", type=float, default=0.6)
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds before giving up")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(argv or [])
    tmp = None if args.work_dir else tempfile.TemporaryDirectory(prefix="drillyard-learn-")
    work = Path(args.work_dir or (tmp.name if tmp else "."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        return _run(args, work)
    finally:
        if tmp is not None:
            tmp.cleanup()


def _env(work: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra or {})
    env.update(
        CUDA_VISIBLE_DEVICES="", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false", DRILLYARD_WEIGHTS_DIR=str(work / "weights"),
        PYTHONPATH=os.pathsep.join([str(Path.cwd()), env.get("PYTHONPATH", "")]),
    )  # fmt: skip
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def rollout_server(policy_url: str, store: Path, run_id: str, log: Path) -> Iterator[str]:
    """``python -m engine serve-rollouts`` in a subprocess; yields its URL."""
    port = _free_port()
    cmd = [
        sys.executable, "-m", "engine", "serve-rollouts", "--policy-url", policy_url,
        "--model", "tiny", "--env", "secret_word", "--scorer", "secret_share",
        "--text-tool", "say", "--system-prompt", SYSTEM_PROMPT, "--max-turns", "2",
        "--store", str(store), "--run-id", run_id, "--port", str(port),
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=_env(log.parent))
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the rollout server did not start; see {log}") from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _train(
    cmd: list[str], work: Path, log: Path, timeout: float, env: dict[str, str] | None = None
) -> float:
    t0 = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.run(cmd, env=_env(work, env), stdout=out, stderr=subprocess.STDOUT,
                              timeout=timeout, check=False)  # fmt: skip
    if proc.returncode != 0:
        tail = log.read_text(errors="replace").splitlines()[-40:]
        raise RuntimeError("\n".join(tail) + f"\nswift exited with {proc.returncode}")
    return time.monotonic() - t0


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def _mean_of(timings: list[dict[str, Any]], key: str, first: int = 0) -> float | None:
    """The mean of ``key`` over the steps from ``first`` on that recorded it."""
    return _mean([t[key] for t in timings if key in t and t["step"] >= first])


def _step_wall(timings: list[dict[str, Any]], steps: int) -> float | None:
    """Mean wall seconds per step over steps 1 … ``steps - 1`` (step 0 warms up)."""
    return _mean([t["step_s"] for t in timings if 0 < t["step"] < steps and "step_s" in t])


def _run(args: argparse.Namespace, work: Path) -> int:
    t0 = time.monotonic()
    model = args.model or build_model(work / "tiny-model")
    data = work / "secret.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in swift_rows(secret_tasks(64))))
    store_path = work / "learn.db"
    store_path.unlink(missing_ok=True)
    run_id = f"learn-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"training {args.steps} GRPO steps ({args.mode} mode; logs in {work}) ...", flush=True)
    compare: dict[str, Any] = {}
    if args.mode == "colocate":
        cmd = swift_command(args, model, data, work / "swift-out", args.steps)
        env_vars = {
            "DRILLYARD_STORE": str(store_path), "DRILLYARD_RUN_ID": run_id,
            "DRILLYARD_ENV": "secret_word", "DRILLYARD_SCORER": "secret_share",
            "DRILLYARD_TEXT_TOOL": "say", "DRILLYARD_SYSTEM_PROMPT": SYSTEM_PROMPT,
        }  # fmt: skip
        swift_s = _train(cmd, work, work / "swift.log", args.timeout, env_vars)
    else:
        vllm_mod = _support("vllm_server")
        with vllm_mod.VLLMServer(model, log_dir=work) as vllm:
            with rollout_server(vllm.base_url, store_path, run_id, work / "server.log") as url:
                cmd = swift_command(args, model, data, work / "swift-out", args.steps)
                swift_s = _train([*cmd, *server_flags(url, overlap=True)], work,
                                 work / "swift.log", args.timeout)  # fmt: skip
            if args.compare_steps:
                compare = _without_overlap(args, model, data, work, vllm)
    rewards, timings = asyncio.run(per_step(store_path, run_id))
    trained = [s for s in rewards if s < args.steps]
    means = [sum(rewards[s]) / len(rewards[s]) for s in trained]
    w = min(args.window, max(1, len(means) // 4))
    start, end = sum(means[:w]) / w, sum(means[-w:]) / w
    timings = [t for t in timings if t["step"] < args.steps]
    result: dict[str, Any] = {
        "command": " ".join(["python -m engine.bench learn", *args.argv]),
        "mode": args.mode,
        "steps": len(trained),
        "samples_per_step": args.batch,
        "reward_start": round(start, 4),
        "reward_end": round(end, 4),
        "window": w,
        "learned": start <= args.start_max and end >= args.end_min,
        "step_s_mean": _mean_of(timings, "step_s"),
        "rollout_s_mean": _mean_of(timings, "rollout_s"),
        "rollout_wait_s_mean": _mean_of(timings, "rollout_wait_s"),
        "train_s_mean": _mean_of(timings, "train_s"),
        "sync_s_mean": _mean_of(timings, "sync_s"),
        "sync_reload_s_mean": _mean_of(timings, "sync_reload_s"),
        "lag_max": max((t.get("lag_max") or 0 for t in timings), default=None),
        "swift_process_s": round(swift_s, 1),
        "wall_s": round(time.monotonic() - t0, 1),
        "rollouts_in_store": sum(len(v) for v in rewards.values()),
        **compare,
        "mean_reward_per_step": [round(m, 4) for m in means],
        "timings": timings,
    }
    if compare:
        n = args.compare_steps
        result["overlap_step_s"] = _step_wall(timings, n)
        with_, without = result["overlap_step_s"], compare["no_overlap_step_s"]
        if with_ and without:
            result["overlap_gain"] = round(without / with_, 3)
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / f"{args.name}.png"
    plot(png, trained, means, timings, args.mode)
    (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / f"{args.name}.md").write_text(
        f"# GRPO that learns, on CPU\n\nCommand: `{result['command']}`\n\n"
        f"![reward per step]({png.name})\n\n| metric | value |\n|---|---:|\n"
        + "".join(
            f"| {k} | {v} |\n"
            for k, v in result.items()
            if k not in ("mean_reward_per_step", "timings", "command")
        )
    )
    print(
        f"mean reward {start:.3f} (first {w} steps) -> {end:.3f} (last {w}); per step: "
        f"wall {result['step_s_mean']} s, training {result['train_s_mean']} s, rollouts "
        f"{result['rollout_s_mean']} s, sync {result['sync_s_mean']} s; "
        f"overlap gain {result.get('overlap_gain')}; plot {png}"
    )
    return 0 if result["learned"] else 1


def _without_overlap(
    args: argparse.Namespace, model: Path, data: Path, work: Path, vllm: Any
) -> dict[str, Any]:
    """A short run from the initial weights without overlap: wall seconds per step."""
    from engine.training.reload import WeightReloader

    async def reset() -> None:
        async with WeightReloader(vllm.base_url) as reloader:
            await reloader.reload(model, version="initial")

    asyncio.run(reset())
    store_path, run_id = work / "no-overlap.db", "learn-no-overlap"
    store_path.unlink(missing_ok=True)
    with rollout_server(vllm.base_url, store_path, run_id, work / "server-2.log") as url:
        cmd = swift_command(args, model, data, work / "swift-out-2", args.compare_steps)
        _train([*cmd, *server_flags(url, overlap=False)], work, work / "swift-2.log",
               args.timeout)  # fmt: skip
    _, timings = asyncio.run(per_step(store_path, run_id))
    return {
        "compare_steps": args.compare_steps,
        "no_overlap_step_s": _step_wall(timings, args.compare_steps),
        "no_overlap_rollout_wait_s": _mean_of(timings, "rollout_wait_s", first=1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
