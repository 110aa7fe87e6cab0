"""A policy over several OpenAI-compatible servers of one model (vLLM replicas).

    async with MultiServerPolicy(["http://a:8000/v1", "http://b:8000/v1"], "qwen") as policy:
        agent = Agent(policy)

Routing: the first call of a conversation goes to the least-loaded server
(sequences in flight from this client; ties to the server picked least often,
then to the first listed); its later calls stay there, where the prefix cache
holds the conversation. The conversation is the `affinity` key the rollout
driver sets around every attempt (its rollout id); a call without a key goes
to the least-loaded server. Each call carries the key as ``X-Request-Id``, so
a server's request log (``--enable-log-requests``) names the rollout.

Faults: every server is an `OpenAIPolicy` (its request body, its parsing, its
retries of 429/5xx/timeouts with backoff). A server that cannot be reached
(refused, reset, cut off) and fails ``GET /health``, or that still fails after
its retries and fails ``GET /health``, is taken out: probed in the background
with backoff and brought back when healthy and, after a weight reload, on the
current weight version. The call moves to another server (the request holds
the whole conversation, so any server can continue it) and the conversation's
affinity moves with it. When no server is left, `PolicyError` (an `InfraError`:
the attempt ends in ``error`` and is retried).
"""

from __future__ import annotations

import asyncio
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Self

import anyio
import orjson
import structlog

from engine.environment import ToolSpec
from engine.errors import ConfigError, PolicyError
from engine.policy.base import Completion, SamplingParams, affinity
from engine.policy.openai import Failure, OpenAIPolicy
from engine.policy.tokens import TokenContinuation
from engine.policy.transport import Transport, open_transport
from engine.resources import AsyncResource

log = structlog.get_logger("drillyard.policy")

_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/+-]")


@dataclass(frozen=True, slots=True)
class ServerState:
    """One server as the policy sees it now."""

    url: str
    up: bool
    down_reason: str | None
    in_flight: int
    requests: int
    picks: int
    outages: int


class _Server:
    """A server's client and the routing state kept about it."""

    def __init__(self, index: int, client: OpenAIPolicy) -> None:
        self.index = index
        self.client = client
        self.url = client.base_url
        self.root = self.url.removesuffix("/v1")
        self.in_flight = 0  # sequences sent and not yet answered
        self.picks = 0  # conversations (or keyless calls) routed here by load
        self.outages = 0
        self.down: str | None = None  # why it is out; None while it serves
        self.serving = asyncio.Event()
        self.serving.set()
        self.probe: asyncio.Task[None] | None = None


