"""The worker protocol's fast lane: the same calls as frames over one WebSocket.

The HTTP routes of `backends.worker` each cost a request (headers, a parse,
a response) on both sides. A `Channel` is one persistent WebSocket from the
engine to a worker (``GET /channel``, the same bearer token) that carries the
environment calls as small binary frames, many in flight at once:

    request   {"id": 7, "op": "step", "env": "ab12…", "body": {"tool_call": {…}}}
    reply     {"id": 7, "status": 200, "body": {…}}

``op`` is one of ``create``, ``reset``, ``step``, ``respond``, ``delete``; ``status`` and
``body`` are exactly what the HTTP route answers (so the client reads both
lanes the same way). A worker written in another language may serve only the
HTTP routes: a worker that refuses the upgrade is spoken to over HTTP.
When the socket closes (the worker died or restarted), every call in flight
on it ends at once with `ChannelClosed`.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web

Dispatch = Callable[[str, str | None, dict[str, Any]], Awaitable[tuple[int, Any]]]
"""The worker's side: ``(op, env_id, body) -> (status, body)``, as its HTTP routes answer."""

MAX_FRAME = 64 * 1024**2


class ChannelClosed(ConnectionError):
    """The channel's socket closed with calls in flight (the worker went away)."""


async def serve_channel(request: web.Request, dispatch: Dispatch) -> web.WebSocketResponse:
    """Serve one engine's channel until it closes; every frame is handled in its own
    task (a slow tool never holds up the calls behind it); calls in flight when the
    socket closes are cancelled."""
    ws = web.WebSocketResponse(max_msg_size=MAX_FRAME, autoping=True)
    await ws.prepare(request)
    running: set[asyncio.Task[None]] = set()

    async def answer(frame: Any) -> None:
        if not isinstance(frame, dict) or not isinstance(frame.get("op"), str):
            status, body = 400, {"error": 'a frame is {"id", "op", "env", "body"}'}
        else:
            env, given = frame.get("env"), frame.get("body")
            status, body = await dispatch(
                frame["op"],
                env if isinstance(env, str) else None,
                given if isinstance(given, dict) else {},
            )
        frame_id = frame.get("id") if isinstance(frame, dict) else None
        if not ws.closed:
            await ws.send_bytes(orjson.dumps({"id": frame_id, "status": status, "body": body}))

    try:
        async for msg in ws:
            if msg.type not in (WSMsgType.BINARY, WSMsgType.TEXT):
                continue
            try:
                frame = orjson.loads(msg.data)
            except orjson.JSONDecodeError:
                frame = None
            task = asyncio.get_running_loop().create_task(answer(frame))
            running.add(task)
            task.add_done_callback(running.discard)
    finally:
        for task in list(running):
            task.cancel()
    return ws


class Channel:
    """The engine's end of one worker's channel: calls multiplexed by frame id."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[tuple[int, Any]]] = {}
        self._closed: BaseException | None = None
        self._closer: asyncio.Task[None] | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @classmethod
    async def connect(
        cls, session: aiohttp.ClientSession, url: str, headers: dict[str, str], close_s: float
    ) -> Channel:
        """Open the channel at ``url`` (``…/channel``); aiohttp's errors propagate."""
        ws = await session.ws_connect(
            url,
            headers=headers,
            max_msg_size=MAX_FRAME,
            autoping=True,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=close_s),
        )
        return cls(ws)

    @property
    def closed(self) -> bool:
        return self._closed is not None

    @property
    def in_flight(self) -> int:
        """Calls sent and not yet answered."""
        return len(self._pending)

    async def call(self, op: str, env: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        """Send one call and wait for its reply: ``(status, body)``."""
        if self._closed is not None:
            raise ChannelClosed(str(self._closed))
        frame_id = next(self._ids)
        fut: asyncio.Future[tuple[int, Any]] = asyncio.get_running_loop().create_future()
        self._pending[frame_id] = fut
        try:
            await self._ws.send_bytes(orjson.dumps({"id": frame_id, "op": op, "env": env,
                                                    "body": body}))  # fmt: skip
            return await fut
        except (ConnectionError, aiohttp.ClientError, RuntimeError) as exc:
            if isinstance(exc, ChannelClosed):
                raise
            del self._pending[frame_id]  # this call raises itself: nothing waits on its future
            self._fail(ChannelClosed(f"channel send failed: {type(exc).__name__}: {exc}"))
            raise ChannelClosed(str(self._closed)) from exc
        finally:
            self._pending.pop(frame_id, None)

    async def _read(self) -> None:
        reason = "the worker closed the channel"
        try:
            async for msg in self._ws:
                if msg.type is WSMsgType.BINARY or msg.type is WSMsgType.TEXT:
                    reply = orjson.loads(msg.data)
                    fut = self._pending.get(reply.get("id"))
                    if fut is not None and not fut.done():
                        fut.set_result((int(reply["status"]), reply.get("body")))
                elif msg.type is WSMsgType.ERROR:
                    reason = f"channel error: {self._ws.exception()!r}"
        except Exception as exc:  # a broken frame or socket: the channel is unusable
            reason = f"channel broken: {type(exc).__name__}: {exc}"
        finally:
            self._fail(ChannelClosed(reason))

    def _fail(self, exc: ChannelClosed) -> None:
        if self._closed is None:
            self._closed = exc
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def abort(self, reason: str) -> None:
        """End every call in flight now with `ChannelClosed`; close the socket soon."""
        self._fail(ChannelClosed(reason))
        if self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self.close())

    async def close(self) -> None:
        """Close the socket; calls in flight end with `ChannelClosed`."""
        self._fail(ChannelClosed("the engine closed the channel"))
        try:
            await self._ws.close()
        except (ConnectionError, aiohttp.ClientError):
            pass  # the socket was already gone
        finally:
            await asyncio.gather(self._reader, return_exceptions=True)
