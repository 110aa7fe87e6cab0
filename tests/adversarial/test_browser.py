"""The browser under attack: other loopback ports, redirects, script-made
navigations, WebSockets, WebRTC and downloads. Real Chromium, real servers."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from gaia.environment import GaiaEnvironment
from tests.adversarial.conftest import (
    Hostile,
    assert_contained,
    assert_nothing_left,
    assert_responsive,
    hostile_rollout,
    needs_chromium,
)
from tools.browser import BrowserEnvironment

pytestmark = [pytest.mark.anyio, needs_chromium]
SECRET = "MODEL-SERVER-STATE-1337"


@dataclass
class Server:
    url: str
    port: int
    hits: list[str] = field(default_factory=list)


async def serve(routes: dict[str, Any]) -> tuple[web.AppRunner, Server]:
    server = Server("", 0)

    def wrap(handler: Any) -> Any:
        async def inner(request: web.Request) -> web.StreamResponse:
            server.hits.append(request.path)
            result = handler(request, server) if callable(handler) else handler
            if isinstance(result, web.HTTPException):
                raise result
            if isinstance(result, web.StreamResponse):
                return result
            return web.Response(text=result, content_type="text/html")
        return inner

    app = web.Application()
    for path, handler in routes.items():
        app.router.add_route("*", path, wrap(handler))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    server.port = int(runner.addresses[0][1])
    server.url = f"http://127.0.0.1:{server.port}"
    return runner, server


@pytest.fixture
async def model_server() -> AsyncIterator[Server]:
    """Stands in for a vLLM server on another loopback port: it must stay unreached."""
    runner, server = await serve({
        "/metrics": f"<html><body>{SECRET} vllm:num_requests_running 3</body></html>",
        "/server_info": f"<html><body>{SECRET}</body></html>",
        "/pause": f"<html><body>{SECRET} paused</body></html>",
        "/ws": f"{SECRET}",
    })
    try:
        yield server
    finally:
        await runner.cleanup()


@pytest.fixture
async def allowed_site(model_server: Server) -> AsyncIterator[Server]:
    """The site the agent may visit; its pages lead to the model server every way they can."""
    other = model_server.url

    def redirect_to(target: str) -> Any:
        return lambda request, server: web.HTTPFound(target)

    page = "<html><head><title>{title}</title>{head}</head><body>{body}</body></html>"
    routes = {
        "/": page.format(title="Allowed home", head="", body="<p>welcome home</p>"
                         "<a href='/hop1'>hop</a>"),
        "/to-metrics": redirect_to(f"{other}/metrics"),
        "/hop1": redirect_to("/hop2"),
        "/hop2": redirect_to(f"{other}/server_info"),
        "/hop-ok": redirect_to("/"),
        "/img": page.format(title="img", head="", body=f"<img src='/to-metrics'>"
                            f"<img src='{other}/metrics'><iframe src='/to-metrics'></iframe>"),
        "/js": page.format(title="js", head="", body=f"<script>location.href = "
                           f"'{other}/metrics'</script>"),
        "/meta": page.format(title="meta", head=f"<meta http-equiv='refresh' content='0; "
                             f"url={other}/metrics'>", body="refreshing"),
        "/form": page.format(title="form", head="", body=f"<form id=f method=post action="
                             f"'{other}/pause'><button>Pause</button></form>"),
        "/socket": page.format(title="socket", head="", body=f"<script>const ws = new "
                               f"WebSocket('ws://127.0.0.1:{model_server.port}/ws');"
                               f"ws.onopen = () => document.title = 'open';</script>"),
        "/file.csv": lambda r, s: web.Response(
            body=b"a,b\n1,2\n", content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="table.csv"'}),
        "/huge.bin": lambda r, s: web.Response(
            body=b"\0" * (30 << 20), content_type="application/octet-stream"),
    }
    runner, server = await serve(routes)
    try:
        yield server
    finally:
        await runner.cleanup()


def goto(url: str) -> tuple[str, dict[str, Any]]:
    return ("browser_goto", {"url": url})


def browser_at(site: Server) -> Any:
    return lambda: BrowserEnvironment(allow_hosts=[f"127.0.0.1:{site.port}"], nav_timeout=8,
                                      action_timeout=3)


async def test_the_default_browser_reaches_no_loopback_port(
        model_server: Server, store: Path, run_tmp: Path) -> None:
    h = await hostile_rollout(store, BrowserEnvironment, [
        goto(f"{model_server.url}/metrics"), goto(f"http://localhost:{model_server.port}/metrics"),
        goto(f"http://[::1]:{model_server.port}/metrics")])
    assert model_server.hits == []
    assert all(SECRET not in r["content"] for r in h.results)
    assert_contained(h, "browser_goto")
    assert_nothing_left(h, run_tmp)


async def test_gaia_pins_exactly_its_own_web_server(
        model_server: Server, store: Path, run_tmp: Path) -> None:
    def own(h: Hostile) -> tuple[str, dict[str, Any]]:
        return goto(f"{h.env.server.url}/lighthouse.html")

    h = await hostile_rollout(
        store, lambda: GaiaEnvironment(tools=["files", "browser"]),
        [own, goto(f"{model_server.url}/metrics"), goto(f"http://localhost:{model_server.port}/")])
    assert "Halvard Point Lighthouse" in h.results[0]["content"]
    assert model_server.hits == []
    assert all(SECRET not in r["content"] for r in h.results)
    assert_contained(h, "browser_goto")
    assert_nothing_left(h, run_tmp)


async def test_every_redirect_and_script_navigation_is_checked(
        allowed_site: Server, model_server: Server, store: Path, run_tmp: Path) -> None:
    base = allowed_site.url
    steps = [goto(f"{base}/to-metrics"), goto(f"{base}/hop1"), goto(f"{base}/hop-ok"),
             goto(f"{base}/img"), goto(f"{base}/js"), goto(f"{base}/meta"),
             goto(f"{base}/form"), ("browser_click", {"text": "Pause"}),
             ("browser_text", {}), goto(f"{base}/")]
    h = await hostile_rollout(store, browser_at(allowed_site), steps)
    assert model_server.hits == [], model_server.hits
    assert all(SECRET not in r["content"] for r in h.results), h.results
    assert h.results[0]["is_error"] and h.results[1]["is_error"]
    assert not h.results[2]["is_error"] and "welcome home" in h.results[2]["content"], h.results[2]
    assert "welcome home" in h.results[-1]["content"], h.results[-1]
    for r in h.results:
        for line in r["content"].splitlines():
            if line.startswith("URL: "):
                assert line.startswith(f"URL: {base}") or line == "URL: about:blank", line
    assert_contained(h, "browser_goto", 0)
    assert_responsive(h)
    assert_nothing_left(h, run_tmp)


async def test_websockets_follow_the_allowlist(
        allowed_site: Server, model_server: Server, store: Path, run_tmp: Path) -> None:
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    listener = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    probe = (f"<script>new WebSocket('ws://127.0.0.1:{port}/x');"
             f"const pc = new RTCPeerConnection({{iceServers: [{{urls: "
             f"'stun:127.0.0.1:{udp.getsockname()[1]}'}}, {{urls: 'turn:127.0.0.1:{port}"
             f"?transport=tcp', username: 'u', credential: 'p'}}]}});"
             "pc.createDataChannel('d'); pc.createOffer().then(o => pc.setLocalDescription(o));"
             "</script>")
    try:
        h = await hostile_rollout(store, browser_at(allowed_site), [
            goto(f"{allowed_site.url}/socket"),
            ("browser_goto", {"url": f"data:text/html,{probe}"}),
            goto(f"{allowed_site.url}/"), ("browser_text", {})])
    finally:
        listener.close()
    assert model_server.hits == [] and accepted == []
    with pytest.raises(BlockingIOError):
        udp.recv(2048)
    udp.close()
    assert "Title: open" not in h.results[0]["content"]
    assert_nothing_left(h, run_tmp)


async def test_downloads_land_in_the_workspace_size_capped(
        allowed_site: Server, store: Path, run_tmp: Path) -> None:
    seen: list[list[str]] = []

    def look(h: Hostile) -> tuple[str, dict[str, Any]]:
        seen.append(sorted(p.name for p in h.workspace.iterdir()))
        return ("browser_text", {})

    h = await hostile_rollout(store, browser_at(allowed_site), [
        goto(f"{allowed_site.url}/file.csv"), goto(f"{allowed_site.url}/huge.bin"), look])
    assert not h.results[0]["is_error"] and "table.csv" in h.results[0]["content"], h.results[0]
    assert h.results[1]["is_error"] and "limit" in h.results[1]["content"], h.results[1]
    assert seen == [["table.csv"]]
    assert_contained(h, "browser_goto")
    assert_nothing_left(h, run_tmp)
