"""The multi-server policy's routing and faults over real HTTP (scripted servers).

What the servers received is read from the servers, never from the policy's
bookkeeping. Stickiness against real vLLM servers, a real server killed
mid-batch and the weight reload across servers: test_two_vllm_servers.py.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import (
    Agent,
    Engine,
    MultiServerPolicy,
    NotRetryable,
    PolicyError,
    ScriptedPolicy,
    policy_affinity,
)
from engine.cli import build_parser
from engine.config import build_policy, load_config
from engine.envs.arithmetic import arithmetic_tasks
from engine.errors import ConfigError
from engine.policy import OpenAIPolicy
from tests.support.chat_server import ChatServer, reply

pytestmark = pytest.mark.anyio

MSGS = [{"role": "user", "content": "hello"}]


def fast(*urls: str, **kw: Any) -> MultiServerPolicy:
    kw.setdefault("backoff", 0.01)
    kw.setdefault("retries", 2)
    kw.setdefault("probe_interval", 0.01)
    kw.setdefault("max_probe_interval", 0.05)
    return MultiServerPolicy(list(urls), "stub", **kw)


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/v1"


async def call(policy: MultiServerPolicy, key: str | None) -> str | None:
    with policy_affinity(key):
        (c,) = await policy.complete(MSGS)
    return c.content


async def test_first_calls_go_to_the_least_loaded_server_and_later_calls_stay() -> None:
    async with (
        ChatServer([reply("a")]).running() as a,
        ChatServer([reply("b")]).running() as b,
        fast(a.url, b.url) as policy,
    ):
        first = [await call(policy, f"r{i}") for i in range(4)]  # one at a time: ties
        later = [await call(policy, f"r{i}") for i in (3, 2, 1, 0, 0)]
        keyless = [await call(policy, None) for _ in range(2)]
    assert first == ["a", "b", "a", "b"]  # a tie goes to the server picked least often
    assert later == ["b", "a", "b", "a", "a"]
    assert keyless == ["a", "b"]
    assert a.request_ids == ["r0", "r2", "r2", "r0", "r0", None]
    assert b.request_ids == ["r1", "r3", "r3", "r1", None]


async def test_a_busy_server_gets_no_new_conversation() -> None:
    release = asyncio.Event()

    async def slow(body: dict[str, Any]) -> dict[str, Any]:
        await release.wait()
        return reply("a")

    async with (
        ChatServer([lambda body: slow(body)]).running() as a,
        ChatServer([reply("b")]).running() as b,
        fast(a.url, b.url) as policy,
    ):
        async with anyio.create_task_group() as tg:
            tg.start_soon(call, policy, "long")  # sits on a
            await anyio.wait_all_tasks_blocked()
            assert [await call(policy, f"r{i}") for i in range(3)] == ["b", "b", "b"]
            release.set()
    assert a.request_ids == ["long"] and b.request_ids == ["r0", "r1", "r2"]


async def test_a_dead_server_is_taken_out_and_its_conversation_moves() -> None:
    b_server = ChatServer([reply("b")])
    b_running = b_server.running()
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(ChatServer([reply("a")]).running())
        b = await b_running.__aenter__()
        policy = await stack.enter_async_context(fast(a.url, b.url))
        assert [await call(policy, "r0"), await call(policy, "r1")] == ["a", "b"]
        await b_running.__aexit__(None, None, None)
        # b is gone (connection refused, /health refused): r1 continues on a
        assert await call(policy, "r1") == "a"
        assert await call(policy, "r1") == "a"
        assert await call(policy, "r2") == "a"
        state = {s.url: s for s in policy.servers()}
        assert not state[b.url].up and "GET /health failed" in (state[b.url].down_reason or "")
        assert state[b.url].outages == 1
    assert a.request_ids == ["r0", "r1", "r1", "r2"]
    assert b.request_ids == ["r1"]


async def test_5xx_the_retries_cannot_absorb_takes_a_sick_server_out() -> None:
    async with (
        ChatServer([reply("a")]).running() as a,
        ChatServer([503], health=503).running() as sick,
        fast(sick.url, a.url, retries=2) as policy,
    ):
        assert await call(policy, "r0") == "a"  # 3 tries on the sick one, then a
        assert await call(policy, "r1") == "a"  # the sick one is out
        (sick_state, _) = policy.servers()
    assert len(sick.requests) == 3 and not sick_state.up
    assert "failed 3 tries: HTTP 503" in (sick_state.down_reason or "")
    assert a.request_ids == ["r0", "r1"]


async def test_a_healthy_server_that_fails_one_call_stays_in() -> None:
    async with (
        ChatServer([500, 500, reply("b")]).running() as b,
        ChatServer([reply("a")]).running() as a,
        fast(b.url, a.url, retries=1) as policy,
    ):
        assert await call(policy, "r0") == "a"  # b failed twice but /health says alive
        assert await call(policy, "r1") == "b"  # so b still takes new conversations
        assert all(s.up for s in policy.servers())
    assert b.request_ids == ["r0", "r0", "r1"] and a.request_ids == ["r0"]


async def test_a_server_comes_back_when_healthy() -> None:
    async with (
        ChatServer([reply("a")]).running() as a,
        ChatServer(["drop", reply("b")], health=503).running() as b,
        fast(b.url, a.url) as policy,
    ):
        assert await call(policy, "r0") == "a"  # dropped, unhealthy: out
        assert not policy.servers()[0].up
        b.health = 200
        with anyio.fail_after(10):
            await policy.wait_up(b.url)
        assert await call(policy, "r1") == "b"
    assert b.request_ids == ["r0", "r1"]


async def test_a_rejected_request_is_not_retried_elsewhere() -> None:
    async with (
        ChatServer([400]).running() as a,
        ChatServer([reply("b")]).running() as b,
        fast(a.url, b.url) as policy,
    ):
        with pytest.raises(NotRetryable, match="HTTP 400"):
            await call(policy, "r0")
        assert all(s.up for s in policy.servers())
    assert len(a.requests) == 1 and not b.requests


async def test_no_server_left_is_a_policy_error_naming_each_and_the_attempt_retries(
    make_engine: Callable[..., Engine],
) -> None:
    urls = [closed_port_url(), closed_port_url()]
    async with fast(*urls) as policy:
        with pytest.raises(PolicyError, match="no model server of 2 could answer") as info:
            await call(policy, "r0")
        assert all(url in str(info.value) for url in urls)
    # servers that are up when the run starts (its preflight passes) and then fail
    # every call, their health checks too
    async with (
        ChatServer([503], health=503).running() as a,
        ChatServer([503], health=503).running() as b,
        fast(a.url, b.url) as policy,
        make_engine(max_attempts=2) as engine,
    ):
        run = await engine.run(arithmetic_tasks(1), Agent(policy), environment="arithmetic")
        (rollout,) = await run.rollouts()
        attempts = await engine.store.attempts(rollout.id)
    assert rollout.state == "error" and "no model server of 2" in (rollout.error or "")
    assert [a.state for a in attempts] == ["error", "error"]


async def test_a_reload_holds_new_calls_until_the_calls_in_flight_are_done() -> None:
    arrived, release = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def slow(body: dict[str, Any]) -> dict[str, Any]:
        arrived.set()
        await release.wait()
        return reply("old")

    async with (
        ChatServer([lambda body: slow(body), reply("new")]).running() as srv,
        fast(srv.url, version="v0") as policy,
    ):
        versions: dict[str, str | None] = {}

        async def complete(name: str) -> None:
            (c,) = await policy.complete(MSGS)
            versions[name] = c.policy_version
            order.append(name)

        async def reload() -> None:
            async with policy.paused():
                order.append("reload")
                policy.version = "v1"

        async with anyio.create_task_group() as tg:
            tg.start_soon(complete, "in flight")
            # at the server: the HTTP client may carry it on a thread of its own (pyreqwest),
            # where waiting for every task here to block says nothing
            await arrived.wait()
            tg.start_soon(reload)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(complete, "during the reload")
            await anyio.wait_all_tasks_blocked()
            assert order == [] and len(srv.requests) == 1  # both wait for the first
            release.set()
    assert order == ["in flight", "reload", "during the reload"]
    assert versions == {"in flight": "v0", "during the reload": "v1"}


def flags(base_url: str | list[str]) -> dict[str, Any]:
    return {
        "tasks.builtin": "arithmetic",
        "policy.kind": "openai",
        "policy.model": "m",
        "policy.base_url": base_url,
    }


async def test_several_urls_from_flags_toml_and_a_stored_description(tmp_path: Path) -> None:
    args = build_parser().parse_args(
        ["run", "--policy-url", "http://a:1/v1,http://b:2/v1", "--policy-url", "http://c:3/v1"]
    )
    policy = load_config(None, flags(args.policy_url)).build_agent().policy
    assert isinstance(policy, MultiServerPolicy)
    assert policy.base_urls == ["http://a:1/v1", "http://b:2/v1", "http://c:3/v1"]
    again = build_policy(policy.describe())  # what `resume` rebuilds from the store
    assert isinstance(again, MultiServerPolicy) and again.base_urls == policy.base_urls
    toml = tmp_path / "run.toml"
    toml.write_text(
        '[tasks]\nbuiltin = "arithmetic"\n[policy]\nkind = "openai"\nmodel = "m"\n'
        'base_url = ["http://a:1/v1", "http://b:2/v1"]\n'
    )
    assert isinstance(load_config(toml).build_agent().policy, MultiServerPolicy)
    one = load_config(None, flags(["http://a:1/v1"]))  # one URL: the single-server client
    assert one.policy.base_url == "http://a:1/v1"
    assert isinstance(one.build_agent().policy, OpenAIPolicy)
    with pytest.raises(ConfigError, match="lists http://a:1/v1 twice"):
        load_config(None, flags("http://a:1/v1, http://a:1/v1"))
    with pytest.raises(ConfigError, match="no model server URL"):
        MultiServerPolicy([], "m")


async def test_the_driver_sets_the_rollout_id_as_the_affinity_key(
    make_engine: Callable[..., Engine],
) -> None:
    seen: list[str | None] = []

    def answer(messages: list[dict[str, Any]], tools: Any) -> str:
        from engine.policy.base import affinity

        seen.append(affinity.get())
        return "<answer>0</answer>"

    async with make_engine() as engine:
        run = await engine.run(
            arithmetic_tasks(2),
            Agent(ScriptedPolicy(answer)),
            environment="arithmetic",
            samples=2,
            run_id="aff",
        )
        ids = sorted(r.id for r in await run.rollouts())
    assert sorted(seen) == ids and len(set(ids)) == 4
