"""The viewer gives nothing without its token, answers only to its own host name,
and never runs script from recorded text — checked over real HTTP and in Chromium."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from engine import Agent, Engine, EnvSpec, ScriptedPolicy, Task, TraceStore
from engine.view import Viewer
from engine.view.server import CSP
from tests.view.conftest import HOSTILE, HOSTILE_RUN, SECRET, Recorded
from tests.view.support import signed_in, url

pytestmark = pytest.mark.anyio

ROUTES = [
    "/",
    "/run?id={run}",
    "/run?id={run}&live=1",
    "/run/rollouts?id={run}",
    "/run/groups?id={run}",
    "/run/compare?id={run}&with={other}",
    "/run/gantt.svg?id={run}",
    "/run/throughput.svg?id={run}",
    "/rollout?id={run}.0",
    "/rollout?id={run}.0&answer=1&live=1&tail=-1",
    "/rollout/message.json?id={run}.0&seq=1",
    "/static/view.js",
]


def routes(recorded: Recorded) -> list[str]:
    from urllib.parse import quote

    run, other = quote(recorded.run_id, safe=""), quote(recorded.other_id, safe="")
    return [r.format(run=run, other=other) for r in ROUTES]


LEAKS = ("run-b", "EnvironmentLost", "lookup", SECRET, "Question", "__pwned")
DATA = ("pass@", "Rollouts", "EnvironmentLost", "result for", SECRET, "Question", "scripted")
"""What any page or JSON of the viewer about these runs would hold."""


async def test_without_the_token_every_route_answers_401_and_nothing_else(
    recorded: Recorded,
) -> None:
    async with Viewer(recorded.store) as viewer, aiohttp.ClientSession() as http:
        for path in routes(recorded):
            for headers, query in (
                ({}, ""),
                ({}, "&token=wrong" if "?" in path else "?token=wrong"),
                ({"Authorization": "token wrong"}, ""),
                ({"Cookie": f"{viewer.cookie_name}={viewer.token}"}, ""),  # not the cookie value
            ):
                async with http.get(
                    viewer.base_url + path + query, headers=headers, allow_redirects=False
                ) as resp:
                    body = await resp.text()
                assert resp.status == 401, (path, headers, query)
                assert not any(leak in body for leak in LEAKS), (path, body)
                assert "Access-Control-Allow-Origin" not in resp.headers
                assert resp.headers["Content-Security-Policy"] == CSP
            # the token (as a header, or once in the URL for a cookie) opens it
            auth = {"Authorization": f"token {viewer.token}"}
            async with http.get(viewer.base_url + path, headers=auth) as resp:
                assert resp.status == 200, path
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
                assert resp.headers["Cross-Origin-Resource-Policy"] == "same-origin"
                assert "Access-Control-Allow-Origin" not in resp.headers
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for an IP address, as a browser keeps them
        async with aiohttp.ClientSession(cookie_jar=jar) as browser_like:
            async with browser_like.get(viewer.url, allow_redirects=False) as resp:
                assert resp.status == 303 and "token" not in resp.headers["Location"]
                cookie = resp.cookies[viewer.cookie_name]
                assert cookie["httponly"] and cookie["samesite"] == "Strict"
            async with browser_like.get(viewer.base_url + "/") as resp:
                assert resp.status == 200 and "run-b" in await resp.text()


async def test_a_host_name_other_than_loopback_is_refused(recorded: Recorded) -> None:
    """DNS rebinding: a hostile name that resolves to 127.0.0.1 still names itself."""
    async with Viewer(recorded.store) as viewer, aiohttp.ClientSession() as http:
        auth = {"Authorization": f"token {viewer.token}"}
        for host, status in (
            ("evil.example", 403),
            (f"evil.example:{viewer.port}", 403),
            (f"127.0.0.1.nip.io:{viewer.port}", 403),
            (f"localhost:{viewer.port}", 200),
            (f"127.0.0.1:{viewer.port}", 200),
            (f"[::1]:{viewer.port}", 200),
        ):
            async with http.get(viewer.base_url + "/", headers={**auth, "Host": host}) as resp:
                body = await resp.text()
            assert resp.status == status, host
            assert (status == 200) == ("run-b" in body), host


@pytest.fixture
async def attacker(recorded: Recorded) -> AsyncIterator[tuple[Viewer, str]]:
    """The viewer, and a page on another loopback port that tries to read it."""
    async with Viewer(recorded.store) as viewer:
        target = viewer.base_url
        page = f"""<!doctype html><html><head><title>a page</title></head><body>
