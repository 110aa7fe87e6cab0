"""A real HTTP server on loopback that speaks the OpenAI chat-completions wire
format, with scripted faults (status codes, hangs, dropped connections), for
testing the client's retries. The happy path is tested against real vLLM."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web


class ChatServer:
    """Serves ``POST /v1/chat/completions``; each request takes the next item of
    ``script``: an int status code, ``"hang"``, ``"drop"``, a dict reply, or a
    function of the request body returning one of those, or an awaitable of one
    (the last item repeats). ``GET /health`` answers ``health`` (a status code)."""

    def __init__(self, script: list[Any], *, health: int = 200) -> None:
        self.script = script
        self.requests: list[dict[str, Any]] = []
        self.request_ids: list[str | None] = []  # the X-Request-Id of each request
        self.health = health
        self.url = ""
        self._release = asyncio.Event()

    def _next(self) -> Any:
        return self.script.pop(0) if len(self.script) > 1 else self.script[0]

    async def handle_health(self, request: web.Request) -> web.StreamResponse:
        return web.Response(status=self.health)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(body)
        self.request_ids.append(request.headers.get("X-Request-Id"))
        item = self._next()
        if callable(item):
            item = item(body)
        if inspect.isawaitable(item):
            item = await item
        if item == "hang":  # until the client gives up (or the server stops)
            await self._release.wait()
            return web.Response(status=599)
        if item == "drop":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if isinstance(item, int):
            return web.json_response({"error": {"message": f"scripted {item}"}}, status=item)
        return web.json_response(item)

    @asynccontextmanager
    async def running(self) -> AsyncIterator[ChatServer]:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        app.router.add_get("/health", self.handle_health)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"
        try:
            yield self
        finally:
            self._release.set()
            await runner.cleanup()


def reply(
    content: str | None = "hi", tool_calls: list[dict[str, Any]] | None = None, **choice_extra: Any
) -> dict[str, Any]:
    msg: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        msg["tool_calls"] = tool_calls
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "model": "stub",
        "choices": [
            {
                "index": 0,
                "message": msg,
                "finish_reason": "tool_calls" if tool_calls else "stop",
                **choice_extra,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
