"""Drillyard inside ms-swift GRPO: give this file to ``--external_plugins``.

    swift rlhf --rlhf_type grpo ... \\
        --external_plugins $(python -c "import engine.integrations as i; print(i.SWIFT_PLUGIN)") \\
        --multi_turn_scheduler drillyard --reward_funcs drillyard --callbacks drillyard \\
        --max_turns N

It registers three things in swift's registries, all named ``drillyard``:

- a `MultiTurnScheduler`: each sample's environment lives on a Drillyard
  backend; every turn is recorded in the trace store (one run per training
  job, the training step in every message's headers and payload); each turn
  hands swift the exact sampled ``response_token_ids``, a
  ``response_loss_mask`` (environment observations go into the conversation
  as ``tool``/``user`` messages and are never trained on; a sample whose
  infrastructure failed after its retries ends with a mask that is zero but
  for its last token, see `engine.integrations.swift_protocol.masked_out`), and the
  ``rollout_logprobs`` when the engine gave them;
- an ORM reward that reads each rollout's reward back from the store (scored
  by Drillyard's scorer; None, i.e. NaN, for a masked sample; with
  ``--scale_rewards gdpo`` a NaN reward gets advantage 0 and stays out of its
  group's baseline);
- a trainer callback that tells the scheduler the global step (for the
  turn-budget curriculum and the records) and writes per-step rollout and
  training seconds when ``DRILLYARD_TIMINGS`` is set.

Configuration: environment variables, see `engine.integrations.config`.
A reply with tool calls (Hermes ``<tool_call>`` text or parsed calls) steps the
environment once per call; a plain reply is the final answer, unless
``DRILLYARD_TEXT_TOOL`` names a tool that takes it (text-action environments).
Without ``--callbacks drillyard`` the "step" is the count of rollout batches.
Dataset rows: ``{"messages": [{"role": "user", "content": ...}], "task_id": ...,
"ground_truth": ..., "task_metadata": "<JSON>"}``; swift's ``--max_turns`` must
be at least the curriculum's longest budget.

Server mode (``--use_vllm true --vllm_mode server --vllm_server_base_url`` of a
Drillyard rollout server, `engine.integrations.rollout_server`): the rollouts,
their rewards and their token ids come from the server; this file then only
replaces swift's NCCL weight sync (`serve_weights`: the trainer writes a
checkpoint after every optimizer step and the server reloads it into every
vLLM server of the policy), and the callback sends each step's timings to the
server's store. It is written against ms-swift `PINNED_SWIFT`: another version
is refused at import, before training starts.
"""

from __future__ import annotations

import atexit
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import requests
import structlog
import swift
from swift.callbacks import TrainerCallback, callbacks_map
from swift.rewards.orm import ORM, orms
from swift.rlhf_trainers.rollout_mixin import RolloutTrainerMixin
from swift.rollout.multi_turn import MultiTurnScheduler, multi_turns

from engine.environment import ToolCall
from engine.integrations.feed import Feed
from engine.integrations.swift_protocol import PINNED_SWIFT
from engine.policy.toolcalls import make_call
from engine.training import secret_env

log = structlog.get_logger("drillyard.swift")

if swift.__version__ != PINNED_SWIFT:
    raise RuntimeError(
        f"the drillyard plugin is written against ms-swift {PINNED_SWIFT}, and ms-swift "
        f"{swift.__version__} is installed: its private trainer and rollout protocol may have "
        f"moved. Install ms-swift=={PINNED_SWIFT} (pip install -e '.[swift]')"
    )
PATCHED = ("_move_model_to_vllm", "_fast_infer", "_wait_queue")
"""The trainer methods server mode replaces or wraps (checked by the contract test)."""
for _name in PATCHED:
    if not callable(getattr(RolloutTrainerMixin, _name, None)):
        raise RuntimeError(
            f"ms-swift {swift.__version__}: swift.rlhf_trainers.rollout_mixin."
            f"RolloutTrainerMixin.{_name} is gone; the drillyard plugin needs it"
        )
KEEP_CHECKPOINTS = 2

_FEED: Feed | None = None
_FEED_LOCK = threading.Lock()


def get_feed() -> Feed:
    """The training job's one feed, opened on first use, closed at exit."""
    global _FEED
    with _FEED_LOCK:
        if _FEED is None or _FEED.closed:
            secret_env.register()
            _FEED = Feed()
            atexit.register(_FEED.close)
        return _FEED


