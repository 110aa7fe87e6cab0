"""How a policy's requests reach a model server: one small interface, two HTTP clients.

`AiohttpTransport` (aiohttp, a core dependency) and `ReqwestTransport`
(pyreqwest: Rust's reqwest under asyncio, 0.6–0.8× aiohttp's CPU per request
on loopback; ``pip install 'drillyard[fast]'``). Both keep up to
``max_connections`` connections alive, bound every try by one ``timeout``
(the body read included), send no cookies and ignore proxy environment
variables. Each maps its own client's errors in one place, ``request``, to a
`Failure`: a try a retry may absorb, ``unreachable`` when the server could not
be reached or dropped the connection. What an HTTP status means is the
caller's (`OpenAIPolicy`), the same whichever client carried it.

`resolve_client` picks one by name: ``"auto"`` (the default) takes pyreqwest
where installed and aiohttp otherwise, as `engine.eventloop` takes uvloop;
``$DRILLYARD_HTTP_CLIENT`` overrides the default. A transport is opened by its
first request, inside the event loop that uses it; once closed it refuses new
requests (`TransportClosed`) instead of reopening behind its owner's back.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import aiohttp
import anyio
from yarl import URL

from engine.extras import choose_installed
from engine.resources import close_session

if TYPE_CHECKING:
    from pyreqwest.client import Client as ReqwestClient

ClientName = Literal["auto", "aiohttp", "pyreqwest"]
CLIENTS: tuple[ClientName, ...] = ("auto", "aiohttp", "pyreqwest")
CLIENT_ENV = "DRILLYARD_HTTP_CLIENT"
Method = Literal["GET", "POST"]

# aiohttp: the server could not be reached or dropped the connection
_AIOHTTP_GONE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, ConnectionError)


@dataclass(frozen=True, slots=True)
class Failure:
    """One try that a retry may absorb: why, the HTTP status if one came back, and
    whether the server could not be reached at all (refused, reset, cut off)."""

    reason: str
    status: int | None = None
    unreachable: bool = False


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back: the HTTP status and the whole body (bytes or a view of them)."""

    status: int
    body: bytes | memoryview

    def head(self, limit: int) -> str:
        """The body's first ``limit`` bytes as text, for an error message."""
        return bytes(self.body[:limit]).decode(errors="replace")


class TransportClosed(RuntimeError):
    """A request on a transport after its ``aclose``."""


def resolve_client(name: str | None = None) -> Literal["aiohttp", "pyreqwest"]:
    """The client ``name`` selects here (None: ``$DRILLYARD_HTTP_CLIENT``, else auto)."""
    chosen = choose_installed(
        name, env=CLIENT_ENV, what="HTTP client", where="policy.http_client",
        plain="aiohttp", fast="pyreqwest",
        fix="pip install 'drillyard[fast]', or use http_client='aiohttp'",
    )  # fmt: skip
    return "pyreqwest" if chosen == "pyreqwest" else "aiohttp"


