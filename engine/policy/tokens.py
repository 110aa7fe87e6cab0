"""Token-exact multi-turn prompts: what the model sampled is what it is conditioned on.

A chat server re-renders the whole conversation every turn, tokenizing the
model's earlier replies again from their text, and text does not always
tokenize back to the ids that were sampled (a reply cut mid-character, a rare
merge). Then turn 2 is generated from a context that is not the one a trainer
trains on. With token-exact prompts, the prompt of turn ``k + 1`` is::

    prompt_k + completion_k + suffix + tokens(observations) + generation prompt

where ``prompt_k + completion_k`` are the exact ids of the previous turn (the
server returned them), ``suffix`` is what the chat template puts after an
assistant reply (``<|im_end|>\\n`` for ChatML; left out where the completion
already ends with its first token, the end-of-turn token), and the rest is
the chat template's rendering of the messages after the reply: the tokens by
which rendering the conversation with them grows beyond rendering it without
them (both through the server's ``/tokenize``, so it is the server's own
template). vLLM takes the ids in ``kv_transfer_params.prompt_token_ids``.

A turn cut at its length limit did not sample its end-of-turn token; the
``suffix`` closes it anyway (as rendering would), and trainers train on those
closing tokens as part of the turn (ms-swift's "dynamic EOS"), so the next
request asks the server for their logprobs (``prompt_logprobs``) and the
completion carries them (`Continuation.closing`).

Where the template does not grow by appending (it rewrites earlier turns, as
templates that drop old reasoning do), `continuation` returns None and the
server renders the turn itself: the trajectory is then not token-exact, which
`engine.training.trajectory` detects from the recorded ids.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

TOKEN_IDS_KEY = "_token_ids"
"""Key of an assistant message that holds its turn's ``prompt + completion`` ids."""

Tokenize = Callable[..., Awaitable[list[int]]]
"""``await tokenize(messages=…, add_generation_prompt=…, tools=…)`` or ``(prompt=…)``."""

_PROBE_USER = {"role": "user", "content": "x"}
_PROBE_REPLY = "y"


def without_token_ids(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The messages as a chat server takes them (the token annotation removed)."""
    # one pass: a message without the annotation is passed on as it is
    return [
        m if TOKEN_IDS_KEY not in m else {k: v for k, v in m.items() if k != TOKEN_IDS_KEY}
        for m in messages
    ]


@dataclass(frozen=True, slots=True)
class Continuation:
    """The exact prompt of a later turn; ``closing`` is the ``[start, end)`` span of
    end-of-turn tokens that close a previous turn the model did not end itself."""

    prompt_token_ids: list[int]
    closing: tuple[int, int] | None = None


class TokenContinuation:
    """Builds the exact prompt ids of a later turn from the earlier turn's ids."""

    def __init__(self, tokenize: Tokenize) -> None:
        self.tokenize = tokenize
        self._suffix: list[int] | None = None
        self._probed = False
        self._probing = asyncio.Lock()

    async def assistant_suffix(self) -> list[int] | None:
        """The tokens the chat template puts after an assistant reply (None: unknown);
        found once, by rendering a probe conversation."""
        async with self._probing:
            if not self._probed:
                asked = await self.tokenize(messages=[_PROBE_USER], add_generation_prompt=True)
                full = await self.tokenize(
                    messages=[_PROBE_USER, {"role": "assistant", "content": _PROBE_REPLY}],
                    add_generation_prompt=False,
                )
                reply = await self.tokenize(prompt=_PROBE_REPLY)
                part = full[len(asked) :]
                if full[: len(asked)] == asked and part[: len(reply)] == reply:
                    self._suffix = part[len(reply) :]
                self._probed = True
        return self._suffix

    async def continuation(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> Continuation | None:
        """The prompt ids for the next turn, or None where they cannot be exact."""
        last = next(
            (i for i in range(len(messages) - 1, -1, -1) if TOKEN_IDS_KEY in messages[i]), None
        )
        if last is None or last == len(messages) - 1:
            return None
        earlier: list[int] = list(messages[last][TOKEN_IDS_KEY])
        suffix = await self.assistant_suffix()
        if suffix is None or not earlier:
            return None
        plain = without_token_ids(messages)
        upto = await self.tokenize(messages=plain[: last + 1], add_generation_prompt=False,
                                   tools=tools)  # fmt: skip
        grown = await self.tokenize(messages=plain, add_generation_prompt=True, tools=tools)
        if grown[: len(upto)] != upto:
            return None  # the template rewrites earlier turns: let the server render
        ended = bool(suffix) and earlier[-1] == suffix[0]
        glue = suffix[1:] if ended else suffix
        closing = None if ended or not glue else (len(earlier), len(earlier) + len(glue))
        return Continuation(earlier + glue + grown[len(upto) :], closing)
