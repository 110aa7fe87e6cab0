"""The OpenAI-compatible client: retries, deadlines, parsing — over real HTTP."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from engine import Agent, Engine, NotRetryable, OpenAIPolicy, PolicyError, SamplingParams
from engine.envs.arithmetic import arithmetic_tasks
from tests.support.chat_server import ChatServer, reply

pytestmark = pytest.mark.anyio

MSGS = [{"role": "user", "content": "hello"}]


@pytest.fixture(params=["aiohttp", "pyreqwest"])
def client(request: pytest.FixtureRequest) -> str:
    """Every behaviour here holds whichever HTTP client carries the requests."""
    if request.param == "pyreqwest":
        pytest.importorskip("pyreqwest", reason="pip install 'drillyard[fast]'")
    return str(request.param)


def fast(client: str, url: str, **kw: object) -> OpenAIPolicy:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("retries", 3)
    return OpenAIPolicy(url, "stub", http_client=client, **kw)  # type: ignore[arg-type]


async def test_5xx_and_429_are_retried_then_succeed(client: str) -> None:
    async with ChatServer([503, 429, 500, reply("ok")]).running() as srv:
        async with fast(client, srv.url) as policy:
            (c,) = await policy.complete(MSGS)
    assert c.content == "ok" and len(srv.requests) == 4 and policy.retried == 3


async def test_a_server_that_stays_down_raises_policy_error_after_the_retries(client: str) -> None:
    async with ChatServer([502]).running() as srv, fast(client, srv.url, retries=2) as policy:
        with pytest.raises(PolicyError, match="failed after 3 tries: HTTP 502"):
            await policy.complete(MSGS)
    assert len(srv.requests) == 3


async def test_connection_refused_and_dropped_connections_are_retried(client: str) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with fast(client, f"http://127.0.0.1:{port}/v1", retries=1) as policy:
        with pytest.raises(PolicyError, match="Connect"):
            await policy.complete(MSGS)
    async with ChatServer(["drop", reply("back")]).running() as srv:
        async with fast(client, srv.url) as policy:
            (c,) = await policy.complete(MSGS)
    assert c.content == "back"


async def test_every_try_has_a_deadline(client: str) -> None:
    async with ChatServer(["hang", reply("late but fine")]).running() as srv:
        async with fast(client, srv.url, timeout=0.3) as policy:
            (c,) = await policy.complete(MSGS)
    assert c.content == "late but fine" and len(srv.requests) == 2


async def test_a_rejected_request_is_not_retried(client: str) -> None:
    async with ChatServer([400]).running() as srv, fast(client, srv.url) as policy:
        with pytest.raises(NotRetryable, match="HTTP 400"):
            await policy.complete(MSGS)
    assert len(srv.requests) == 1


async def test_request_fields_and_response_parsing(client: str) -> None:
    tool_calls = [
        {
            "id": "c1",
            "type": "function",
            "function": {"name": "calculator", "arguments": '{"expression": "1+1"}'},
        }
    ]
    body = reply(
        None,
        tool_calls,
        token_ids=[5, 6, 7],
        logprobs={"content": [{"token": "a", "logprob": -0.5}, {"token": "b", "logprob": -1.5}]},
    )
    body["prompt_token_ids"] = [1, 2, 3]
    hermes = reply(
        '<tool_call>{"name": "calculator", "arguments": {"expression": "2"}}</tool_call>'
    )
    async with ChatServer([body, hermes]).running() as srv:
        async with fast(client, srv.url, version="v7") as policy:
            params = SamplingParams(
                temperature=0.5,
                max_tokens=9,
                seed=3,
                logprobs=True,
                return_token_ids=True,
                extra={"structured_outputs": {"regex": "x"}},
            )
            (c,) = await policy.complete(
                MSGS,
                tools=[{"type": "function", "function": {"name": "calculator"}}],
                params=params,
            )
            (h,) = await policy.complete(MSGS)
    sent = srv.requests[0]
    assert sent["model"] == "stub" and sent["temperature"] == 0.5 and sent["max_tokens"] == 9
    assert sent["seed"] == 3 and sent["logprobs"] is True and sent["return_token_ids"] is True
    assert sent["structured_outputs"] == {"regex": "x"} and sent["tool_choice"] == "auto"
    assert c.tool_calls[0].parsed == {"expression": "1+1"}
    assert c.token_ids == [5, 6, 7] and c.prompt_token_ids == [1, 2, 3]
    assert c.logprobs == [-0.5, -1.5] and c.policy_version == "v7" and c.usage["total_tokens"] == 7
    assert h.content == "" and h.tool_calls[0].name == "calculator"


async def test_a_model_server_that_stays_down_ends_rollouts_in_error(
    make_engine: Callable[..., Engine], client: str
) -> None:
    async with ChatServer([503]).running() as srv:
        async with fast(client, srv.url, retries=1) as policy:
            async with make_engine(max_attempts=2) as engine:
                run = await engine.run(arithmetic_tasks(2), Agent(policy), environment="arithmetic",
                                       scorer="arithmetic", samples=2)
                rollouts = await run.rollouts()
                attempts = await engine.store.attempts(rollouts[0].id)
    assert {r.state for r in rollouts} == {"error"}
    assert all("HTTP 503" in (r.error or "") and srv.url in (r.error or "") for r in rollouts)
    assert [a.state for a in attempts] == ["error", "error"]
    assert len(srv.requests) == 4 * 2 * 2  # rollouts x attempts x tries per call