def _tool_calls(message: Any) -> list[ToolCall]:
    out = []
    for i, call in enumerate(getattr(message, "tool_calls", None) or []):
        fn = getattr(call, "function", None)
        name = getattr(fn, "name", None) or ""
        arguments = getattr(fn, "arguments", None)
        out.append(make_call(str(getattr(call, "id", None) or f"call_{i}"), name, arguments))
    return out


def _logprobs(choice: Any) -> list[float]:
    raw = getattr(choice, "logprobs", None) or {}
    return [float(item["logprob"]) for item in raw.get("content") or []]


class DrillyardScheduler(MultiTurnScheduler):  # type: ignore[misc]
    """Environment steps on a Drillyard backend, every turn in the trace store."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.feed = get_feed()
        self._results: dict[str, Any] = {}

    async def on_trajectory_start(self, requests: list[Any]) -> None:
        rows = [(r.uuid, list(r.messages), dict(r.data_dict or {})) for r in requests]
        firsts = await self.feed.loop.await_(self.feed.start_many(rows, self.max_turns))
        for request, messages in zip(requests, firsts, strict=True):
            request.messages = messages

    async def on_turn_end(self, infer_request: Any, response_choice: Any, current_turn: int) -> Any:
        result = await self.feed.loop.await_(
            self.feed.turn_end(
                infer_request.uuid,
                current_turn,
                response_choice.message.content,
                _tool_calls(response_choice.message),
                list(response_choice.token_ids or []),
                _logprobs(response_choice),
                response_choice.finish_reason,
            )
        )
        self._results[infer_request.uuid] = result
        out: dict[str, Any] = {
            "done": result.done,
            "rollout_infos": {"drillyard": result.infos},
            "response_token_ids": result.token_ids,
            "response_loss_mask": result.loss_mask,
        }
        if result.logprobs and sum(result.loss_mask) == len(result.logprobs):
            out["rollout_logprobs"] = result.logprobs
        return out

    def step(self, infer_request: Any, response_choice: Any, current_turn: int) -> dict[str, Any]:
        result = self._results.pop(infer_request.uuid)
        infer_request.messages.extend(result.next_messages)
        out: dict[str, Any] = {
            "infer_request": infer_request,
            "response_token_ids": result.token_ids,
            "response_loss_mask": result.loss_mask,
        }
        if result.logprobs and sum(result.loss_mask) == len(result.logprobs):
            out["rollout_logprobs"] = result.logprobs
        return out


class DrillyardReward(ORM):  # type: ignore[misc]
    """Each sample's reward as recorded in the trace store (None for masked samples)."""

    def __call__(self, completions: list[Any], **kwargs: Any) -> list[float | None]:
        infos = [(i or {}).get("drillyard", {}) for i in kwargs.get("rollout_infos") or []]
        if len(infos) != len(completions) or not all(i.get("rollout_id") for i in infos):
            raise RuntimeError(
                "the drillyard reward needs rollouts from drillyard: add "
                "--multi_turn_scheduler drillyard (colocate) or point --vllm_server_base_url "
                "at `python -m engine serve-rollouts` (server mode)"
            )
        if all(i.get("source") == "rollout-server" for i in infos):  # scored there
            return [i["reward"] for i in infos]
        feed = get_feed()
        return feed.loop.call(feed.rewards([i["rollout_id"] for i in infos]))


class DrillyardCallback(TrainerCallback):  # type: ignore[misc]
    """Tells the feed the global step; records rollout vs training time per step
    (in server mode: in the rollout server's store, with the weight-sync time)."""

    def __init__(self, args: Any, trainer: Any) -> None:
        super().__init__(args, trainer)
        self.trainer = trainer
        self._began = 0.0

    @property
    def server_mode(self) -> bool:
        return _server_urls(self.trainer) is not None

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._began = time.time()
        if not self.server_mode:
            get_feed().global_step = int(state.global_step)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        step, ended = int(state.global_step) - 1, time.time()
        urls = _server_urls(self.trainer)
        if urls is not None:
            timing = getattr(self.trainer, "_drillyard_timing", {}).pop(step, {})
            step_s = ended - self._began
            wait_s = timing.get("rollout_wait_s", 0.0)
            row = {"step": step, "step_s": round(step_s, 4),
                   "train_s": round(max(0.0, step_s - wait_s), 4), **timing}  # fmt: skip
            for url in urls:
                _post(url, "/drillyard/steps/", row)
            return
        feed = get_feed()
        row = feed.step_timing(step, self._began, ended)
        feed.global_step = int(state.global_step)
        log.debug("step timing", **row)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not self.server_mode:
            get_feed().flush()


