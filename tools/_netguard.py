"""What the browser may reach: an allowlist of host *and* port, checked on every hop.

    guard = NetGuard(Allowlist.parse(["example.org", "127.0.0.1:8123"]), workspace)
    await guard.install(context)        # a playwright BrowserContext

`Allowlist`: ``"host"`` allows ports 80 and 443 only, ``"host:port"`` that
port, ``"host:*"`` any port, ``"*.example.org"`` subdomains; nothing else
(the loopback's other ports, where a model server listens, included).

`NetGuard` routes every request of the context (``context.route``: documents,
frames, sub-resources, form posts, script fetches) and fetches it itself with
redirects off (``route.fetch(max_redirects=0)``), because Chromium would follow
a redirect past the route unchecked:

- a redirect of the main frame is not followed here: the target (if allowed)
  is handed to the tool, which navigates to it as a new, checked navigation;
- a redirect of anything else is followed hop by hop, each hop checked;
- a main-frame response that is a download (``Content-Disposition:
  attachment``, or a type the browser does not show) is saved in the
  workspace, at most ``max_download`` bytes, and the navigation stops there;
- WebSockets (``context.route_web_socket``) follow the same allowlist.

WebRTC is kept off UDP by a Chromium switch (see `tools.browser`).
"""

from __future__ import annotations

import contextlib
import email.message
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

import anyio

from tools.workspace import write_inside

MAX_REDIRECTS = 10
SHOWN_TYPES = ("text/", "image/", "application/xhtml+xml", "application/xml",
               "application/json", "application/javascript", "application/x-javascript")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]+")
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


@dataclass(frozen=True, slots=True)
class HostRule:
    """One allowlist entry: a host (or ``*.domain``) and its ports (None: any)."""

    host: str
    ports: frozenset[int] | None = frozenset({80, 443})

    @classmethod
    def parse(cls, text: str) -> HostRule:
        text = text.strip().lower()
        host, port = text, ""
        if text.startswith("[") and "]" in text:  # [::1]:8080
            host, _, rest = text[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        elif text.count(":") == 1:
            host, port = text.split(":")
        if port == "*":
            return cls(host, None)
        if port:
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"allow_hosts entry {text!r}: the port must be 1-65535 or *")
            return cls(host, frozenset({int(port)}))
        return cls(host)

    def allows(self, host: str, port: int) -> bool:
        if self.ports is not None and port not in self.ports:
            return False
        if self.host.startswith("*."):
            return host == self.host[2:] or host.endswith(self.host[1:])
        return host == self.host

    def __str__(self) -> str:
        if self.ports is None:
            return f"{self.host}:*"
        if self.ports == frozenset({80, 443}):
            return self.host
        return ",".join(f"{self.host}:{p}" for p in sorted(self.ports))


@dataclass(slots=True)
class Allowlist:
    """The hosts and ports a rollout's browser may reach: configured plus pinned."""

    rules: list[HostRule] = field(default_factory=list)
    pinned: list[HostRule] = field(default_factory=list)

    @classmethod
    def parse(cls, entries: Sequence[str]) -> Allowlist:
        return cls([HostRule.parse(e) for e in entries])

    def pin(self, url: str) -> None:
        """Allow exactly the origin of ``url`` (host and port) as well."""
        parts = urlsplit(url)
        port = parts.port or _DEFAULT_PORTS.get(parts.scheme, 80)
        self.pinned.append(HostRule((parts.hostname or "").lower(), frozenset({port})))

    def allows(self, url: str) -> bool:
        parts = urlsplit(url)
        if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
            return False
        try:
            port = parts.port or _DEFAULT_PORTS[parts.scheme]
        except ValueError:  # a port out of range
            return False
        host = parts.hostname.lower()
        return any(rule.allows(host, port) for rule in (*self.rules, *self.pinned))

    def describe(self) -> str:
        shown = [str(r) for r in (*self.rules, *self.pinned)]
        return ", ".join(shown) if shown else "none (give the environment allow_hosts)"


def _is_download(headers: dict[str, str]) -> bool:
    if headers.get("content-disposition", "").strip().lower().startswith("attachment"):
        return True
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    return bool(kind) and not kind.startswith(SHOWN_TYPES)


def download_name(url: str, headers: dict[str, str]) -> str:
    """A plain file name for a download: the server's, else the URL's, made safe."""
    message = email.message.Message()
    message["content-disposition"] = headers.get("content-disposition", "")
    name = message.get_filename() or unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = _SAFE_NAME.sub("_", name).strip("._")[:100]
    return name or "download"


