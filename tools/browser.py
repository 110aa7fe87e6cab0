"""A web browser for agents: playwright driving Debian's Chromium.

    box = BrowserToolbox(allow_hosts=["127.0.0.1", "localhost"])
    env = ToolboxEnvironment([box])          # or with other toolboxes (see tools._toolbox)

Tools: ``browser_goto(url)``, ``browser_text()``, ``browser_find(text)``,
``browser_links()``, ``browser_click(text | selector)``, ``browser_back()``,
``browser_screenshot(name)`` (a PNG saved in the rollout's workspace).

One Chromium per event loop (so one per engine, or per backend worker),
shared by reference count; one browser *context* (cookies, cache, pages) per
rollout. `shared_browser()` holds the Chromium open across rollouts
(``async with shared_browser(): ...``); without it, it closes with the last context.
Every request of a page (navigations, redirects hop by hop, sub-resources,
WebSockets) is checked against ``allow_hosts``, host *and* port (see
`tools._netguard`: ``"example.org"`` means its ports 80 and 443,
``"127.0.0.1:8123"`` one port, ``"host:*"`` any); the default allows nothing,
and an environment pins what it serves itself (the ``gaia`` environment: its
web server, exactly). After every navigation the page's URL is checked again.
Only http(s) URLs are allowed; WebRTC may not use UDP. A download (a link to
a file the browser does not show) is saved in the workspace, at most
``max_download`` bytes. Limits: pages visited per rollout (``max_pages``),
seconds per navigation and per action, characters of text returned. Needs
``pip install playwright`` and the ``chromium`` Debian package (``playwright
install`` is never needed).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio

from engine import registry
from engine.environment import Observation, ToolSpec
from engine.errors import ConfigError
from engine.tasks import TaskView
from tools._netguard import MAX_REDIRECTS, Allowlist, NetGuard
from tools._toolbox import ToolboxBase, ToolboxEnvironment
from tools.workspace import NotAFile, write_inside

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--webrtc-ip-handling-policy=disable_non_proxied_udp"]
_SHOT_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,80}$")
_INTERRUPTED = re.compile(r'Navigation to "(?P<asked>[^"]*)" is interrupted by another '
                          r'navigation to "(?P<other>[^"]*)"')
_SETTLE_ATTEMPTS = 5


def _tool(name: str, description: str, props: dict[str, Any] | None = None,
          required: Sequence[str] = ()) -> ToolSpec:
    return {"type": "function", "function": {"name": name, "description": description,
            "parameters": {"type": "object", "properties": props or {},
                           "required": list(required)}}}


BROWSER_SPECS: list[ToolSpec] = [
    _tool("browser_goto", "Open a web page (http or https URL) and return its title and text.",
          {"url": {"type": "string"}}, ["url"]),
    _tool("browser_text", "Return the visible text of the current page."),
    _tool("browser_find", "Find the lines of the current page's text that contain a phrase "
          "(case-insensitive).", {"text": {"type": "string"}}, ["text"]),
    _tool("browser_links", "List the links of the current page (text and URL)."),
    _tool("browser_click", "Click a link or button by its visible text, or an element by CSS "
          "selector; returns the resulting page.",
          {"text": {"type": "string"}, "selector": {"type": "string"}}),
    _tool("browser_back", "Go back to the previous page."),
    _tool("browser_screenshot", "Save a PNG screenshot of the current page in the working "
          "directory and return its file name.",
          {"name": {"type": "string", "description": "file name, e.g. page.png"}}),
]


class _Shared:
    """The Chromium of one event loop, open while anyone holds a reference."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.refs = 0
        self.playwright: Any = None
        self.browser: Any = None

    async def acquire(self, executable: str) -> Any:
        async with self.lock:
            if self.browser is None or not self.browser.is_connected():
                await self._shutdown()
                try:
                    from playwright.async_api import async_playwright
                except ModuleNotFoundError as exc:
                    raise ConfigError("browser", f"needs the package '{exc.name}'",
                                      "pip install 'drillyard[browser]'") from exc
                if not await anyio.Path(executable).exists():
                    raise ConfigError("browser", f"no Chromium at {executable}",
                                      "apt-get install -y chromium")
                self.playwright = await async_playwright().start()
                try:
                    self.browser = await self.playwright.chromium.launch(
                        executable_path=executable, args=CHROMIUM_ARGS)
                except BaseException:
                    await self._shutdown()
                    raise
            self.refs += 1
            return self.browser

    async def release(self) -> None:
        async with self.lock:
            self.refs -= 1
            if self.refs <= 0:
                self.refs = 0
                await self._shutdown()

    async def _shutdown(self) -> None:
        with anyio.CancelScope(shield=True):
            browser, pw, self.browser, self.playwright = self.browser, self.playwright, None, None
            try:
                if browser is not None:
                    await browser.close()
            finally:
                if pw is not None:
                    await pw.stop()