# ---- server mode: weights back into the policy's vLLM servers ---------------


def _server_urls(trainer: Any) -> list[str] | None:
    """The Drillyard rollout servers a server-mode trainer talks to (None: colocate)."""
    args = getattr(trainer, "args", None)
    client = getattr(trainer, "vllm_client", None)
    if getattr(args, "vllm_mode", None) != "server" or client is None:
        return None
    return list(client.base_urls)


def _post(base_url: str, route: str, body: dict[str, Any], timeout: float = 900.0) -> Any:
    try:
        resp = requests.post(base_url + route, json=body, timeout=timeout)
    except requests.RequestException as exc:
        raise RuntimeError(f"drillyard rollout server {base_url}{route}: {exc}") from exc
    if resp.status_code != 200:
        raise RuntimeError(
            f"drillyard rollout server {base_url}{route} answered {resp.status_code}: {resp.text}"
        )
    return resp.json()


def weights_dir(args: Any) -> Path:
    """Where checkpoints for the policy go (``DRILLYARD_WEIGHTS_DIR``, else under
    the output dir); the vLLM servers must see the same path."""
    return Path(
        os.environ.get("DRILLYARD_WEIGHTS_DIR") or Path(args.output_dir, "drillyard-weights")
    )


def serve_weights(self: Any, skip_async_check: bool = False) -> None:
    """Replaces ``RolloutTrainerMixin._move_model_to_vllm`` (swift's NCCL sync):
    write a checkpoint of the policy, have the rollout server reload it into
    every vLLM server (pause → reload → reset prefix cache → resume)."""
    args = self.args
    if args.async_generate and not skip_async_check:
        self._wait_queue()
    if args.tuner_type != "full":
        raise RuntimeError(
            f"drillyard serves full checkpoints to vLLM; --tuner_type {args.tuner_type} is "
            "not supported in server mode: use --tuner_type full"
        )
    urls = _server_urls(self)
    if urls is None:
        raise RuntimeError("drillyard weight sync is for --vllm_mode server")
    if getattr(args, "multi_turn_scheduler", None):
        raise RuntimeError(
            "in server mode the drillyard rollout server runs the whole multi-turn rollout: "
            "drop --multi_turn_scheduler from swift rlhf"
        )
    step = int(self.state.global_step)
    began = time.perf_counter()
    if self.accelerator.is_main_process:
        root = weights_dir(args)
        folder = root / f"step-{step}"
        self.accelerator.unwrap_model(self.model).save_pretrained(folder, safe_serialization=True)
        saved = time.perf_counter() - began
        body = {"weights_path": str(folder), "step": step, "overlap": bool(args.async_generate)}
        for url in urls:
            _post(url, "/drillyard/weights/", body)
        timing = {"sync_save_s": round(saved, 4), "sync_s": round(time.perf_counter() - began, 4)}
        self.__dict__.setdefault("_drillyard_timing", {}).setdefault(step, {}).update(timing)
        old = sorted((p for p in root.glob("step-*") if p.name[5:].isdigit()),
                     key=lambda p: int(p.name[5:]))  # fmt: skip
        for stale in old[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(stale, ignore_errors=True)
    self.accelerator.wait_for_everyone()


_fast_infer = RolloutTrainerMixin._fast_infer


def timed_fast_infer(self: Any, samples: Any) -> Any:
    """``_fast_infer`` (the trainer waiting for its batch), timed for the step records."""
    began = time.perf_counter()
    try:
        return _fast_infer(self, samples)
    finally:
        step = int(self.state.global_step)
        timing = self.__dict__.setdefault("_drillyard_timing", {}).setdefault(step, {})
        waited = time.perf_counter() - began - timing.get("sync_s", 0.0)
        timing["rollout_wait_s"] = round(max(0.0, waited), 4)


RolloutTrainerMixin._move_model_to_vllm = serve_weights
RolloutTrainerMixin._fast_infer = timed_fast_infer


multi_turns["drillyard"] = DrillyardScheduler
orms["drillyard"] = DrillyardReward
callbacks_map["drillyard"] = DrillyardCallback
