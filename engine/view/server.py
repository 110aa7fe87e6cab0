"""The viewer's HTTP server: aiohttp on loopback, every request behind a token.

As in Jupyter, a random token is made at start and printed in the URL; the
first request that carries it (``?token=``) gets an HttpOnly, SameSite=Strict
cookie and is redirected to the same page without it. A request with neither
the cookie nor the token (or an ``Authorization: token …`` header) gets 401
and no data; one whose Host header is not a loopback name (or an allowed
host) gets 403, which stops DNS rebinding. Tokens are compared in constant
time. Every response carries a strict Content-Security-Policy (script and
style only from the viewer itself), no CORS headers, and
``Cross-Origin-Resource-Policy: same-origin``, so no other origin — a page
an agent's browser tool opens, for one — can read anything.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import orjson
import structlog
from aiohttp import web

from engine.errors import ConfigError
from engine.resources import AsyncResource
from engine.view.pages import (
    MAX_MESSAGES_PER_PAGE,
    MESSAGES_PER_PAGE,
    Links,
    NotFound,
    Page,
    chart_svg,
    compare_page,
    groups_page,
    rollout_page,
    rollouts_page,
    run_page,
    runs_page,
)
from engine.view.queries import StoreReader
from engine.view.render import live_json, not_found, render, static_file

log = structlog.get_logger("drillyard.view")

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_ENV = "DRILLYARD_VIEW_TOKEN"
"""Set it to choose the token (a command line would show it to every process)."""
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self';"
    " connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-store",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def host_name(host_header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower-case."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _int(request: web.Request, name: str, default: int) -> int:
    try:
        return int(request.query.get(name, default))
    except ValueError as exc:
        raise web.HTTPBadRequest(text=f"{name} must be a whole number") from exc


class Viewer(AsyncResource):
    """Serves a store's runs: ``async with Viewer("runs.db") as v: print(v.url)``.

    ``port=0`` picks a free port. ``token`` defaults to ``$DRILLYARD_VIEW_TOKEN``
    or a fresh random one. ``allow_hosts`` adds Host names beyond loopback
    (when serving on another interface, behind your own access control).
    """

    def __init__(
        self,
        store: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        allow_hosts: Iterable[str] = (),
    ) -> None:
        self.store = Path(store)
        self.host = host
        self.port = port
        self.token = token or os.environ.get(TOKEN_ENV) or secrets.token_urlsafe(32)
        self.allowed_hosts = LOOPBACK_NAMES | {h.lower() for h in allow_hosts}
        if host not in ("0.0.0.0", "::", ""):
            self.allowed_hosts |= {host.lower()}
        self.reader = StoreReader(self.store)
        self._runner: web.AppRunner | None = None
        self._cookie_value = hmac.new(self.token.encode(), b"cookie", hashlib.sha256).hexdigest()

    @property
    def cookie_name(self) -> str:
        return f"drillyard-view-{self.port}"

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The URL to open: it carries the token."""
        return f"{self.base_url}/?token={self.token}"

    async def __aenter__(self) -> Viewer:
        await self.reader.open()
        try:
            self._runner = web.AppRunner(self.app(), handle_signals=False, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.port)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigError(
                    f"viewer on {self.host}:{self.port}",
                    f"cannot listen: {exc}",
                    "pass another --port (0 picks a free one) or --host",
                ) from exc
        except BaseException:
            await self.aclose()
            raise
        self.port = self._runner.addresses[0][1]
        return self

    async def aclose(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        await self.reader.aclose()

    # ---- the guard -------------------------------------------------------------

    def _token_ok(self, given: str | None, expected: str) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), expected.encode())

    def authorized(self, request: web.Request) -> bool:
        if self._token_ok(request.cookies.get(self.cookie_name), self._cookie_value):
            return True
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() in ("token", "bearer") and self._token_ok(value.strip(), self.token):
            return True
        return self._token_ok(request.query.get("token"), self.token)

    @web.middleware
    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if host_name(request.host) not in self.allowed_hosts:
            response: web.StreamResponse = web.Response(
                status=403, text="403: this viewer answers only to its own host name\n"
            )
        elif not self.authorized(request):
            response = web.Response(
                status=401,
                text="401: a token is needed. Open the URL `python -m engine view` printed "
                "(it ends in ?token=…).\n",
            )
        elif "token" in request.query:
            query = {k: v for k, v in request.query.items() if k != "token"}
            response = web.Response(
                status=303, headers={"Location": str(request.rel_url.with_query(query))}
            )
            response.set_cookie(
                self.cookie_name, self._cookie_value, httponly=True, samesite="Strict", path="/"
            )
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                response = web.Response(status=exc.status, text=exc.text)
            except NotFound as exc:
                response = web.Response(
                    status=404, text=not_found(str(exc)), content_type="text/html"
                )
            except Exception:
                log.exception("viewer page failed", path=request.path)
                response = web.Response(status=500, text="500: the viewer failed; see its log\n")
        response.headers.update(SECURITY_HEADERS)
        return response

    # ---- routes ------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard])
        app.router.add_get("/", self.runs)
        app.router.add_get("/run", self.run)
        app.router.add_get("/run/rollouts", self.rollouts)
        app.router.add_get("/run/groups", self.groups)
        app.router.add_get("/run/compare", self.compare)
        app.router.add_get("/run/{chart:(gantt|throughput)}.svg", self.chart)
        app.router.add_get("/rollout", self.rollout)
        app.router.add_get("/rollout/message.json", self.message)
        app.router.add_get("/static/{name}", self.static)
        app.router.add_get("/favicon.ico", self.favicon)
        return app

    def _respond(self, request: web.Request, page: Page) -> web.Response:
        if request.query.get("live") == "1":
            return web.Response(body=live_json(page), content_type="application/json")
        return web.Response(text=render(page, store=str(self.store)), content_type="text/html")

    @staticmethod
    def _id(request: web.Request, name: str = "id") -> str:
        value = request.query.get(name)
        if not value:
            raise web.HTTPBadRequest(text=f"?{name}= is needed")
        return value

    async def runs(self, request: web.Request) -> web.Response:
        before = request.query.get("before")
        try:
            cursor = (float(before), request.query.get("before_id", "")) if before else None
        except ValueError as exc:
            raise web.HTTPBadRequest(text="before must be a number") from exc
        async with self.reader.snapshot():
            page = await runs_page(self.reader, cursor)
        return self._respond(request, page)

    async def run(self, request: web.Request) -> web.Response:
        by = [b.strip() for b in request.query.get("by", "").split(",") if b.strip()]
        async with self.reader.snapshot():
            page = await run_page(self.reader, self._id(request), k=request.query.get("k"), by=by)
        return self._respond(request, page)

    async def rollouts(self, request: web.Request) -> web.Response:
        async with self.reader.snapshot():
            page = await rollouts_page(
                self.reader,
                self._id(request),
                after=_int(request, "after", -1) if "after" in request.query else None,
                state=request.query.get("state") or None,
                task_id=request.query.get("task") or None,
            )
        return self._respond(request, page)

    async def groups(self, request: web.Request) -> web.Response:
        async with self.reader.snapshot():
            page = await groups_page(
                self.reader, self._id(request), after=request.query.get("after", "")
            )
        return self._respond(request, page)

    async def compare(self, request: web.Request) -> web.Response:
        async with self.reader.snapshot():
            page = await compare_page(
                self.reader,
                self._id(request),
                self._id(request, "with"),
                after=request.query.get("after", ""),
                only_diff=request.query.get("only") == "diff",
            )
        return self._respond(request, page)

    async def chart(self, request: web.Request) -> web.Response:
        async with self.reader.snapshot():
            svg = await chart_svg(
                self.reader, self._id(request), request.match_info["chart"], time.time()
            )
        return web.Response(text=svg, content_type="image/svg+xml")

    async def rollout(self, request: web.Request) -> web.Response:
        tail = request.query.get("tail")
        async with self.reader.snapshot():
            page = await rollout_page(
                self.reader,
                self._id(request),
                after=_int(request, "after", -1),
                show_answer=request.query.get("answer") == "1",
                tail=int(tail) if tail and tail.lstrip("-").isdigit() else None,
                links=Links(),
                page_size=min(max(_int(request, "n", MESSAGES_PER_PAGE), 1), MAX_MESSAGES_PER_PAGE),
            )
        return self._respond(request, page)

    async def message(self, request: web.Request) -> web.Response:
        rollout_id, seq = self._id(request), _int(request, "seq", -1)
        async with self.reader.snapshot():
            r = await self.reader.rollout(rollout_id)
            m = await self.reader.message(r.num, seq) if r is not None else None
        if r is None or m is None:
            raise NotFound(f"no message {seq} in rollout {rollout_id!r}")
        body = m.to_dict()
        return web.Response(
            body=orjson.dumps(body, option=orjson.OPT_INDENT_2), content_type="application/json"
        )

    async def favicon(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        try:
            data = static_file(name)
        except FileNotFoundError as exc:
            raise web.HTTPNotFound() from exc
        kind = "text/css" if name.endswith(".css") else "text/javascript"
        return web.Response(body=data, content_type=kind)
