"""The policy interface: chat messages and tools in, completions out."""

from __future__ import annotations

import inspect
from contextvars import ContextVar, Token
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

from engine.environment import ToolCall, ToolSpec
from engine.policy.tokens import TOKEN_IDS_KEY

affinity: ContextVar[str | None] = ContextVar("drillyard_policy_affinity", default=None)
"""Which conversation the model calls in this context belong to (a rollout's id).

Set by the rollout driver around every attempt (and by a gateway per request);
a policy over several servers keeps the calls of one key on one server (its
prefix cache). None: no conversation, any server will do."""


def policy_affinity(key: str | None) -> AffinityScope:
    """``with policy_affinity(rollout_id):`` the model calls inside belong to ``key``."""
    return AffinityScope(key)


class AffinityScope:
    """`policy_affinity`'s block: a class, not a generator (entered on every model call)."""

    __slots__ = ("_key", "_token")

    def __init__(self, key: str | None) -> None:
        self._key = key
        self._token: Token[str | None] | None = None

    def __enter__(self) -> None:
        if affinity.get() != self._key:  # the built-in loop's calls: already the attempt's
            self._token = affinity.set(self._key)

    def __exit__(self, *exc: object) -> None:
        if self._token is not None:
            affinity.reset(self._token)
            self._token = None


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-request sampling settings. ``extra`` is merged into the request body
    as-is (for vLLM: ``structured_outputs``, ``skip_special_tokens``, …)."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    return_token_ids: bool = False
    stop: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def with_seed(self, seed: int | None) -> SamplingParams:
        return replace(self, seed=seed)

    def to_dict(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "logprobs": self.logprobs,
            "top_logprobs": self.top_logprobs,
            "return_token_ids": self.return_token_ids,
            "stop": list(self.stop),
            "extra": self.extra,
        }


@dataclass(slots=True)
class Completion:
    """One choice of a chat completion, with what the server told about tokens."""

    content: str | None
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: str | None = None
    token_ids: list[int] | None = None
    prompt_token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    usage: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    policy_version: str | None = None
    # prompt positions [start, end) of end-of-turn tokens closing a previous turn
    # the model did not end itself, and their logprobs (`engine.policy.tokens`)
    closing: list[int] | None = None
    closing_logprobs: list[float] | None = None
    logprobs_content: list[dict[str, Any]] | None = None
    """The server's ``logprobs.content`` as it sent it (tokens, top logprobs), for
    the gateway to pass on to an app that asked; not recorded (``logprobs`` is)."""

    def assistant_message(self) -> dict[str, Any]:
        """The OpenAI-format assistant message to append to the conversation; it
        carries the turn's exact ids where the server gave them (`engine.policy.tokens`)."""
        msg: dict[str, Any] = {"role": "assistant", "content": self.content or ""}
        if self.tool_calls:
            msg["tool_calls"] = [c.to_openai() for c in self.tool_calls]
        if self.prompt_token_ids and self.token_ids:
            msg[TOKEN_IDS_KEY] = [*self.prompt_token_ids, *self.token_ids]
        return msg

    def to_dict(self) -> dict[str, Any]:
        return {
            "content": self.content,
            "tool_calls": [c.to_dict() for c in self.tool_calls],
            "finish_reason": self.finish_reason,
            "token_ids": self.token_ids,
            "prompt_token_ids": self.prompt_token_ids,
            "logprobs": self.logprobs,
            "usage": self.usage,
            "model": self.model,
            "policy_version": self.policy_version,
            "closing": self.closing,
            "closing_logprobs": self.closing_logprobs,
        }


@runtime_checkable
class Policy(Protocol):
    """Anything that completes a chat: a vLLM server, a scripted stub, an app's own model.

    Returns ``n`` choices. Raise `engine.errors.PolicyError` (an `InfraError`)
    for infrastructure faults so the scheduler retries the attempt.
    """

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None = None,
        params: SamplingParams | None = None,
        n: int = 1,
    ) -> list[Completion]: ...


@runtime_checkable
class Preflighted(Protocol):
    """A policy that can check, before any rollout starts, that it can serve.

    ``preflight`` returns when the policy is ready and raises
    `engine.errors.ConfigError` naming what is wrong (the URL) and the fix
    when it is not. A policy over several servers checks each of them.
    """

    async def preflight(self) -> None: ...


async def preflight(policy: object) -> None:
    """Run ``policy.preflight()`` when the policy has one (`Engine.run` and
    `resume` call this once, before any rollout starts); otherwise nothing."""
    check = getattr(policy, "preflight", None)
    if check is None:
        return
    result = check()
    if inspect.isawaitable(result):
        await result
