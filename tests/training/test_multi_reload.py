"""The weight reloader over several servers: what it refuses before changing anything.

The reload itself, across two real vLLM servers (both updated, or both back on
the old weights): tests/policy/test_two_vllm_servers.py.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from engine import MultiServerPolicy, OpenAIPolicy
from engine.training.reload import ReloadError, WeightReloader
from tests.support.chat_server import ChatServer, reply

pytestmark = pytest.mark.anyio


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


async def test_unreachable_servers_stop_the_reload_before_anything_changes(
    tmp_path: Path,
) -> None:
    urls = [closed_port_url(), closed_port_url()]
    policy = OpenAIPolicy(urls[0] + "/v1", "m", version="v0")  # cannot take a server out
    async with WeightReloader(urls, policy=policy, timeout=5) as reloader:
        with pytest.raises(ReloadError, match="cannot reach every server, nothing was changed"):
            await reloader.reload(tmp_path, version="v1")
    assert policy.version == "v0"
    async with MultiServerPolicy([u + "/v1" for u in urls], "m", version="v0") as multi:
        async with WeightReloader(policy=multi, timeout=5) as reloader:
            assert reloader.urls == urls  # the policy's servers
            with pytest.raises(ReloadError, match="cannot reach every server") as info:
                await reloader.reload(tmp_path, version="v1")  # none left to reload
    assert all(u in str(info.value) for u in urls)
    assert multi.version == "v0" and multi.weight_version is None


async def test_a_server_without_dev_mode_stops_the_reload_of_all(tmp_path: Path) -> None:
    async with (
        ChatServer([reply()]).running() as plain,
        MultiServerPolicy([plain.url, closed_port_url() + "/v1"], "m", version="v0") as policy,
        WeightReloader(policy=policy, timeout=5) as reloader,
    ):
        with pytest.raises(ReloadError, match="VLLM_SERVER_DEV_MODE=1"):
            await reloader.reload(tmp_path, version="v1")
        assert all(s.up for s in policy.servers()) and policy.version == "v0"


def test_the_reloader_must_reach_every_server_the_policy_calls() -> None:
    policy = MultiServerPolicy(["http://a:1/v1", "http://b:2/v1"], "m")
    with pytest.raises(ReloadError, match="a weight update must reach every server"):
        WeightReloader(["http://a:1"], policy=policy)
    assert WeightReloader(["http://b:2/v1", "http://a:1/"], policy=policy).urls == [
        "http://b:2",
        "http://a:1",
    ]
    with pytest.raises(ReloadError, match="no server URL given"):
        WeightReloader([])
