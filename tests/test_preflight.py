"""A run whose policy cannot serve fails before any rollout starts, naming the URL and
the fix, instead of spending its retries on every rollout (real HTTP on loopback)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from engine import Agent, ConfigError, OpenAIPolicy
from engine.envs.arithmetic import arithmetic_tasks
from tests.support.chat_server import reply

pytestmark = pytest.mark.anyio


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ModelServer:
    """``GET /v1/models`` answers ``status`` (listing ``served``); chat completions answer."""

    def __init__(self, status: int = 200, served: tuple[str, ...] = ("tiny",)) -> None:
        self.status, self.served = status, served
        self.chats = 0
        self.url = ""

    async def models(self, request: web.Request) -> web.Response:
        body = {"object": "list", "data": [{"id": m, "object": "model"} for m in self.served]}
        return web.json_response(body, status=self.status)

    async def chat(self, request: web.Request) -> web.Response:
        self.chats += 1
        return web.json_response(reply("4"))


@pytest.fixture
async def model_server(request: pytest.FixtureRequest) -> AsyncIterator[ModelServer]:
    server = ModelServer(*getattr(request, "param", ()))
    app = web.Application()
    app.router.add_get("/v1/models", server.models)
    app.router.add_post("/v1/chat/completions", server.chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    try:
        yield server
    finally:
        await runner.cleanup()


async def test_an_unreachable_server_fails_the_run_before_it_starts(make_engine: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    async with OpenAIPolicy(url, "tiny", retries=4) as policy, make_engine() as engine:
        with pytest.raises(ConfigError) as err:
            await engine.run(
                arithmetic_tasks(3), Agent(policy), environment="arithmetic", samples=2
            )
        assert url in str(err.value) and "vllm serve" in str(err.value)
        assert policy.requests == 0  # no chat request, so no retries spent
        assert await engine.store.runs() == []  # nothing recorded: no run, no rollouts


@pytest.mark.parametrize("model_server", [(401,)], indirect=True)
async def test_a_refused_key_is_named_before_the_run(
    model_server: ModelServer, make_engine: Any
) -> None:
    async with OpenAIPolicy(model_server.url, "tiny") as policy, make_engine() as engine:
        with pytest.raises(ConfigError, match=r"HTTP 401.*API key"):
            await engine.run(arithmetic_tasks(2), Agent(policy), environment="arithmetic")
    assert model_server.chats == 0


async def test_a_reachable_server_runs_and_resume_checks_again(
    model_server: ModelServer, make_engine: Any, store_path: Path
) -> None:
    async with OpenAIPolicy(model_server.url, "tiny") as policy, make_engine() as engine:
        run = await engine.run(
            arithmetic_tasks(2), Agent(policy), environment="arithmetic", run_id="r1"
        )
        assert sum((await run.counts()).values()) == 2 and model_server.chats >= 2
    gone = OpenAIPolicy(f"http://127.0.0.1:{free_port()}/v1", "tiny")
    async with gone, make_engine() as engine:
        with pytest.raises(ConfigError, match="no model server answers"):
            await engine.resume("r1", Agent(gone))


async def test_any_policy_may_check_itself(make_engine: Any) -> None:
    """The hook: a policy with ``preflight()`` (say, one over several servers) is asked once."""

    class Checked:
        checks = 0

        async def preflight(self) -> None:
            self.checks += 1
            raise ConfigError("policy server 2 of 2", "down", "start it")

        async def complete(self, *args: Any, **kwargs: Any) -> Any:
            raise AssertionError("never called: the check failed first")

    policy = Checked()
    async with make_engine() as engine:
        with pytest.raises(ConfigError, match="server 2 of 2"):
            await engine.run(
                arithmetic_tasks(2), Agent(policy), environment="arithmetic", samples=4
            )
    assert policy.checks == 1


def test_the_cli_fails_within_the_check_with_the_url_and_the_fix(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    store = tmp_path / "runs.db"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "run",
            "--arithmetic",
            "4",
            "--samples",
            "2",
            "--policy-url",
            url,
            "--model",
            "tiny",
            "--store",
            str(store),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"GET {url}/models" in done.stderr and "fix: start it" in done.stderr