_SHARED: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Shared] = (
    weakref.WeakKeyDictionary())


def _shared() -> _Shared:
    loop = asyncio.get_running_loop()
    if loop not in _SHARED:
        _SHARED[loop] = _Shared()
    return _SHARED[loop]


@asynccontextmanager
async def shared_browser(executable: str = CHROMIUM) -> AsyncIterator[Any]:
    """Keep this event loop's Chromium open for the duration (yields the playwright Browser)."""
    shared = _shared()
    browser = await shared.acquire(executable)
    try:
        yield browser
    finally:
        await shared.release()


class BrowserToolbox(ToolboxBase):
    """Browser tools over one Chromium context per rollout (see the module doc)."""

    specs = BROWSER_SPECS

    def __init__(self, allow_hosts: Sequence[str] = (), *, max_pages: int = 30,
                 nav_timeout: float = 20.0, action_timeout: float = 5.0, max_chars: int = 8000,
                 max_download: int = 20 * 1024 * 1024, executable: str = CHROMIUM) -> None:
        try:
            self.allow = Allowlist.parse(allow_hosts)
        except ValueError as exc:
            raise ConfigError("browser", str(exc), "write 'host', 'host:port' or 'host:*'"
                              ) from None
        self.max_download = max_download
        self.max_pages = max_pages
        self.nav_timeout = nav_timeout
        self.action_timeout = action_timeout
        self.max_chars = max_chars
        self.executable = executable
        self.workspace: Path | None = None
        self.pages_visited = 0
        self.guard: NetGuard | None = None
        self._context: Any = None
        self._page: Any = None
        self._shared: _Shared | None = None

    def pin(self, *urls: str) -> None:
        """Allow exactly the origins (host and port) of ``urls`` too, replacing
        those pinned before: how an environment lets its own server in."""
        self.allow.pinned.clear()
        for url in urls:
            self.allow.pin(url)

    def allowed(self, url: str) -> bool:
        return self.allow.allows(url)

    async def start(self, task: TaskView, workspace: Path) -> None:
        await self.aclose()
        self.workspace, self.pages_visited = workspace, 0
        self.guard = NetGuard(self.allow, workspace, max_download=self.max_download,
                              timeout=self.nav_timeout)
        shared = _shared()
        browser = await shared.acquire(self.executable)
        self._shared = shared
        try:
            self._context = await browser.new_context(
                accept_downloads=False, service_workers="block", java_script_enabled=True)
            self._context.set_default_timeout(self.action_timeout * 1000)
            self._context.set_default_navigation_timeout(self.nav_timeout * 1000)
            self._page = await self._context.new_page()
            await self.guard.install(self._context, self._page)
        except BaseException:
            await self.aclose()
            raise

    async def call(self, name: str, arguments: dict[str, Any]) -> Observation:
        if self._page is None:
            return Observation.error("the browser has not been started (reset first)")
        from playwright.async_api import Error as PlaywrightError

        try:
            return await self._dispatch(name, arguments)
        except PlaywrightError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            return Observation.error(f"{name}: {first}")

    async def _dispatch(self, name: str, args: dict[str, Any]) -> Observation:
        page = self._page
        if name == "browser_goto":
            url = args.get("url")
            if not isinstance(url, str) or not url:
                return Observation.error('browser_goto needs {"url": "http://..."}')
            if not self.allowed(url) or url.startswith(("ws:", "wss:")):
                return Observation.error(f"{url} is not allowed: only http(s) URLs on these "
                                         f"hosts and ports: {self.allow.describe()}")
            if (err := self._count_page()) is not None:
                return err
            return await self._navigate(functools.partial(self._goto_settled, url))
        if name == "browser_text":
            return await self._describe()
        if name == "browser_find":
            needle = args.get("text")
            if not isinstance(needle, str) or not needle.strip():
                return Observation.error('browser_find needs {"text": "<phrase>"}')
            lines = [ln.strip() for ln in (await page.inner_text("body")).splitlines()
                     if needle.lower() in ln.lower()]
            if not lines:
                return Observation(f"'{needle}' does not occur on {page.url}")
            return Observation(self._clip(f"{len(lines)} line(s) with '{needle}':\n"
                                          + "\n".join(lines)))
        if name == "browser_links":
            links = await page.eval_on_selector_all(
                "a[href]", "els => els.map(e => [e.innerText.trim(), e.href])")
            body = "\n".join(f"{text or '(no text)'} -> {href}" for text, href in links)
            return Observation(self._clip(body or "no links on this page"))
        if name == "browser_click":
            return await self._click(args)
        if name == "browser_back":
            if (err := self._count_page()) is not None:
                return err
            return await self._navigate(lambda: page.go_back(wait_until="load"))
        if name == "browser_screenshot":
            name = args.get("name") or f"screenshot-{self.pages_visited}.png"
            return await self._screenshot(name)
        return Observation.error(f"unknown tool '{name}'")

    async def _click(self, args: dict[str, Any]) -> Observation:
        page, text, selector = self._page, args.get("text"), args.get("selector")
        if isinstance(selector, str) and selector:
            target = page.locator(selector).first
        elif isinstance(text, str) and text:
            target = (page.get_by_role("link", name=text)
                      .or_(page.get_by_role("button", name=text))
                      .or_(page.get_by_text(text, exact=True))).first
        else:
            return Observation.error('browser_click needs {"text": "..."} or {"selector": "..."}')
        if (err := self._count_page()) is not None:
            return err

        async def click() -> None:
            await target.click()
            await page.wait_for_load_state("load")

        return await self._navigate(click)

    async def _navigate(self, start: Callable[[], Awaitable[Any]]) -> Observation:
        """Run a navigation; follow allowed main-frame redirects as new navigations;
        report downloads and refusals; check where the page ended up."""
        from playwright.async_api import Error as PlaywrightError

        guard, page = self.guard, self._page
        assert guard is not None
        guard.reset()
        action: Callable[[], Awaitable[Any]] | None = start
        for _ in range(MAX_REDIRECTS + 1):
            if action is None:
                break
            try:
                await action()
            except PlaywrightError:
                if guard.redirect is None and not guard.blocked and not guard.downloaded:
                    raise
            action = None
            if guard.redirect is not None and not guard.blocked:
                target, guard.redirect = guard.redirect, None
                action = functools.partial(self._goto_settled, target)
        if guard.downloaded:
            note = guard.downloaded[-1]
            if note.startswith("error: "):
                return Observation.error(f"download refused: {note[7:]}")
            return Observation(f"{note} (read it with your file tools)")
        if guard.blocked or action is not None or not self._at_allowed_url():
            where = guard.blocked[-1] if guard.blocked else page.url
            why = "too many redirects" if action is not None else "which is not allowed"
            await self._blank()
            return Observation.error(f"that led to {where}, {why} (allowed: "
                                     f"{self.allow.describe()}); the page is now blank")
        return await self._describe()

    async def _goto_settled(self, url: str) -> None:
        """``page.goto`` that outlasts navigations still settling in Chromium.

        A navigation the guard aborted or Playwright reported as interrupted is
        not cancelled in Chromium: it may still commit (an error page, a blank
        page, the same URL asked for again) and interrupt the next ``goto``. When
        the interrupting navigation goes where this one was asked to, the page
        gets there: wait for it to load and take it. Otherwise let it load and
        ask again. Every request is routed through the guard either way."""
        from playwright.async_api import Error as PlaywrightError

        for attempt in range(_SETTLE_ATTEMPTS):
            try:
                await self._page.goto(url, wait_until="load")
                return
            except PlaywrightError as exc:
                interrupted = _INTERRUPTED.search(str(exc))
                if interrupted is None or attempt == _SETTLE_ATTEMPTS - 1:
                    raise
                with contextlib.suppress(PlaywrightError):
                    await self._page.wait_for_load_state("load")
                if interrupted["asked"] == interrupted["other"] == self._page.url:
                    return

    def _at_allowed_url(self) -> bool:
        url = self._page.url
        return url == "about:blank" or url.startswith("data:") or self.allowed(url)

    async def _blank(self) -> None:
        from playwright.async_api import Error as PlaywrightError

        with contextlib.suppress(PlaywrightError):
            await self._goto_settled("about:blank")

    async def _screenshot(self, name: Any) -> Observation:
        if not isinstance(name, str) or not _SHOT_NAME.match(name) or name.startswith("."):
            return Observation.error("browser_screenshot: name must be a plain file name like "
                                     "page.png (letters, digits, . _ -)")
        if not name.lower().endswith(".png"):
            name += ".png"
        assert self.workspace is not None
        data = await self._page.screenshot()
        try:
            await anyio.to_thread.run_sync(write_inside, self.workspace, name, data)
        except NotAFile as exc:
            return Observation.error(f"browser_screenshot: cannot write {name}: {exc}")
        except OSError as exc:
            return Observation.error(f"browser_screenshot: cannot write {name}: {exc.strerror}")
        return Observation(f"saved screenshot {name} of {self._page.url} in the working directory",
                           info={"file": name})

    def _count_page(self) -> Observation | None:
        if self.pages_visited >= self.max_pages:
            return Observation.error(f"page limit reached ({self.max_pages} pages this episode)")
        self.pages_visited += 1
        return None

    async def _describe(self) -> Observation:
        """The page's URL, title and text; a page a script took somewhere not
        allowed (a refused navigation's error page) is blanked instead."""
        from playwright.async_api import Error as PlaywrightError

        page = self._page
        for _ in range(3):
            before = page.url
            if not self._at_allowed_url():
                await self._blank()
                return Observation.error(f"the page went to {before}, which is not allowed "
                                         f"(allowed: {self.allow.describe()}); it is now blank")
            try:
                text = await page.inner_text("body") if await page.query_selector("body") else ""
                title = await page.title()
            except PlaywrightError as exc:  # a script navigated while we read: read again
                if "context was destroyed" not in str(exc):
                    raise
                await page.wait_for_load_state("load")
                continue
            if page.url == before:
                return Observation(self._clip(f"URL: {before}\nTitle: {title}\n\n{text}"),
                                   info={"url": before})
        return Observation.error("the page kept navigating while it was read; try browser_text")

    def _clip(self, text: str) -> str:
        if len(text) <= self.max_chars:
            return text
        return text[:self.max_chars] + f"\n[… {len(text) - self.max_chars} more characters]"

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            context, shared = self._context, self._shared
            self._context = self._page = self._shared = None
            try:
                if context is not None:
                    await context.close()
            finally:
                if shared is not None:
                    await shared.release()


class BrowserEnvironment(ToolboxEnvironment):
    """Environment ``browser``: `BrowserToolbox` with its options as config."""

    def __init__(self, allow_hosts: list[str] | None = None, max_pages: int = 30,
                 nav_timeout: float = 20.0, action_timeout: float = 5.0,
                 max_chars: int = 8000, max_download: int = 20 * 1024 * 1024) -> None:
        box = BrowserToolbox(allow_hosts or (), max_pages=max_pages,
                             nav_timeout=nav_timeout, action_timeout=action_timeout,
                             max_chars=max_chars, max_download=max_download)
        super().__init__([box], deadline=nav_timeout + action_timeout + 10)


registry.register("environments", "browser", BrowserEnvironment)