<pre id="out">running</pre>
<img id="img" src="{target}/run/gantt.svg?id=run-b">
<iframe id="frame" src="{target}/"></iframe>
<script>
(async () => {{
  const out = [];
  for (const path of ["/", "/run?id=run-b&live=1", "/run/rollouts?id=run-b"]) {{
    try {{
      const r = await fetch("{target}" + path, {{credentials: "include"}});
      out.push("READ " + path + " " + r.status + " " + (await r.text()).slice(0, 300));
    }} catch (e) {{ out.push("blocked " + path); }}
  }}
  try {{
    const r = await fetch("{target}/", {{mode: "no-cors", credentials: "include"}});
    out.push("opaque " + r.type + " " + r.status);
  }} catch (e) {{ out.push("blocked no-cors"); }}
  const img = document.getElementById("img");
  out.push("img " + (img.complete && img.naturalWidth > 0 ? "LOADED" : "blocked"));
  let frame = "blocked";
  try {{ frame = "READ " + document.getElementById("frame").contentDocument.body.innerText; }}
  catch (e) {{}}
  out.push("frame " + frame);
  document.getElementById("out").textContent = out.join("\\n");
  document.title = "done";
}})();
</script></body></html>"""

        async def serve(request: web.Request) -> web.Response:
            return web.Response(text=page, content_type="text/html")

        app = web.Application()
        app.router.add_get("/", serve)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            yield viewer, f"http://127.0.0.1:{runner.addresses[0][1]}/"
        finally:
            await runner.cleanup()


async def test_a_page_in_the_users_signed_in_browser_cannot_read_the_viewer(
    attacker: tuple[Viewer, str], chromium: Any
) -> None:
    """Same machine, another port (same site, other origin): the cookie goes along,
    but CORS, CORP and frame-ancestors keep every answer from the page."""
    viewer, evil = attacker
    page = await signed_in(chromium, viewer)
    await page.goto(evil)
    await page.wait_for_function("() => document.title === 'done'")
    lines = (await page.locator("#out").inner_text()).splitlines()
    assert lines[:3] == [
        "blocked /",
        "blocked /run?id=run-b&live=1",
        "blocked /run/rollouts?id=run-b",
    ]
    # even an opaque no-cors answer is refused (Cross-Origin-Resource-Policy)
    assert lines[3:] == ["blocked no-cors", "img blocked", "frame blocked"]


async def test_the_browser_tool_in_a_rollout_gets_nothing(
    attacker: tuple[Viewer, str], tmp_path: Any, browser_installed: None
) -> None:
    """An agent's browser (the real tool, real Chromium, loopback allowed) opens the
    viewer and a page that tries to read it: every answer is 401 or blocked."""
    import tools.browser  # noqa: F401  (registers the "browser" environment)

    viewer, evil = attacker
    visits = [
        viewer.base_url + "/",
        viewer.base_url + "/run?id=run-b",
        viewer.base_url + "/rollout?id=run-b.0&answer=1",
        viewer.base_url + "/run?id=run-b&live=1&token=guess",
        evil,
    ]

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        done = sum(1 for m in messages if m["role"] == "tool")
        if done < len(visits):
            return {"tool_calls": [{"name": "browser_goto", "arguments": {"url": visits[done]}}]}
        if "frame " not in messages[-1]["content"]:  # the page's script is still trying
            return {"tool_calls": [{"name": "browser_text", "arguments": {}}]}
        return "<answer>nothing</answer>"

    async with Engine(store=tmp_path / "agent.db", progress=False) as engine:
        run = await engine.run(
            [Task("peek", "Read the other runs", "?")],
            Agent(ScriptedPolicy(handler), max_turns=len(visits) + 30),
            environment=EnvSpec("browser", {"allow_hosts": ["127.0.0.1:*"]}),
        )
        (rollout,) = await run.rollouts()
        results = [
            m.payload["content"]
            for m in await run.messages(rollout.id)
            if m.category == "tool_result"
        ]
    assert rollout.state == "done" and len(results) >= len(visits)
    for text in results[:4]:
        assert "401: a token is needed" in text, text
    # the browser tool fetches every request itself to check each hop against its
    # allowlist (tools._netguard), so the page may see the viewer's 401 where a
    # plain browser's CORS would block it: either way it reads no data
    page = results[-1]
    assert ("blocked /" in page or "READ / 401 401: a token is needed" in page), page
    assert "frame blocked" in page and "img blocked" in page
    for text in results:
        assert not any(data in text for data in DATA), text
        assert " 200 " not in text and "LOADED" not in text, text


async def test_recorded_text_never_runs_as_script(recorded: Recorded, chromium: Any) -> None:
    async with TraceStore(recorded.store) as store, Viewer(recorded.store) as viewer:
        rollout = next(r for r in await store.rollouts(recorded.run_id) if r.task_id == "t1")
        lost = (await store.rollouts(recorded.run_id, "error"))[0]
        page = await signed_in(chromium, viewer)
        dialogs: list[str] = []
        page.on("dialog", lambda d: dialogs.append(d.message))
        pages = [
            url(viewer, "/"),
            url(viewer, "/run", id=HOSTILE_RUN),
            url(viewer, "/run/rollouts", id=HOSTILE_RUN),
            url(viewer, "/run/groups", id=HOSTILE_RUN),
            url(viewer, "/run/compare", id=HOSTILE_RUN, **{"with": "run-b"}),
            url(viewer, "/rollout", id=rollout.id),
            url(viewer, "/rollout", id=lost.id, answer=1),
        ]
        for address in pages:
            await page.goto(address)
            await page.wait_for_load_state("load")
            if "/rollout?" in address:
                # what the live script does with new messages and sections, on hostile ones
                await page.evaluate(
                    """async (u) => {
                        const d = await (await fetch(u)).json();
                        const list = document.getElementById("messages");
                        list.insertAdjacentHTML("beforeend", d.tail_html);
                        const attempts = document.querySelector("[data-section=attempts]");
                        attempts.innerHTML = d.sections.attempts;
                    }""",
                    address + "&live=1&tail=-1",
                )
            state = await page.evaluate(
                """() => ({
                    pwned: window.__pwned === undefined ? null : String(window.__pwned),
                    violations: window.__violations,
                    scripts: [...document.scripts].map((s) => s.getAttribute("src")),
                    handlers: document.querySelectorAll("[onerror],[onload],[onclick]").length,
                    frames: document.querySelectorAll("iframe, svg, object, embed").length,
                    jslinks: document.querySelectorAll("a[href^='javascript']").length,
                    text: document.body.innerText,
                })"""
            )
            assert state["pwned"] is None, address
            assert state["violations"] == [], (address, state["violations"])
            assert state["scripts"] == ["/static/view.js"], address
            assert (state["handlers"], state["frames"], state["jslinks"]) == (0, 0, 0), address
            assert HOSTILE_RUN in state["text"], address  # shown, as text
            if "/rollout?" in address:
                assert "{{7*7}}" in state["text"] and "<script>" in state["text"], address
        assert dialogs == []
        # the hostile text is shown, as text, where it was recorded
        await page.goto(url(viewer, "/rollout", id=rollout.id))
        result = next(m for m in await store.messages(rollout.id) if m.category == "tool_result")
        assert (
            await page.locator(f"#m{result.seq} pre.text").text_content()
            == result.payload["content"]
        )
        assert HOSTILE in result.payload["content"]
        assert HOSTILE_RUN in await page.locator("h1").inner_text()
        raw = json.loads(
            await (
                await page.request.get(
                    url(viewer, "/rollout/message.json", id=rollout.id, seq=result.seq)
                )
            ).text()
        )
        assert raw["payload"]["content"] == result.payload["content"]
