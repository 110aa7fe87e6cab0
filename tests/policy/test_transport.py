"""The policy's HTTP clients (`engine.policy.transport`): the same outcome for the same
fault whichever client carries it, a closed client that refuses at once, and a
choice of client that is checked before anything is sent."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import orjson
import pytest
from aiohttp import web

from engine import ConfigError, OpenAIPolicy
from engine.config import PolicyConfig
from engine.policy.transport import (
    CLIENT_ENV,
    Failure,
    Reply,
    Transport,
    TransportClosed,
    open_transport,
    resolve_client,
)
from tests.support.chat_server import ChatServer, reply

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["aiohttp", "pyreqwest"])
def client(request: pytest.FixtureRequest) -> str:
    if request.param == "pyreqwest":
        pytest.importorskip("pyreqwest", reason="pip install 'drillyard[fast]'")
    return str(request.param)


def transport(client: str, timeout: float = 5.0) -> Transport:
    return open_transport(
        resolve_client(client), max_connections=4, timeout=timeout,
        headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
    )  # fmt: skip


@asynccontextmanager
async def cutting_server() -> AsyncIterator[str]:
    """``/cut`` promises 100 bytes, sends 3 and closes; ``/echo`` returns what it got."""

    async def cut(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Length": "100"})
        await resp.prepare(request)
        await resp.write(b'{"a"')
        assert request.transport is not None
        request.transport.close()
        return resp

    async def echo(request: web.Request) -> web.StreamResponse:
        headers = {k.lower(): v for k, v in request.headers.items()}
        seen = {"body": (await request.read()).decode(), "headers": headers}
        return web.json_response(seen, status=int(request.query.get("status", "200")))

    app = web.Application()
    app.router.add_route("*", "/cut", cut)
    app.router.add_route("*", "/echo", echo)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_reply_of_any_status_comes_back_whole_with_every_header(client: str) -> None:
    async with cutting_server() as url:
        t = transport(client)
        try:
            ok = await t.request("POST", url + "/echo", b'{"x": 1}', {"X-Request-Id": "r1"})
            busy = await t.request("GET", url + "/echo?status=503")
        finally:
            await t.aclose()
    assert isinstance(ok, Reply) and ok.status == 200
    seen = orjson.loads(ok.body)
    assert seen["body"] == '{"x": 1}' and seen["headers"]["x-request-id"] == "r1"
    assert seen["headers"]["authorization"] == "Bearer k"
    assert seen["headers"]["content-type"] == "application/json"
    assert isinstance(busy, Reply) and busy.status == 503 and '"body"' in busy.head(50)


async def test_refused_and_cut_off_are_unreachable_a_hang_is_a_timeout(client: str) -> None:
    async with cutting_server() as url, ChatServer(["hang"]).running() as hanging:
        t = transport(client, timeout=0.3)
        try:
            refused = await t.request("GET", f"http://127.0.0.1:{free_port()}/x")
            cut = await t.request("GET", url + "/cut")
            with anyio.fail_after(5):  # the transport's own deadline, well before this one
                hung = await t.request("POST", hanging.url + "/chat/completions", b"{}")
        finally:
            await t.aclose()
    assert isinstance(refused, Failure) and refused.unreachable and "Connect" in refused.reason
    assert isinstance(cut, Failure) and cut.unreachable
    assert hung == Failure("no reply within 0.3s")


async def test_a_closed_transport_refuses_at_once_and_closing_twice_is_fine(client: str) -> None:
    async with cutting_server() as url:
        t = transport(client)
        assert isinstance(await t.request("GET", url + "/echo"), Reply)
        await t.aclose()
        await t.aclose()
        with anyio.fail_after(1), pytest.raises(TransportClosed, match="closed"):
            await t.request("GET", url + "/echo")


async def test_a_policy_opens_a_new_client_after_it_is_closed(client: str) -> None:
    async with ChatServer([reply("first"), reply("second")]).running() as srv:
        policy = OpenAIPolicy(srv.url, "stub", http_client=client)
        for want in ("first", "second"):
            async with policy:  # leaving closes the client; entering again opens a new one
                (c,) = await policy.complete([{"role": "user", "content": "hi"}])
            assert c.content == want
    assert policy.transport_name == client
    assert policy.describe()["http_client"] == client


def test_an_unknown_client_is_refused_before_anything_is_sent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ConfigError, match=r"unknown HTTP client 'curl'.*auto, aiohttp, pyreqwest"):
        OpenAIPolicy("http://127.0.0.1:1/v1", "stub", http_client="curl")
    with pytest.raises(ValueError, match="http_client"):
        PolicyConfig(kind="openai", base_url="http://h:1/v1", model="m", http_client="curl")
    monkeypatch.setenv(CLIENT_ENV, "aiohttp")
    assert OpenAIPolicy("http://127.0.0.1:1/v1", "stub").transport_name == "aiohttp"
    monkeypatch.setenv(CLIENT_ENV, "curl")
    with pytest.raises(ConfigError, match="unknown HTTP client"):
        OpenAIPolicy("http://127.0.0.1:1/v1", "stub")


def test_auto_takes_pyreqwest_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    try:
        import pyreqwest  # noqa: F401
    except ImportError:
        assert resolve_client("auto") == "aiohttp"
    else:
        assert resolve_client("auto") == "pyreqwest"
    assert resolve_client("aiohttp") == "aiohttp"