class Transport(ABC):
    """A pooled HTTP client for one policy; ``aclose`` is idempotent."""

    name: ClassVar[str]

    def __init__(self, *, max_connections: int, timeout: float, headers: Mapping[str, str]):
        self.max_connections = max_connections
        self.timeout = timeout
        self.headers = dict(headers)
        self.closed = False

    @abstractmethod
    async def request(
        self,
        method: Method,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply | Failure:
        """One try: the reply whatever its status, or the `Failure` that stopped it."""

    @abstractmethod
    async def aclose(self) -> None:
        """Close the pooled connections; later requests raise `TransportClosed`."""

    def _check_open(self) -> None:
        if self.closed:
            raise TransportClosed(f"the {self.name} transport is closed: open a new one")

    def timed_out(self) -> Failure:
        return Failure(f"no reply within {self.timeout}s")


def open_transport(
    client: Literal["aiohttp", "pyreqwest"],
    *,
    max_connections: int,
    timeout: float,
    headers: Mapping[str, str],
) -> Transport:
    """A transport of the resolved ``client`` (see `resolve_client`)."""
    kind = ReqwestTransport if client == "pyreqwest" else AiohttpTransport
    return kind(max_connections=max_connections, timeout=timeout, headers=headers)


class AiohttpTransport(Transport):
    """One aiohttp session: no cookie jar, the session's timeout (one timer a try)."""

    name = "aiohttp"

    def __init__(self, *, max_connections: int, timeout: float, headers: Mapping[str, str]):
        super().__init__(max_connections=max_connections, timeout=timeout, headers=headers)
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, URL] = {}  # each route parsed once

    def _ensure(self) -> aiohttp.ClientSession:
        self._check_open()
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.max_connections, keepalive_timeout=30)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def request(
        self,
        method: Method,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply | Failure:
        session = self._ensure()
        data = None if body is None else aiohttp.BytesPayload(body, content_type=_JSON)
        parsed = self._urls.get(url)
        if parsed is None:
            parsed = self._urls[url] = URL(url)
        try:
            async with session.request(method, parsed, data=data, headers=headers) as resp:
                return Reply(resp.status, await resp.read())
        except TimeoutError:
            return self.timed_out()
        except _AIOHTTP_GONE as exc:
            return Failure(f"{type(exc).__name__}: {exc}", unreachable=True)
        except (aiohttp.ClientError, OSError) as exc:
            return Failure(f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        self.closed = True
        session, self._session = self._session, None
        await close_session(session)


class ReqwestTransport(Transport):
    """One pyreqwest client (HTTP/1.1 on a current-thread Tokio runtime, the library's
    default, which measured cheaper here than its multithreaded one)."""

    name = "pyreqwest"

    def __init__(self, *, max_connections: int, timeout: float, headers: Mapping[str, str]):
        super().__init__(max_connections=max_connections, timeout=timeout, headers=headers)
        self._client: ReqwestClient | None = None
        from pyreqwest import exceptions
        from pyreqwest.http import Url

        self._errors = exceptions
        self._url_type = Url
        self._urls: dict[str, Url] = {}  # each route parsed once (~0.9 µs a request)

    def _ensure(self) -> ReqwestClient:
        self._check_open()
        if self._client is None:
            from pyreqwest.client import ClientBuilder

            self._client = (
                ClientBuilder()
                .max_connections(self.max_connections)
                .pool_idle_timeout(timedelta(seconds=30))
                .timeout(timedelta(seconds=self.timeout))
                .default_headers(self.headers)
                .no_proxy()
                .http1_only()
                .build()
            )
        return self._client

    async def request(
        self,
        method: Method,
        url: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Reply | Failure:
        client = self._ensure()
        errors = self._errors
        parsed = self._urls.get(url)
        try:
            if parsed is None:
                parsed = self._urls[url] = self._url_type(url)
            builder = client.request(method, parsed)
            if body is not None:
                builder = builder.body_bytes(body)
            if headers:
                builder = builder.headers(dict(headers))
            resp = await builder.build().send()
            return Reply(resp.status, memoryview(await resp.bytes()))
        except TimeoutError:  # every pyreqwest timeout is one (connect, read, pool)
            return self.timed_out()
        except (errors.NetworkError, errors.DecodeError) as exc:  # refused, reset, cut off
            return Failure(_reqwest_reason(exc), unreachable=True)
        except errors.ClientClosedError as exc:
            raise TransportClosed(f"the pyreqwest transport closed mid-request: {exc}") from exc
        except (errors.PyreqwestError, OSError) as exc:
            return Failure(_reqwest_reason(exc))

    async def aclose(self) -> None:
        self.closed = True
        client, self._client = self._client, None
        if client is not None:
            with anyio.CancelScope(shield=True):
                await client.close()


_JSON = "application/json"


def _reqwest_reason(exc: BaseException) -> str:
    """``Kind: message: innermost cause`` (pyreqwest keeps the chain in ``details``)."""
    message = getattr(exc, "message", None) or str(exc)
    details: Any = getattr(exc, "details", None) or {}
    causes = details.get("causes") if isinstance(details, dict) else None
    last = causes[-1].get("message") if causes else None
    return f"{type(exc).__name__}: {message}" + (f" ({last})" if last else "")
