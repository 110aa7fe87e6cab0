"""The part of ms-swift's rollout-server protocol that GRPO's server mode speaks.

``swift rlhf --rlhf_type grpo --use_vllm true --vllm_mode server`` talks HTTP
to a rollout server (swift's own is ``swift rollout``,
``swift/pipelines/infer/rollout.py``). Drillyard's rollout server answers the
same routes; this module holds the wire shapes, validated on the way in
(pydantic: a malformed batch is refused naming the field) and built on the
way out (`rollout_output`), with no import of swift itself.

The protocol is private to swift and moves between releases, so it is pinned:
`PINNED_SWIFT` is the version this was written against and checked by
`tests/training/test_swift_contract.py` against the installed swift.
"""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from engine.training.trajectory import Trajectory

PINNED_SWIFT = "4.6.0"
"""The ms-swift release whose rollout protocol and trainer internals this speaks."""

TRAINER_ROUTES = (
    ("GET", "/health"),
    ("GET", "/health/"),
    ("GET", "/get_world_size/"),
    ("POST", "/init_communicator/"),
    ("POST", "/close_communicator/"),
    ("POST", "/get_engine_type/"),
    ("POST", "/reset_prefix_cache/"),
    ("POST", "/reset_encoder_cache/"),
    ("POST", "/reset_mm_cache/"),
    ("POST", "/infer/"),
)
"""The routes of ``swift rollout`` that GRPO's trainer calls in server mode."""


class _Lenient(BaseModel):
    model_config = ConfigDict(extra="ignore")


class InferRequest(_Lenient):
    """One sample to roll out (swift's ``RolloutInferRequest``)."""

    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    data_dict: dict[str, Any] = Field(default_factory=dict)
    uuid: str | None = None


class RequestConfig(_Lenient):
    """Sampling settings of a batch (swift's ``RequestConfig``)."""

    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_k: int | None = None
    top_p: float | None = Field(default=None, gt=0, le=1)
    min_p: float | None = None
    repetition_penalty: float | None = None
    stop: list[str] | None = None
    seed: int | None = None
    n: int = Field(default=1, ge=1, le=1)
    structured_outputs_regex: str | None = None


class InferBatch(_Lenient):
    """The body of ``POST /infer/``."""

    infer_requests: list[InferRequest] = Field(min_length=1)
    request_config: RequestConfig = Field(default_factory=RequestConfig)


class BadRequest(ValueError):
    """A request the trainer sent that this server cannot serve (answered 4xx)."""


def parse_batch(body: Any) -> InferBatch:
    """Validate an ``/infer/`` body; `BadRequest` names every wrong field."""
    if body is not None and isinstance(body, dict) and body.get("request_config") is None:
        body = {k: v for k, v in body.items() if k != "request_config"}
    try:
        return InferBatch.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()
        )
        raise BadRequest(f"malformed /infer/ batch: {problems}") from exc


def engine_type() -> dict[str, Any]:
    """``POST /get_engine_type/``. The server runs whole multi-turn rollouts and
    answers one complete trajectory per request, so to the trainer each reply is
    a finished sample: ``enable_multi_turn`` is False. (True would also make
    swift 4.6 pass its ``trajectory_inputs`` dict to reward functions, and its
    warning for a sample whose rewards are all None, a masked one, then fails
    indexing that dict: ``rl_core/grpo_algorithm.py`` line 82.)"""
    return {
        "engine_type": "AsyncLLMEngine",
        "enable_multi_turn": False,
        "use_gym_env": False,
        "enable_lora": False,
    }


def _logprob_items(logprobs: list[float] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {
        "content": [
            {"token": "", "logprob": lp, "bytes": None, "top_logprobs": []} for lp in logprobs
        ]
    }


def masked_out(length: int) -> list[int]:
    """The loss mask of a sample whose infrastructure failed: nothing trained on but
    its last token, because ms-swift 4.6 (HF path) cannot batch a sample with no
    trainable token (``logits_to_keep`` then spans the whole sequence and the
    forward pass fails). Its reward is None, so with ``--scale_rewards gdpo`` its
    advantage is 0 and that token carries no policy gradient either."""
    mask = [0] * length
    if mask:
        mask[-1] = 1
    return mask


def chat_messages(trajectory: Trajectory, first: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The conversation as swift re-encodes it: the ``first`` messages (system and
    task), every assistant turn (whose content swift replaces with the token ids
    vLLM sampled), the observations between them, nothing after the last turn."""
    out = [dict(m) for m in first]
    for i, turn in enumerate(trajectory.turns):
        out.append({"role": "assistant", "content": turn.content or ""})
        if i + 1 < len(trajectory.turns):
            out.extend(dict(obs) for obs in turn.observations)
    return out


def rollout_output(
    *,
    messages: list[dict[str, Any]],
    token_ids: list[list[int]],
    loss_masks: list[list[int]],
    logprobs: list[list[float]] | None,
    prompt_token_ids: list[int] | None,
    finish_reason: str | None,
    model: str,
    infos: dict[str, Any],
) -> dict[str, Any]:
    """One ``RolloutOutput`` (swift ``infer_engine/protocol.py``): per assistant
    message of ``messages``, its token ids, loss mask and (when all are known)
    the logprobs of the ids the mask trains on."""
    completion = sum(len(i) for i in token_ids)
    prompt = len(prompt_token_ids or [])
    last_logprobs = logprobs[-1] if logprobs else None
    return {
        "response": {
            "model": model,
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": messages[-1]["content"]},
                    # swift's protocol knows only stop and length
                    "finish_reason": "length" if finish_reason == "length" else "stop",
                    "token_ids": token_ids[-1],
                    "logprobs": _logprob_items(last_logprobs),
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
            "prompt_token_ids": prompt_token_ids,
        },
        "messages": messages,
        "response_token_ids": token_ids,
        "response_loss_mask": loss_masks,
        "rollout_logprobs": logprobs or [],
        "rollout_infos": {"drillyard": infos},
    }
