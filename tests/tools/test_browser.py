"""The browser tools with real Chromium against real pages served on loopback."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web

from engine import Agent, EnvSpec, ScriptedPolicy, Task, TaskView
from engine.policy.toolcalls import make_call
from tests.tools.conftest import needs_chromium
from tools.browser import BrowserEnvironment, BrowserToolbox, _shared, shared_browser

pytestmark = [pytest.mark.anyio, needs_chromium]

HOME = """<!doctype html><html><head><title>Yard home</title></head><body>
<h1>Welcome to the yard</h1>
<p>The secret number is 7341.</p>
<p>Zebras are striped.</p>
<a href="/second">Second page</a>
<a href="http://localhost:{port}/second">Same server, other name</a>
<button onclick="document.getElementById('out').textContent = 'button pressed'">Press me</button>
<div id="out">not yet</div>
<img src="http://localhost:{port}/pixel.png">
</body></html>"""
SECOND = """<!doctype html><html><head><title>Second</title></head><body>
<p>You reached the second page.</p></body></html>"""


@dataclass
class Site:
    url: str
    port: int
    hits: list[str] = field(default_factory=list)


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    hits: list[str] = []
    state: dict[str, int] = {}

    async def home(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text=HOME.format(port=state["port"]), content_type="text/html")

    async def second(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text=SECOND, content_type="text/html")

    async def pixel(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"", content_type="image/png")

    app = web.Application()
    app.router.add_get("/", home)
    app.router.add_get("/second", second)
    app.router.add_get("/pixel.png", pixel)
    runner = web.AppRunner(app)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    state["port"] = port
    try:
        yield Site(f"http://127.0.0.1:{port}/", port, hits)
    finally:
        await runner.cleanup()


def call(name: str, /, **arguments: Any) -> Any:
    return make_call("b1", name, json.dumps(arguments))


def chromium_pids() -> set[int]:
    """Chromium processes descended from this test process."""
    parents: dict[int, int] = {}
    exes: dict[int, str] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            pid = int(entry.name)
            try:
                with open(f"/proc/{pid}/stat") as f:
                    parents[pid] = int(f.read().rpartition(")")[2].split()[1])
                exes[pid] = os.readlink(f"/proc/{pid}/exe")
            except (OSError, IndexError, ValueError):
                continue

    def ours(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return {pid for pid, exe in exes.items() if "chromium" in exe and ours(pid)}


async def test_navigate_read_find_click_and_screenshot(site: Site) -> None:
    env = BrowserEnvironment(allow_hosts=[f"127.0.0.1:{site.port}"], action_timeout=1.5)
    try:
        await env.reset(TaskView("t", "browse"))
        page = await env.step(call("browser_goto", url=site.url))
        assert not page.is_error
        assert "Title: Yard home" in page.content and "The secret number is 7341." in page.content
        found = await env.step(call("browser_find", text="zebras"))
        assert "Zebras are striped." in found.content and "7341" not in found.content
        links = await env.step(call("browser_links"))
        assert f"Second page -> {site.url}second" in links.content
        pressed = await env.step(call("browser_click", text="Press me"))
        assert "button pressed" in pressed.content
        second = await env.step(call("browser_click", text="Second page"))
        assert "Title: Second" in second.content and "reached the second page" in second.content
        assert site.hits.count("/second") == 1
        back = await env.step(call("browser_back"))
        assert "Title: Yard home" in back.content
        shot = await env.step(call("browser_screenshot", name="home.png"))
        assert not shot.is_error and env.workspace is not None
        png = (env.workspace.path / "home.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
        sneaky = await env.step(call("browser_screenshot", name="../escape.png"))
        assert sneaky.is_error
        missing = await env.step(call("browser_click", text="No such link"))
        assert missing.is_error
    finally:
        await env.close()


async def test_hosts_outside_the_allowlist_are_refused(site: Site) -> None:
    env = BrowserEnvironment(allow_hosts=[f"127.0.0.1:{site.port}"])
    try:
        await env.reset(TaskView("t", "browse"))
        await env.step(call("browser_goto", url=site.url))
        # the page's <img> on host "localhost" (same server) was blocked: never reached it
        assert "/pixel.png" not in site.hits
        for url in (f"http://localhost:{site.port}/second", "file:///etc/passwd",
                    "http://example.com/", "javascript:alert(1)", "http://127.0.0.1/",
                    f"http://127.0.0.1:{site.port + 1}/", f"ws://127.0.0.1:{site.port}/"):
            refused = await env.step(call("browser_goto", url=url))
            assert refused.is_error and "not allowed" in refused.content, url
        click = await env.step(call("browser_click", text="Same server, other name"))
        assert click.is_error and "not allowed" in click.content
        assert "/second" not in site.hits
    finally:
        await env.close()
    # control: with "localhost" allowed, the same page does load the image
    env = BrowserEnvironment(allow_hosts=[f"127.0.0.1:{site.port}", f"localhost:{site.port}"])
    try:
        await env.reset(TaskView("t", "browse"))
        await env.step(call("browser_goto", url=site.url))
        assert "/pixel.png" in site.hits
    finally:
        await env.close()


async def test_page_limit(site: Site) -> None:
    env = BrowserEnvironment(allow_hosts=[f"127.0.0.1:{site.port}"], max_pages=2)
    try:
        await env.reset(TaskView("t", "browse"))
        assert not (await env.step(call("browser_goto", url=site.url))).is_error
        assert not (await env.step(call("browser_goto", url=site.url + "second"))).is_error
        third = await env.step(call("browser_goto", url=site.url))
        assert third.is_error and "page limit" in third.content
    finally:
        await env.close()


async def test_one_chromium_shared_by_rollout_contexts(site: Site, tmp_path: Path) -> None:
    assert chromium_pids() == set()
    boxes = [BrowserToolbox([f"127.0.0.1:{site.port}"]) for _ in range(2)]
    async with shared_browser() as browser:
        async with anyio.create_task_group() as tg:
            for box in boxes:
                tg.start_soon(box.start, TaskView("t", "p"), tmp_path)
        assert all(b._context.browser is browser for b in boxes)
        assert len(browser.contexts) == 2
        assert chromium_pids()  # the real thing runs, as our descendant
        await boxes[0].call("browser_goto", {"url": site.url})
        await boxes[1].call("browser_goto", {"url": site.url + "second"})
        # contexts are separate: each has its own page
        assert "Yard home" in (await boxes[0].call("browser_text", {})).content
        assert "Second" in (await boxes[1].call("browser_text", {})).content
        for box in boxes:
            await box.aclose()
        assert browser.is_connected() and len(browser.contexts) == 0
    assert _shared().browser is None
    assert chromium_pids() == set()  # no chromium left behind


async def test_engine_rollout_through_registered_browser_environment(
        make_engine: Any, site: Site) -> None:
    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        if messages[-1]["role"] == "tool":
            number = messages[-1]["content"].split("secret number is ")[1].split(".")[0]
            return f"<answer>{number}</answer>"
        return {"tool_calls": [{"name": "browser_goto", "arguments": {"url": site.url}}]}

    async with make_engine() as engine:
        run = await engine.run([Task("t", "What is the secret number?", "7341")],
                               Agent(ScriptedPolicy(handler)),
                               environment=EnvSpec("browser",
                                                   {"allow_hosts": [f"127.0.0.1:{site.port}"]}),
                               samples=2)
        assert [r.reward for r in await run.rollouts()] == [1.0, 1.0]