class NetGuard:
    """Routes one browser context through the allowlist (see the module doc)."""

    def __init__(self, allow: Allowlist, workspace: Path | None, *,
                 max_download: int = 20 * 1024 * 1024, timeout: float = 20.0) -> None:
        self.allow = allow
        self.workspace = workspace
        self.max_download = max_download
        self.timeout = timeout
        self.blocked: list[str] = []  # navigations refused since the last `reset`
        self.redirect: str | None = None  # an allowed main-frame redirect to follow
        self.downloaded: list[str] = []  # notes on downloads since the last `reset`
        self.main_frame: Any = None

    def reset(self) -> None:
        self.blocked, self.redirect, self.downloaded = [], None, []

    async def install(self, context: Any, page: Any) -> None:
        self.main_frame = page.main_frame
        await context.route("**/*", self.filter)
        await context.route_web_socket(re.compile(".*"), self.websocket)

    async def websocket(self, ws: Any) -> None:
        if self.allow.allows(ws.url):
            ws.connect_to_server()
        else:
            await ws.close(code=1008, reason="not allowed")

    async def filter(self, route: Any) -> None:
        from playwright.async_api import Error as PlaywrightError

        request = route.request
        url = request.url
        if url.startswith(("data:", "blob:")):
            await route.continue_()
            return
        main = self._is_main(request)
        try:
            await self._guarded(route, url, main)
        except PlaywrightError:  # the page went away, or the server did: nothing to return
            with anyio.CancelScope(shield=True), contextlib.suppress(PlaywrightError):
                await route.abort("failed")

    def _is_main(self, request: Any) -> bool:
        try:
            return bool(request.is_navigation_request()) and request.frame == self.main_frame
        except Exception:  # a request without a frame (a worker's)
            return False

    async def _guarded(self, route: Any, url: str, main: bool) -> None:
        if not self.allow.allows(url):
            if main:
                self.blocked.append(url)
            await route.abort("blockedbyclient")
            return
        response = await route.fetch(max_redirects=0, timeout=self.timeout * 1000)
        for _ in range(MAX_REDIRECTS):
            location = response.headers.get("location")
            if not (300 <= response.status < 400 and location):
                break
            target = urljoin(url, location)
            await response.dispose()
            if not self.allow.allows(target):
                if main:
                    self.blocked.append(target)
                await route.abort("blockedbyclient")
                return
            if main:  # the tool navigates there itself: a new navigation, routed again
                self.redirect = target
                await route.abort("aborted")
                return
            url = target
            response = await route.fetch(url=target, max_redirects=0,
                                         timeout=self.timeout * 1000)
        else:
            await response.dispose()
            await route.abort("failed")
            return
        if main and _is_download(response.headers):
            self.downloaded.append(await self._save(url, response))
            await route.abort("aborted")
            return
        await route.fulfill(response=response)

    async def _save(self, url: str, response: Any) -> str:
        """Save a download in the workspace; return a note on what happened."""
        name = download_name(url, response.headers)
        declared = response.headers.get("content-length", "")
        if self.workspace is None:
            await response.dispose()
            return f"error: {name} was not saved (no workspace)"
        if declared.isdigit() and int(declared) > self.max_download:
            await response.dispose()
            return (f"error: {name} is {declared} bytes, more than the {self.max_download} "
                    "bytes limit of a download; not saved")
        body = await response.body()
        await response.dispose()
        if len(body) > self.max_download:
            return (f"error: {name} is {len(body)} bytes, more than the {self.max_download} "
                    "bytes limit of a download; not saved")
        saved = await anyio.to_thread.run_sync(_save_new, self.workspace, name, body)
        return f"saved {saved} ({len(body)} bytes) in the working directory"


def _save_new(workspace: Path, name: str, data: bytes) -> str:
    """Write ``data`` under ``name`` or, when that exists, ``stem-1.ext``, … ."""
    stem, dot, ext = name.rpartition(".")
    if not stem:
        stem, dot, ext = name, "", ""
    for n in range(1000):
        candidate = name if n == 0 else f"{stem}-{n}{dot}{ext}"
        if not os.path.lexists(workspace / candidate):
            write_inside(workspace, candidate, data)
            return candidate
    raise FileExistsError(f"too many files named like {name}")
