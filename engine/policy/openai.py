"""An OpenAI-compatible chat client over aiohttp, for vLLM and any compatible server."""

from __future__ import annotations

import random
from typing import Any, Self

import aiohttp
import anyio
import orjson
import structlog

from engine.environment import ToolSpec
from engine.errors import NotRetryable, PolicyError
from engine.policy.base import Completion, SamplingParams
from engine.policy.toolcalls import parse_hermes, parse_openai_tool_calls
from engine.resources import AsyncResource, close_session

log = structlog.get_logger("drillyard.policy")

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class OpenAIPolicy(AsyncResource):
    """Chat completions from ``{base_url}/chat/completions``.

    One pooled aiohttp session; at most ``max_in_flight`` requests at once;
    connection errors, 429 and 5xx are retried ``retries`` times with jittered
    exponential backoff; every try has a ``timeout`` deadline. Tool calls come
    from the ``tool_calls`` field or, failing that, from Hermes ``<tool_call>``
    text. ``version`` is stamped on every completion (bump it after a weight reload).
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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.version = version
        self.max_in_flight = max_in_flight
        self._limit = anyio.Semaphore(max_in_flight)
        self._session: aiohttp.ClientSession | None = None
        self.requests = 0
        self.retried = 0

    def describe(self) -> dict[str, Any]:
        """A JSON description from which `engine.config` can rebuild this policy."""
        return {
            "kind": "openai",
            "base_url": self.base_url,
            "model": self.model,
            "max_in_flight": self.max_in_flight,
            "timeout": self.timeout,
            "retries": self.retries,
        }

    async def __aenter__(self) -> Self:
        self._ensure_session()
        return self

    async def aclose(self) -> None:
        session, self._session = self._session, None
        await close_session(session)

    def _ensure_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            headers = {"Content-Type": "application/json"}
            if self.api_key:
                headers["Authorization"] = f"Bearer {self.api_key}"
            connector = aiohttp.TCPConnector(limit=self.max_in_flight, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=headers,
                json_serialize=lambda o: orjson.dumps(o).decode(),
            )
        return self._session

    def request_body(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None,
        params: SamplingParams,
        n: int,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
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
        body = self.request_body(messages, tools, params or SamplingParams(), n)
        version = self.version  # the weights the request was sent to, not those after a reload
        data = await self._post("/chat/completions", body)
        return self.parse_response(data, version)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url + path
        last = "no attempt made"
        async with self._limit:
            session = self._ensure_session()
            for attempt in range(self.retries + 1):
                if attempt:
                    self.retried += 1
                    delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
                    await anyio.sleep(delay * (0.5 + random.random() / 2))
                self.requests += 1
                try:
                    with anyio.fail_after(self.timeout):
                        async with session.post(url, json=body) as resp:
                            raw = await resp.read()
                            status = resp.status
                except TimeoutError:
                    last = f"no reply within {self.timeout}s"
                    continue
                except (aiohttp.ClientError, OSError) as exc:
                    last = f"{type(exc).__name__}: {exc}"
                    continue
                if status == 200:
                    try:
                        parsed: dict[str, Any] = orjson.loads(raw)
                        return parsed
                    except orjson.JSONDecodeError:
                        last = f"200 with a body that is not JSON: {raw[:200]!r}"
                        continue
                detail = raw[:500].decode(errors="replace")
                if status in RETRY_STATUSES:
                    last = f"HTTP {status}: {detail}"
                    log.debug("policy retry", status=status, attempt=attempt)
                    continue
                raise NotRetryable(f"model server refused the request: HTTP {status}: {detail}")
        raise PolicyError(f"model server at {url} failed after {self.retries + 1} tries: {last}")

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
