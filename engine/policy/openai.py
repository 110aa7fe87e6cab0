"""An OpenAI-compatible chat client, for vLLM and any compatible server.

Its HTTP client is a `engine.policy.transport` (aiohttp, or pyreqwest where installed)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Self

import anyio
import orjson
import structlog

from engine.environment import ToolSpec
from engine.errors import ConfigError, NotRetryable, PolicyError
from engine.policy.base import Completion, SamplingParams
from engine.policy.tokens import Continuation, TokenContinuation, without_token_ids
from engine.policy.toolcalls import parse_hermes, parse_openai_tool_calls
from engine.policy.transport import (
    ClientName,
    Failure,
    Transport,
    open_transport,
    resolve_client,
)
from engine.resources import AsyncResource

__all__ = ["RETRY_STATUSES", "Failure", "OpenAIPolicy", "Post"]

log = structlog.get_logger("drillyard.policy")

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


Post = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
"""Sends one request body to a path of the API and returns the parsed JSON reply."""


class OpenAIPolicy(AsyncResource):
    """Chat completions from ``{base_url}/chat/completions``.

    One pooled HTTP client, ``http_client`` (None: ``$DRILLYARD_HTTP_CLIENT``, else
    ``"auto"``: pyreqwest where installed, else aiohttp; see
    `engine.policy.transport`), with kept-alive connections, no
    cookies and bodies encoded once with orjson; at most ``max_in_flight``
    requests at once; connection errors, 429 and 5xx are retried ``retries``
    times with jittered exponential backoff; every try has a ``timeout``
    deadline (the client's own, one timer a try). Tool calls come
    from the ``tool_calls`` field or, failing that, from Hermes ``<tool_call>``
    text. ``version`` is stamped on every completion (bump it after a weight reload).
    ``exact_tokens`` sends later turns as the exact token ids of the conversation so
    far (vLLM; see `engine.policy.tokens`), so what the model was conditioned on is
    what a trainer trains on; it implies ``return_token_ids``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_in_flight: int = 64,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        version: str | None = None,
        exact_tokens: bool = False,
        preflight_timeout: float = 10.0,
        http_client: ClientName | str | None = None,
    ) -> None:
        self.http_client = http_client
        self._client = resolve_client(http_client)  # an unknown or missing one fails here
        self.base_url = base_url.rstrip("/")
        self.root_url = self.base_url.removesuffix("/v1")
        self.exact_tokens = exact_tokens
        self._tokens = TokenContinuation(self.tokenize) if exact_tokens else None
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.version = version
        self.preflight_timeout = preflight_timeout
        self.max_in_flight = max_in_flight
        self._limit = asyncio.Semaphore(max_in_flight)  # no checkpoint when a permit is free
        self._transport: Transport | None = None
        self.requests = 0
        self.retried = 0

    def __getstate__(self) -> dict[str, Any]:
        """A copy for another process (a shard): settings only; it opens its own
        connections and counts its own requests."""
        state = dict(self.__dict__)
        state.update(_transport=None, _limit=None, requests=0, retried=0)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._limit = asyncio.Semaphore(self.max_in_flight)

    def describe(self) -> dict[str, Any]:
        """A JSON description from which `engine.config` can rebuild this policy."""
        return {
            "kind": "openai",
            "base_url": self.base_url,
            "model": self.model,
            "max_in_flight": self.max_in_flight,
            "timeout": self.timeout,
            "retries": self.retries,
            "exact_tokens": self.exact_tokens,
            "http_client": self.http_client or "auto",
        }

    @property
    def transport_name(self) -> Literal["aiohttp", "pyreqwest"]:
        """The HTTP client this policy's requests go through (``aiohttp``, ``pyreqwest``)."""
        return self._client

    async def __aenter__(self) -> Self:
        self._ensure_transport()
        return self

    async def aclose(self) -> None:
        """Close the connections; a later request opens a new client (another loop's, say)."""
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.aclose()

    def _ensure_transport(self) -> Transport:
        if self._transport is None:
            headers = {"Content-Type": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            self._transport = open_transport(
                self._client, max_connections=self.max_in_flight, timeout=self.timeout,
                headers=headers,
            )  # fmt: skip
        return self._transport

    async def preflight(self) -> None:
        """Check that a server answers at ``{base_url}/models`` (once, before a run).

        An unreachable server, a deadline passed or a refused API key is a
        `ConfigError` naming the URL and the fix, so a run fails within seconds
        instead of spending its retries on every rollout. A server without the
        route is let through; one that does not list ``model`` is logged."""
        url = self.base_url + "/models"
        where = f"policy at {self.base_url}"
        try:
            with anyio.fail_after(self.preflight_timeout):
                reply = await self._ensure_transport().request("GET", url)
        except TimeoutError as exc:
            raise ConfigError(
                where,
                f"GET {url} got no reply within {self.preflight_timeout}s",
                "check that the model server is up and not overloaded, or pass the right "
                "--policy-url (policy.base_url)",
            ) from exc
        if isinstance(reply, Failure):
            raise ConfigError(
                where,
                f"no model server answers GET {url} ({reply.reason})",
                "start it (e.g. `vllm serve MODEL --port 8000`) or pass the right "
                "--policy-url (policy.base_url), ending in /v1",
            )
        status, raw = reply.status, reply.body
        if status in (401, 403):
            raise ConfigError(
                where,
                f"GET {url} was refused: HTTP {status}",
                "pass the server's API key (api_key=; policy.api_key_env in a run config;"
                " --api-key-env for `engine eval`)",
            )
        if status != 200:
            log.info("policy preflight: no model list", url=url, status=status)
            return
        try:
            served = [str(m.get("id")) for m in orjson.loads(raw).get("data") or []]
        except (orjson.JSONDecodeError, AttributeError):
            return
        if served and self.model not in served:
            log.warning("model not listed by the server", model=self.model, served=served)

    def request_body(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None,
        params: SamplingParams,
        n: int,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": without_token_ids(messages),
            "n": n,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if tools:
            body["tools"] = tools
            body["tool_choice"] = "auto"
        if params.max_tokens is not None:
            body["max_tokens"] = params.max_tokens
        if params.seed is not None:
            body["seed"] = params.seed
        if params.logprobs:
            body["logprobs"] = True
            if params.top_logprobs:
                body["top_logprobs"] = params.top_logprobs
        if params.return_token_ids:
            body["return_token_ids"] = True
        if params.stop:
            body["stop"] = list(params.stop)
        body.update(params.extra)
        return body

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None = None,
        params: SamplingParams | None = None,
        n: int = 1,
    ) -> list[Completion]:
        return await self.complete_via(self._post, messages, tools, params, n)

    async def complete_via(
        self,
        post: Post,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None = None,
        params: SamplingParams | None = None,
        n: int = 1,
        tokens: TokenContinuation | None = None,
    ) -> list[Completion]:
        """`complete`, with the request sent by ``post(path, body)``: for a caller
        that routes and retries requests itself (`MultiServerPolicy`, which also
        brings its own ``tokens`` for exact multi-turn prompts)."""
        body = self.request_body(messages, tools, params or SamplingParams(), n)
        cont = None
        tokens = tokens or self._tokens
        if tokens is not None:
            body["return_token_ids"] = True
            cont = await tokens.continuation(messages, tools)
            if cont is not None:
                body["kv_transfer_params"] = {"prompt_token_ids": cont.prompt_token_ids}
                if cont.closing is not None:
                    body["prompt_logprobs"] = 0
        version = self.version  # the weights the request was sent to, not those after a reload
        data = await post("/chat/completions", body)
        completions = self.parse_response(data, version)
        if cont is not None and cont.closing is not None:
            closing = _closing_logprobs(data, cont)
            for c in completions:
                c.closing, c.closing_logprobs = list(cont.closing), closing
        return completions

    async def end_of_turn_token(self) -> int | None:
        """The id that ends an assistant turn in the chat template (exact_tokens only)."""
        suffix = await self._tokens.assistant_suffix() if self._tokens else None
        return suffix[0] if suffix else None

    async def tokenize(
        self,
        *,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
        add_generation_prompt: bool = True,
        tools: list[ToolSpec] | None = None,
    ) -> list[int]:
        """Token ids from the server's ``/tokenize`` (vLLM): a conversation through
        its chat template, or a plain text without special tokens."""
        body: dict[str, Any] = {"model": self.model}
        if messages is not None:
            body.update(messages=messages, add_generation_prompt=add_generation_prompt)
            if tools:
                body["tools"] = tools
        else:
            body.update(prompt=prompt or "", add_special_tokens=False)
        data = await self._post("/tokenize", body, root=True)
        return [int(t) for t in data.get("tokens") or []]

    def _url(self, path: str, root: bool) -> str:
        return (self.root_url if root else self.base_url) + path

    async def _post(self, path: str, body: dict[str, Any], *, root: bool = False) -> dict[str, Any]:
        url = self._url(path, root)
        data = orjson.dumps(body)  # once, for every try
        last = "no attempt made"
        async with self._limit:
            for attempt in range(self.retries + 1):
                if attempt:
                    self.retried += 1
                    await anyio.sleep(self.retry_delay(attempt))
                result = await self._try(url, data)
                if not isinstance(result, Failure):
                    return result
                last = result.reason
                if result.status is not None:
                    log.debug("policy retry", status=result.status, attempt=attempt)
        raise PolicyError(f"model server at {url} failed after {self.retries + 1} tries: {last}")

    def retry_delay(self, attempt: int) -> float:
        """The jittered exponential backoff before retry number ``attempt`` (1, 2, …)."""
        delay = min(self.max_backoff, self.backoff * 2.0 ** (attempt - 1))
        return delay * (0.5 + random.random() / 2)

    async def post_once(
        self, path: str, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> dict[str, Any] | Failure:
        """One try under the in-flight limit and the ``timeout``, no retry: the
        parsed JSON reply, or the `Failure` a retry may absorb. A refused request
        (4xx other than `RETRY_STATUSES`) raises `NotRetryable`."""
        async with self._limit:
            return await self._try(self._url(path, False), orjson.dumps(body), headers)

    async def _try(
        self, url: str, data: bytes, headers: dict[str, str] | None = None
    ) -> dict[str, Any] | Failure:
        """One try through the transport (which bounds it, body read included, and maps
        its client's errors); what the status means is decided here, for every client."""
        self.requests += 1
        reply = await self._ensure_transport().request("POST", url, data, headers)
        if isinstance(reply, Failure):
            return reply
        status = reply.status
        if status == 200:
            try:
                parsed: dict[str, Any] = orjson.loads(reply.body)
                return parsed
            except orjson.JSONDecodeError:
                return Failure(f"200 with a body that is not JSON: {reply.head(200)!r}")
        detail = reply.head(500)
        if status in RETRY_STATUSES:
            return Failure(f"HTTP {status}: {detail}", status=status)
        raise NotRetryable(f"model server refused the request: HTTP {status}: {detail}")

    def parse_response(self, data: dict[str, Any], version: str | None = None) -> list[Completion]:
        usage = {k: v for k, v in (data.get("usage") or {}).items() if isinstance(v, int)}
        prompt_ids = data.get("prompt_token_ids")
        out: list[Completion] = []
        for index, choice in enumerate(data.get("choices") or []):
            msg = choice.get("message") or {}
            content = msg.get("content")
            calls = parse_openai_tool_calls(msg.get("tool_calls"))
            if not calls and isinstance(content, str) and "<tool_call>" in content:
                content, calls = parse_hermes(content, id_prefix=f"call_{index}")
            lp = choice.get("logprobs") or {}
            content_lp = lp.get("content") or None
            logprobs = [t.get("logprob") for t in content_lp or []] or None
            out.append(
                Completion(
                    content=content,
                    tool_calls=calls,
                    finish_reason=choice.get("finish_reason"),
                    token_ids=choice.get("token_ids"),
                    prompt_token_ids=prompt_ids or choice.get("prompt_token_ids"),
                    logprobs=logprobs,
                    usage=usage,
                    model=data.get("model"),
                    policy_version=version if version is not None else self.version,
                    logprobs_content=content_lp,
                )
            )
        if not out:
            raise PolicyError(f"model server returned no choices: {str(data)[:300]}")
        return out


def _closing_logprobs(data: dict[str, Any], cont: Continuation) -> list[float] | None:
    """The logprobs of the closing tokens, from the reply's ``prompt_logprobs``."""
    assert cont.closing is not None
    start, end = cont.closing
    rows = data.get("prompt_logprobs") or []
    out: list[float] = []
    for pos in range(start, end):
        row = rows[pos] if pos < len(rows) else None
        entry = (row or {}).get(str(cont.prompt_token_ids[pos]))
        if not isinstance(entry, dict) or not isinstance(entry.get("logprob"), int | float):
            return None
        out.append(float(entry["logprob"]))
    return out
