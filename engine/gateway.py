"""The recording model gateway: a loopback OpenAI-compatible endpoint for an app's own agent.

One aiohttp server per engine, started the first time an `AppAgent` runs.
Each rollout attempt gets a session: a path and a key of its own,

    {url}/rollouts/{rollout_id}/v1                      the attempt's agent
    {url}/rollouts/{rollout_id}/agents/{name}/v1        one of several agents

    POST …/chat/completions   (streaming too; tools; n)
    GET  …/models

and every call goes to the engine's policy through the attempt's
`RolloutContext.complete`, the same path the built-in loop takes: recorded,
limited, under the step deadline, retried by the policy, token ids and
logprobs asked from the server on the app's behalf. A key is good for its own
rollout's path only (another rollout's path: 403) and only while its attempt
runs (after: 401); a refused request writes nothing. A model fault the
retries could not absorb answers 502 and ends the attempt (``error``, run
again from the start); later calls of that attempt answer 410. Error replies
carry ``x-should-retry: false``: the engine has retried already.
"""

from __future__ import annotations

import itertools
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Self
from urllib.parse import quote

import anyio
import orjson
import structlog
from aiohttp import web

from engine.agent import AppAgent, ModelCall
from engine.context import AttemptOver, RolloutContext
from engine.openai_wire import WireError, completion_body, error_body, parse_request, stream_events
from engine.resources import AsyncResource

log = structlog.get_logger("drillyard.gateway")

MAX_BODY = 64 * 1024 * 1024
_NO_RETRY = {"x-should-retry": "false"}


@dataclass(slots=True)
class _Session:
    """One rollout attempt's standing with the gateway."""

    ctx: RolloutContext
    agent: AppAgent
    key: str
    in_flight: set[anyio.CancelScope] = field(default_factory=set)


def _error(status: int, message: str, kind: str, code: str | None = None) -> web.Response:
    return web.json_response(
        error_body(message, kind, code), status=status, headers=_NO_RETRY, dumps=_dumps
    )


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj).decode()


class Gateway(AsyncResource):
    """The engine's model gateway (see the module docstring)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._by_key: dict[str, _Session] = {}
        self._ids = itertools.count(1)
        self.requests = 0
        self.refused = 0

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def start(self) -> None:
        """Bind the loopback port and serve (idempotent)."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=MAX_BODY)
        for prefix in ("/rollouts/{rollout}", "/rollouts/{rollout}/agents/{agent}"):
            app.router.add_post(prefix + "/v1/chat/completions", self._chat)
            app.router.add_get(prefix + "/v1/models", self._models)
            app.router.add_post(prefix + "/v1/responses", self._responses)
        runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self.port = int(port)
        self.url = f"http://{host}:{self.port}"
        log.info("gateway listening", url=self.url)

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        for session in list(self._by_key.values()):
            self._end(session)
        if runner is not None:
            await runner.cleanup()

    @property
    def sessions(self) -> int:
        """Rollout attempts connected now."""
        return len(self._by_key)

    # ---- sessions ------------------------------------------------------------

    @asynccontextmanager
    async def session(self, ctx: RolloutContext, agent: AppAgent) -> AsyncIterator[None]:
        """Connect one rollout attempt: its path and key, valid until the block ends."""
        if self._runner is None:
            raise RuntimeError("the gateway is not started")
        key = "dy-" + secrets.token_urlsafe(24)
        session = _Session(ctx, agent, key)
        self._by_key[key] = session
        ctx.connect(f"{self.url}/rollouts/{quote(ctx.rollout_id, safe='')}", key)
        try:
            yield
        finally:
            self._end(session)

    def _end(self, session: _Session) -> None:
        self._by_key.pop(session.key, None)
        for scope in session.in_flight:
            scope.cancel()

    def _authorize(self, request: web.Request) -> _Session | web.Response:
        header = request.headers.get("Authorization", "")
        key = header[7:].strip() if header[:7].lower() == "bearer " else ""
        session = self._by_key.get(key) if key else None
        if session is None:
            self.refused += 1
            return _error(
                401,
                "unknown or expired key: each rollout attempt has its own key (ctx.api_key),"
                " good while the attempt runs",
                "authentication_error",
                "invalid_api_key",
            )
        if request.match_info["rollout"] != session.ctx.rollout_id:
            self.refused += 1
            return _error(
                403,
                "this key belongs to another rollout: use ctx.base_url with ctx.api_key",
                "permission_error",
                "wrong_rollout",
            )
        return session

    # ---- routes --------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        session = self._authorize(request)
        if isinstance(session, web.Response):
            return session
        model = _model_name(session.agent)
        return web.json_response(
            {"object": "list",
             "data": [{"id": model, "object": "model", "created": 0, "owned_by": "drillyard"}]},
            dumps=_dumps,
        )  # fmt: skip

    async def _responses(self, request: web.Request) -> web.Response:
        return _error(
            404,
            "Drillyard's gateway speaks chat completions, not the Responses API: use"
            " /chat/completions (openai-agents: OpenAIChatCompletionsModel, or"
            " set_default_openai_api('chat_completions'))",
            "invalid_request_error",
            "unsupported_api",
        )

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        session = self._authorize(request)
        if isinstance(session, web.Response):
            return session
        self.requests += 1
        ctx = session.ctx
        if ctx.fault is not None or ctx.closed:
            return _error(410, f"this rollout attempt is over: {ctx.fault!r}", "attempt_over")
        try:
            body = orjson.loads(await request.read())
            req = parse_request(body, token_ids=session.agent.token_ids)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"the body is not JSON: {exc}", "invalid_request_error")
        except WireError as exc:
            return _error(400, str(exc), "invalid_request_error")
        agent = request.match_info.get("agent") or ctx.agent
        extra = None
        request_extra = session.agent.request_extra
        if request_extra is not None:

            def extra(turn: int) -> dict[str, Any]:
                return request_extra(ModelCall(agent, turn, req.messages, req.tools))

        recorded = {"stream": True} if req.stream else None
        with anyio.CancelScope() as scope:
            session.in_flight.add(scope)
            try:
                choices = await ctx.complete(
                    req.messages, req.tools or None, req.params, req.n,
                    agent=agent, extra=extra, request=recorded,
                )  # fmt: skip
            except AttemptOver as exc:
                return _error(410, str(exc), "attempt_over")
            except Exception as exc:
                ctx.fail(exc)  # the attempt's cause (kept already when it was the model's)
                return _error(
                    502,
                    f"the model call failed and the rollout attempt ends (it is run again"
                    f" from the start): {type(exc).__name__}: {exc}",
                    "model_error",
                )
            finally:
                session.in_flight.discard(scope)
        if scope.cancel_called:
            return _error(410, "this rollout attempt ended during the call", "attempt_over")
        completion_id = f"chatcmpl-dy{next(self._ids)}"
        model = req.model or _model_name(session.agent)
        if not req.stream:
            return web.json_response(
                completion_body(req, choices, completion_id, model), dumps=_dumps
            )
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await response.prepare(request)
        for event in stream_events(req, choices, completion_id, model):
            await response.write(b"data: " + orjson.dumps(event) + b"\n\n")
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _model_name(agent: AppAgent) -> str:
    model = getattr(agent.policy, "model", None)
    return model if isinstance(model, str) and model else "drillyard"
