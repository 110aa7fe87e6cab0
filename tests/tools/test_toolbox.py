"""Toolboxes composed into one environment sharing the rollout's workspace."""

from __future__ import annotations

import json
import secrets
from typing import Any

import anyio
import pytest

from engine import TaskView
from engine.policy.toolcalls import make_call
from tests.tools.conftest import needs_bwrap, needs_chromium
from tools._toolbox import FunctionToolbox, ToolboxEnvironment
from tools.browser import BrowserToolbox
from tools.code import LocalCode

pytestmark = pytest.mark.anyio


def call(name: str, /, **arguments: Any) -> Any:
    return make_call("x1", name, json.dumps(arguments))


async def nap(seconds: float) -> str:
    """Take a while."""
    await anyio.sleep(seconds)
    return "rested"


def double(n: int) -> int:
    """Double a number."""
    return 2 * n


async def test_function_tools_deadline_and_errors() -> None:
    env = ToolboxEnvironment([FunctionToolbox([nap, double])], deadline=0.5)
    try:
        intro = await env.reset(TaskView("t", "the prompt"))
        assert intro.content == "the prompt"
        assert (await env.step(call("double", n=21))).content == "42"
        bad = await env.step(call("double", n="many"))
        assert bad.is_error and "bad arguments" in bad.content
        slow = await env.step(call("nap", seconds=30))
        assert slow.is_error and "did not finish within 0.5 s" in slow.content
        broken = make_call("x2", "double", "{not json")
        assert (await env.step(broken)).is_error
    finally:
        await env.close()
    with pytest.raises(ValueError, match="double"):
        ToolboxEnvironment([FunctionToolbox([double]), FunctionToolbox([double])])


@needs_bwrap
@needs_chromium
async def test_browser_screenshot_is_readable_by_the_code_jail() -> None:
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="<h1>shot me</h1>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/", page)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/"
    env = ToolboxEnvironment([BrowserToolbox([f"127.0.0.1:{runner.addresses[0][1]}"]), LocalCode(),
                              FunctionToolbox([double])])
    try:
        await env.reset(TaskView("t", "p"))
        assert {"browser_goto", "run_python", "double"} <= {t["function"]["name"]
                                                           for t in env.tools}
        assert "shot me" in (await env.step(call("browser_goto", url=url))).content
        assert not (await env.step(call("browser_screenshot", name="shot.png"))).is_error
        obs = await env.step(call("run_python", code=(
            "data = open('shot.png', 'rb').read()\nprint(data[1:4].decode(), len(data) > 1000)")))
        assert obs.content.strip() == "PNG True"
    finally:
        await env.close()
        await runner.cleanup()


@needs_bwrap
@needs_chromium
async def test_a_symlink_planted_by_the_jail_does_not_redirect_host_writes() -> None:
    target = anyio.Path(f"/tmp/drillyard-target-{secrets.token_hex(4)}")
    await target.write_text("precious")
    env = ToolboxEnvironment([BrowserToolbox(), LocalCode()])
    try:
        await env.reset(TaskView("t", "p"))
        planted = await env.step(call("run_shell", command=f"ln -s {target} shot.png && echo ok"))
        assert planted.content.strip() == "ok"
        shot = await env.step(call("browser_screenshot", name="shot.png"))
        assert shot.is_error and "cannot write" in shot.content
    finally:
        await env.close()
        assert await target.read_text() == "precious"
        await target.unlink()


def test_environments_are_registered_by_name() -> None:
    import tools.browser
    import tools.code
    import tools.mcp
    from engine import registry

    assert registry.resolve("environments", "code") is tools.code.LocalCodeEnvironment
    assert registry.resolve("environments", "code.local") is tools.code.LocalCodeEnvironment
    assert registry.resolve("environments", "code.e2b") is tools.code.E2BCodeEnvironment
    assert registry.resolve("environments", "browser") is tools.browser.BrowserEnvironment
    assert registry.resolve("environments", "mcp") is tools.mcp.MCPEnvironment
