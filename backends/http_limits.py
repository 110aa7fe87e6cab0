"""Deadlines and a cap for an aiohttp server that local processes can reach.

    limits = HttpLimits(max_connections=256, header_timeout=30, body_timeout=60)
    app.middlewares.append(limits.middleware)      # before the runner's setup
    host, port = await limits.listen(runner, "127.0.0.1", 0)
    ...
    limits.close()                                 # then runner.cleanup()

aiohttp bounds the size of a request (line, headers, body) but not the time
a client takes to send it, nor how many connections it holds open: a local
process could keep every connection the worker can afford half-open
(slowloris). Here:

- the server listens through a protocol wrapper that refuses (503, closed)
  any connection beyond ``max_connections`` (and resets those beyond twice
  that, while refusals linger);
- a connection must deliver each request head within ``header_timeout``
  seconds (counted from its opening, then from each answer), or it is closed;
- a request body must arrive within ``body_timeout`` seconds, or the answer
  is 408 and the connection is closed.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, cast

from aiohttp import web

Handler = Any
_LINGER = 0.5  # seconds a refused connection stays half-closed for its 503 to be read


class _Connection(asyncio.Protocol):
    """One client connection: counted, timed while its request head is due."""

    def __init__(self, limits: HttpLimits, handler: asyncio.Protocol) -> None:
        self.limits, self.handler = limits, handler
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not an asyncio.Transport subclass, only alike)
        self.transport = cast(asyncio.Transport, transport)
        transport = self.transport
        if len(self.limits.live) >= self.limits.max_connections:
            self._refuse(transport)
            return
        self.limits.live[transport] = self
        self.handler.connection_made(transport)
        self.arm()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503, half-close, and drop the connection a moment later (closing at
        once would reset it before the client read the answer). At most
        ``max_connections`` refusals linger; beyond that a connection is reset."""
        self.refused = True
        refusing = self.limits.refusing
        if len(refusing) >= self.limits.max_connections:
            transport.abort()
            return
        refusing.add(transport)
        transport.write(self.limits.refusal)
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(_LINGER, transport.abort)

    def arm(self) -> None:
        """Start the clock for the next request head."""
        self.disarm()
        if self.transport is not None and not self.transport.is_closing():
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(self.limits.header_timeout, self._late)

    def disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _late(self) -> None:
        self.timer = None
        if self.transport is not None:
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self.refused:
            self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return None if self.refused else self.handler.eof_received()

    def pause_writing(self) -> None:
        if not self.refused:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if not self.refused:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.transport is not None:
            self.limits.live.pop(self.transport, None)
            self.limits.refusing.discard(self.transport)
        if not self.refused:
            self.handler.connection_lost(exc)


class HttpLimits:
    """The limits of one server (see the module doc)."""

    def __init__(self, *, max_connections: int = 256, header_timeout: float = 30.0,
                 body_timeout: float = 60.0) -> None:
        if max_connections < 1 or header_timeout <= 0 or body_timeout <= 0:
            raise ValueError("max_connections must be >= 1 and the timeouts positive")
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.live: dict[asyncio.Transport, _Connection] = {}
        self.refusing: set[asyncio.Transport] = set()
        self._server: asyncio.Server | None = None
        body = json.dumps({"error": f"all {max_connections} connections are in use"}).encode()
        self.refusal = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n"
                        % len(body)) + body

    async def listen(self, runner: web.BaseRunner, host: str, port: int) -> tuple[str, int]:
        """Serve ``runner`` (set up) on ``host:port`` through the limits; the bound address."""
        server = runner.server
        assert server is not None, "call runner.setup() first"
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Connection(self, server()), host, port,
                                                reuse_address=True)
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        """Stop listening (the runner's cleanup then closes the connections)."""
        if self._server is not None:
            self._server.close()
            self._server = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """The head has arrived: stop its clock; read the body under its deadline."""
        connection = self.live.get(request.transport) if request.transport else None
        if connection is not None:
            connection.disarm()
        try:
            if request.body_exists:
                try:
                    async with asyncio.timeout(self.body_timeout):
                        await request.read()
                except TimeoutError:
                    response = web.json_response(
                        {"error": f"the request body did not arrive within "
                                  f"{self.body_timeout:g}s"}, status=408)
                    response.force_close()
                    return response
            answer: web.StreamResponse = await handler(request)
            return answer
        finally:
            if connection is not None:
                connection.arm()
