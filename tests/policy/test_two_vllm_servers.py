"""Two real vLLM servers behind one `MultiServerPolicy`, driven by `Engine.run`.

Where each rollout's calls went is read from each server's request log (the
policy sends the rollout id as ``X-Request-Id``), not from the policy. Turn 1
is constrained to a calculator call and turn 2 to a number, so every rollout
makes exactly two model calls. The reload tests read the weight version each
server reports and the greedy logprobs of a fixed prompt on each server.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import (
    Agent,
    Engine,
    FunctionEnvironment,
    MultiServerPolicy,
    OpenAIPolicy,
    SamplingParams,
    Task,
)
from engine.envs.arithmetic import safe_eval
from engine.rollout import TERMINAL
from engine.training.reload import ReloadError, WeightReloader
from tests.support.vllm_server import VLLMPair, received_request_ids

pytestmark = [pytest.mark.anyio, pytest.mark.vllm, pytest.mark.slow]

TASKS = [Task("add", "What is 2 + 3?", "5"), Task("mul", "What is 4 * 5?", "20")]
TOOL_CALL = (
    '<tool_call>\\n\\{"name": "calculator", "arguments": '
    '\\{"expression": "(2 \\+ 3|4 \\* 5)"\\}\\}\\n</tool_call>'
)
SAMPLING = SamplingParams(max_tokens=48, seed=7, extra={"skip_special_tokens": False})
GREEDY = SamplingParams(
    temperature=0.0,
    max_tokens=4,
    logprobs=True,
    extra={"structured_outputs": {"regex": "[0-9]{1,2}"}},
)


def constrained(turn: int) -> dict[str, Any]:
    return {"structured_outputs": {"regex": TOOL_CALL if turn == 1 else "(5|20)"}}


def agent(policy: MultiServerPolicy) -> Agent:
    return Agent(policy, max_turns=3, sampling=SAMPLING, request_extra=constrained)


def calls_of(server: Any, run_id: str) -> Counter[str]:
    """How many model calls of each rollout of ``run_id`` the server received."""
    return Counter(i for i in received_request_ids(server) if i.startswith(f"{run_id}."))


async def fixed_prompt_logprobs(server: Any) -> list[float] | None:
    async with OpenAIPolicy(server.base_url, server.model, timeout=60) as direct:
        (c,) = await direct.complete([{"role": "user", "content": "What is 2 + 3?"}], None, GREEDY)
    return c.logprobs


async def both(pair: VLLMPair) -> tuple[list[float] | None, list[float] | None]:
    return await fixed_prompt_logprobs(pair.a), await fixed_prompt_logprobs(pair.b)


@pytest.fixture(scope="module")
def seed1_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-seed1"), seed=1)


async def no_loss(engine: Engine, run_id: str) -> list[Any]:
    """Every rollout ended once, in one attempt, with contiguous message seqs."""
    rollouts = await engine.store.rollouts(run_id)
    for r in rollouts:
        assert r.state in ("done", "failed"), r.error
        attempts = await engine.store.attempts(r.id)
        assert [(a.attempt, a.state) for a in attempts] == [(attempts[0].attempt, r.state)]
        msgs = await engine.store.messages(r.id)
        assert [m.seq for m in msgs] == list(range(len(msgs)))
        ends = [m for m in msgs if m.category == "state" and m.topic in TERMINAL]
        assert len(ends) == 1
        assert sum(m.category == "model_reply" for m in msgs) == 2
    return rollouts


async def test_each_rollout_stays_on_the_server_of_its_first_call(
    vllm_pair: VLLMPair, make_engine: Callable[..., Engine]
) -> None:
    vllm_pair.revive()
    urls = vllm_pair.base_urls
    async with (
        MultiServerPolicy(urls, "tiny", timeout=60) as policy,
        make_engine(max_rollouts=8) as engine,
    ):
        run = await engine.run(
            TASKS, agent(policy), environment="arithmetic", samples=4, run_id="sticky"
        )
        rollouts = await no_loss(engine, run.id)
    on_a, on_b = calls_of(vllm_pair.a, "sticky"), calls_of(vllm_pair.b, "sticky")
    assert on_a and on_b  # the first calls were spread over both servers
    assert not set(on_a) & set(on_b)  # and no rollout ever called the other one
    assert {r.id: 2 for r in rollouts} == on_a + on_b


async def test_a_reload_reaches_both_servers_and_rollouts_record_it(
    vllm_pair: VLLMPair,
    tiny_model_dir: Path,
    seed1_checkpoint: Path,
    make_engine: Callable[..., Engine],
) -> None:
    vllm_pair.revive()
    urls = vllm_pair.base_urls
    roots = [vllm_pair.a.url, vllm_pair.b.url]
    async with (
        MultiServerPolicy(urls, "tiny", timeout=60, version="v0") as policy,
        WeightReloader(policy=policy) as reloader,
        make_engine(max_rollouts=8) as engine,
    ):
        before = await both(vllm_pair)
        assert await reloader.served_model_root() == str(tiny_model_dir)  # what a failure undoes
        try:
            result = await reloader.reload(seed1_checkpoint, version="v1")
            assert await reloader.weight_versions() == dict.fromkeys(roots, "v1")
            after = await both(vllm_pair)
            run = await engine.run(
                TASKS, agent(policy), environment="arithmetic", samples=2, run_id="v1-run"
            )
            stamped = {r.policy_version for r in await no_loss(engine, run.id)}
        finally:
            back = await reloader.reload(tiny_model_dir, version="v0")
        again = await both(vllm_pair)
    assert before[0] == before[1] and after[0] == after[1]  # one model on both servers
    assert after[0] != before[0] and again == before  # other weights, then the old ones exactly
    assert stamped == {"v1"} and policy.version == "v0" == back.version
    assert set(result.per_server) == set(roots) and not result.skipped
    for steps in result.per_server.values():
        assert set(steps) == set(result.seconds) == {
            "pause", "reload_weights", "reset_prefix_cache", "update_weight_version", "resume",
        }  # fmt: skip
    assert result.total_s >= sum(result.seconds.values())


async def test_a_checkpoint_one_server_cannot_load_leaves_both_on_the_old_weights(
    vllm_pair: VLLMPair, seed1_checkpoint: Path
) -> None:
    vllm_pair.revive()
    urls = vllm_pair.base_urls
    checkpoint = vllm_pair.only_a / "step-2"  # written where server b cannot see it
    shutil.copytree(seed1_checkpoint, checkpoint, dirs_exist_ok=True)
    async with (
        MultiServerPolicy(urls, "tiny", timeout=60, version="v0") as policy,
        WeightReloader(policy=policy) as reloader,
    ):
        versions = await reloader.weight_versions()
        before = await both(vllm_pair)
        with pytest.raises(ReloadError) as info:
            await reloader.reload(checkpoint, version="v2")
        after_versions = await reloader.weight_versions()
        after = await both(vllm_pair)  # both serve again: resumed, and not broken
    message = str(info.value)
    assert message.startswith(f"reload_weights failed on POST {vllm_pair.b.url}/collective_rpc")
    assert f"{vllm_pair.a.url}/" not in message.split("; every server")[0]
    assert f"that server sees no checkpoint folder at {checkpoint}" in message
    assert "every server is back on" in message and "v2" not in after_versions.values()
    assert after_versions == versions and after == before  # server a loaded it and went back
    assert policy.version == "v0" and policy.weight_version is None


async def test_a_server_killed_mid_batch_loses_nothing_and_comes_back_on_current_weights(
    vllm_pair: VLLMPair,
    tiny_model_dir: Path,
    seed1_checkpoint: Path,
    make_engine: Callable[..., Engine],
) -> None:
    vllm_pair.revive()
    a, b = vllm_pair.a, vllm_pair.b
    assert b.proc is not None
    victim = b.proc.pid
    killed: list[int] = []

    def calculator(expression: str) -> str:
        """Evaluate an arithmetic expression."""
        # the first tool call once b has taken a call (at the latest, that of a
        # rollout on b): every rollout is mid-way, b's next calls must move
        if not killed and calls_of(b, "kill"):
            os.killpg(victim, signal.SIGKILL)
            killed.append(victim)
        return str(safe_eval(expression))

    async with (
        MultiServerPolicy(
            vllm_pair.base_urls, "tiny", timeout=60, version="v0", max_probe_interval=1
        ) as policy,
        WeightReloader(policy=policy) as reloader,
        make_engine(max_rollouts=8) as engine,
    ):
        run = await engine.run(
            TASKS,
            agent(policy),
            environment=lambda: FunctionEnvironment([calculator]),
            samples=4,
            run_id="kill",
        )
        rollouts = await no_loss(engine, run.id)
        on_a, on_b = calls_of(a, "kill"), calls_of(b, "kill")
        assert killed and on_b  # b had rollouts when it died
        for rollout_id in on_b:  # their later calls (or the one b dropped) went to a
            assert on_a[rollout_id] >= 1
        assert set(on_a) | set(on_b) == {r.id for r in rollouts}
        assert not policy.servers()[1].up

        # a reload while b is dead reaches a and skips b ...
        result = await reloader.reload(seed1_checkpoint, version="v1")
        assert set(result.skipped) == {b.url} and set(result.per_server) == {a.url}
        await anyio.to_thread.run_sync(vllm_pair.revive)  # ... b restarts on the old weights
        state = await policy.probe(b.base_url)
        assert not state.up and "serves weight version 'default'" in (state.down_reason or "")
        await reloader.reload(tiny_model_dir, version="v0")  # the next reload reaches b
        assert (await policy.probe(b.base_url)).up
        assert await reloader.weight_versions() == {a.url: "v0", b.url: "v0"}
        run = await engine.run(
            TASKS, agent(policy), environment="arithmetic", samples=1, run_id="back"
        )
        await no_loss(engine, run.id)
    assert calls_of(b, "back")  # b serves rollouts again