class MultiServerPolicy(AsyncResource):
    """Chat completions from N servers of one model, sticky per conversation.

    ``max_in_flight``, ``timeout``, ``retries``, the backoff and ``http_client``
    apply per server, as in `OpenAIPolicy`. ``version`` is stamped on every completion
    (the weight reloader bumps it). ``weight_version``, set by the reloader, is
    what a server that was out must report at ``GET /weight_info`` to come
    back (None: not checked). At most ``max_affinities`` conversations are
    remembered (least recently used forgotten: their next call is routed by load).
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        model: str,
        *,
        api_key: str | None = None,
        max_in_flight: int = 64,
        timeout: float = 120.0,
        retries: int = 4,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        version: str | None = None,
        probe_interval: float = 0.5,
        max_probe_interval: float = 10.0,
        probe_timeout: float = 5.0,
        max_affinities: int = 100_000,
        exact_tokens: bool = False,
        http_client: str | None = None,
    ) -> None:
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        urls = [u.rstrip("/") for u in urls]
        if not urls:
            raise ConfigError(
                "policy.base_url", "no model server URL given", 'give ["http://host:port/v1", …]'
            )
        repeated = sorted({u for u in urls if urls.count(u) > 1})
        if repeated:
            raise ConfigError(
                "policy.base_url",
                f"server URL listed twice: {', '.join(repeated)}",
                "list every server once",
            )
        self._servers = [
            _Server(
                i,
                OpenAIPolicy(
                    url,
                    model,
                    api_key=api_key,
                    max_in_flight=max_in_flight,
                    timeout=timeout,
                    retries=retries,
                    backoff=backoff,
                    max_backoff=max_backoff,
                    http_client=http_client,
                ),
            )
            for i, url in enumerate(urls)
        ]
        self.model = model
        self.version = version  # on every client: they build and stamp the completions
        self.weight_version: str | None = None
        self.probe_interval = probe_interval
        self.max_probe_interval = max_probe_interval
        self.probe_timeout = probe_timeout
        self.max_affinities = max_affinities
        self._affinity: OrderedDict[str, _Server] = OrderedDict()
        self._probe_client: Transport | None = None  # its own few connections: probes never queue
        self._holds = 0
        self._active = 0
        self._open = asyncio.Event()
        self._open.set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.retried = 0
        self.moved = 0  # calls that left a server for another
        self.exact_tokens = exact_tokens
        self._tokens = TokenContinuation(self.tokenize) if exact_tokens else None

    @property
    def version(self) -> str | None:
        return self._servers[0].client.version

    @version.setter
    def version(self, version: str | None) -> None:
        for s in self._servers:
            s.client.version = version

    @property
    def base_urls(self) -> list[str]:
        return [s.url for s in self._servers]

    def describe(self) -> dict[str, Any]:
        """A JSON description from which `engine.config` can rebuild this policy."""
        first = self._servers[0].client
        return {
            "kind": "openai",
            "base_url": self.base_urls,
            "model": self.model,
            "max_in_flight": first.max_in_flight,
            "timeout": first.timeout,
            "retries": first.retries,
            "exact_tokens": self.exact_tokens,
            "http_client": first.http_client,
        }

    def servers(self) -> list[ServerState]:
        return [self._state(s) for s in self._servers]

    def _state(self, s: _Server) -> ServerState:
        return ServerState(
            s.url, s.down is None, s.down, s.in_flight, s.client.requests, s.picks, s.outages
        )

    async def __aenter__(self) -> Self:
        for s in self._servers:
            await s.client.__aenter__()
        return self

    async def aclose(self) -> None:
        probes = [s.probe for s in self._servers if s.probe is not None]
        for task in probes:
            task.cancel()
        if probes:
            await asyncio.gather(*probes, return_exceptions=True)
        for s in self._servers:
            s.probe = None
            await s.client.aclose()
        probe, self._probe_client = self._probe_client, None
        if probe is not None:
            await probe.aclose()

    # ---- calls -------------------------------------------------------------

    async def complete(
        self,
        messages: list[dict[str, Any]],
        tools: list[ToolSpec] | None = None,
        params: SamplingParams | None = None,
        n: int = 1,
    ) -> list[Completion]:
        key = affinity.get()
        headers = {"X-Request-Id": _UNSAFE.sub("_", key)[:200]} if key else None

        async def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
            return await self._send(key, path, body, n, headers)

        while self._holds:  # a weight reload is under way
            await self._open.wait()
        self._active += 1
        self._idle.clear()
        try:  # the request built and parsed as by one server's client, sent by the router
            first = self._servers[0].client
            return await first.complete_via(post, messages, tools, params, n, self._tokens)
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def tokenize(self, **request: Any) -> list[int]:
        """`OpenAIPolicy.tokenize` on a server that is up (any: they serve one model)."""
        failures: dict[str, str] = {}
        for server in sorted(self._servers, key=lambda s: (s.down is not None, s.in_flight)):
            try:
                return await server.client.tokenize(**request)
            except PolicyError as exc:
                failures[server.url] = str(exc)
        raise PolicyError(f"no model server could tokenize: {failures}")

    async def end_of_turn_token(self) -> int | None:
        """The id that ends an assistant turn in the chat template (exact_tokens only)."""
        suffix = await self._tokens.assistant_suffix() if self._tokens else None
        return suffix[0] if suffix else None

    async def preflight(self) -> None:
        """Every server answers (`OpenAIPolicy.preflight`), before a run starts."""
        for server in self._servers:
            await server.client.preflight()

    @asynccontextmanager
    async def paused(self) -> AsyncIterator[None]:
        """New calls wait until the block ends; it starts when the calls in
        flight have finished (a weight reload runs inside, so every completion
        is stamped with the version of the weights that produced it)."""
        self._holds += 1
        self._open.clear()
        try:
            await self._idle.wait()
            yield
        finally:
            self._holds -= 1
            if not self._holds:
                self._open.set()

    async def _send(
        self,
        key: str | None,
        path: str,
        body: dict[str, Any],
        n: int,
        headers: dict[str, str] | None,
    ) -> dict[str, Any]:
        given_up: dict[str, str] = {}  # servers this call left, and why
        while True:
            server = self._route(key, given_up)
            if server is None:
                raise PolicyError(self._nothing_left(given_up))
            if given_up:
                self.moved += 1
            data = await self._on(server, path, body, n, headers, given_up)
            if data is not None:
                return data

    def _route(self, key: str | None, given_up: dict[str, str]) -> _Server | None:
        if key is not None:
            sticky = self._affinity.get(key)
            if sticky is not None and sticky.down is None and sticky.url not in given_up:
                self._affinity.move_to_end(key)
                return sticky
        live = [s for s in self._servers if s.down is None and s.url not in given_up]
        if not live:
            return None
        server = min(live, key=lambda s: (s.in_flight, s.picks, s.index))
        server.picks += 1
        if key is not None:
            self._affinity[key] = server
            self._affinity.move_to_end(key)
            while len(self._affinity) > self.max_affinities:
                self._affinity.popitem(last=False)
        return server

    async def _on(
        self,
        server: _Server,
        path: str,
        body: dict[str, Any],
        n: int,
        headers: dict[str, str] | None,
        given_up: dict[str, str],
    ) -> dict[str, Any] | None:
        """Up to ``retries + 1`` tries on one server; None when the call leaves it."""
        client = server.client
        last = "no attempt made"
        for attempt in range(client.retries + 1):
            if attempt:
                self.retried += 1
                await anyio.sleep(client.retry_delay(attempt))
            if server.down is not None:  # taken out by another call meanwhile
                given_up[server.url] = server.down
                return None
            server.in_flight += n
            try:
                result = await client.post_once(path, body, headers)
            finally:
                server.in_flight -= n
            if not isinstance(result, Failure):
                return result
            last = result.reason
            if result.unreachable and not await self._healthy(server):
                self.take_out(server.url, f"unreachable ({last}) and GET /health failed")
                given_up[server.url] = last
                return None
        tries = f"failed {client.retries + 1} tries: {last}"
        if not await self._healthy(server):
            self.take_out(server.url, f"{tries}; GET /health failed")
        given_up[server.url] = tries
        return None

    def _nothing_left(self, given_up: dict[str, str]) -> str:
        why = [f"{url}: {reason}" for url, reason in given_up.items()]
        why += [f"{s.url}: down ({s.down})" for s in self._servers if s.url not in given_up]
        return f"no model server of {len(self._servers)} could answer: " + "; ".join(why)

    # ---- outages -----------------------------------------------------------

    def take_out(self, url: str, reason: str) -> None:
        """Stop routing to ``url`` until it is healthy again (probed with backoff)."""
        server = self._server(url)
        if server.down is not None:
            return
        server.down = reason
        server.serving.clear()
        server.outages += 1
        log.warning("model server taken out", url=server.url, reason=reason)
        if server.probe is None or server.probe.done():
            server.probe = asyncio.get_running_loop().create_task(self._probe(server))

    async def _probe(self, server: _Server) -> None:
        delay = self.probe_interval
        while server.down is not None:
            await anyio.sleep(delay)
            delay = min(self.max_probe_interval, delay * 2)
            await self._check(server)

    async def _check(self, server: _Server) -> None:
        if server.down is None or not await self._healthy(server):
            return
        stale = await self._stale_weights(server)
        if stale is not None:
            server.down = stale
            return
        server.down = None
        server.serving.set()
        log.info("model server back", url=server.url)

    async def probe(self, url: str) -> ServerState:
        """Check a server that is out now (say, just restarted) instead of at its next probe."""
        server = self._server(url)
        await self._check(server)
        return self._state(server)

    async def wait_up(self, url: str) -> None:
        """Return once ``url`` serves (at once when it does; after an outage,
        when its probe has brought it back)."""
        await self._server(url).serving.wait()

    def _server(self, url: str) -> _Server:
        server = next((s for s in self._servers if s.url == url.rstrip("/")), None)
        if server is None:
            raise ValueError(f"{url} is not one of this policy's servers: {self.base_urls}")
        return server

    async def _get(self, server: _Server, path: str) -> tuple[int, bytes] | None:
        """One probe through the policy's HTTP client (its own small pool, bounded by
        ``probe_timeout``): the status and body, or None when no reply came."""
        if self._probe_client is None:
            self._probe_client = open_transport(
                self._servers[0].client.transport_name, max_connections=len(self._servers),
                timeout=self.probe_timeout, headers={},
            )  # fmt: skip
        reply = await self._probe_client.request("GET", server.root + path)
        if isinstance(reply, Failure):
            return None
        return reply.status, bytes(reply.body)

    async def _healthy(self, server: _Server) -> bool:
        reply = await self._get(server, "/health")
        return reply is not None and reply[0] == 200

    async def _stale_weights(self, server: _Server) -> str | None:
        """Why a healthy server may not serve yet: it missed a weight reload."""
        want = self.weight_version
        if want is None:
            return None
        reply = await self._get(server, "/weight_info")
        if reply is None or reply[0] != 200:
            return f"healthy, but GET /weight_info failed: the run is on weight version {want}"
        try:
            has = orjson.loads(reply[1]).get("weight_version")
        except (orjson.JSONDecodeError, AttributeError):
            has = None
        if has == want:
            return None
        return f"serves weight version {has!r}, the run is on {want!r}: the next reload updates it"
