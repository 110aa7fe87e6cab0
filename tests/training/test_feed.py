"""The training feed without a trainer: episodes, retries, masking, config."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.errors import ConfigError
from engine.integrations.config import FeedConfig
from engine.integrations.feed import Feed, TurnResult
from engine.training import secret_env
from engine.training.sft import export_sft


@pytest.fixture
def feed(tmp_path: Path, flaky_registered: None) -> Iterator[Feed]:
    secret_env.register()
    config = FeedConfig(
        store=str(tmp_path / "feed.db"),
        run_id="feed-test",
        environment="flaky_secret",
        scorer="secret_share",
        text_tool="say",
        system_prompt="Repeat the word.",
        retry_backoff=0.0,
        timings=str(tmp_path / "timings.jsonl"),
    )
    f = Feed(config)
    yield f
    f.close()


def row(fail: str = "") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    meta = {"secret": "paris", "fail": fail}
    data = {
        "task_id": f"t-{fail or 'ok'}",
        "ground_truth": "paris",
        "task_metadata": json.dumps(meta),
    }
    return [{"role": "user", "content": "Say a word."}], data


def turn(feed: Feed, uuid: str, n: int, text: str, ids: list[int]) -> TurnResult:
    lps = [-1.0] * len(ids)
    return feed.loop.call(feed.turn_end(uuid, n, text, [], ids, lps, "stop"))


def stored(feed: Feed, coro_fn: Any) -> Any:
    async def read() -> Any:
        await feed.store.commit()
        return await coro_fn(feed.store)

    return feed.loop.call(read())


def test_a_two_turn_episode_is_recorded_and_scored(feed: Feed) -> None:
    messages, data = row()
    firsts = feed.loop.call(feed.start_many([("u1", messages, data)], trainer_max=4))
    assert firsts == [[
        {"role": "system", "content": "Repeat the word."},
        {"role": "user", "content": "Say a word."},
    ]]  # fmt: skip
    first = turn(feed, "u1", 1, "hello", [5, 6, 7])
    assert not first.done and first.loss_mask == [1, 1, 1] and first.logprobs == [-1.0] * 3
    assert first.next_messages == [
        {"role": "user", "content": "The word is paris. " + " ".join(["paris"] * 8)}
    ]
    second = turn(feed, "u1", 2, "paris paris", [642, 642])
    assert second.done and second.infos["state"] == "done" and second.infos["reward"] == 1.0
    rid = second.infos["rollout_id"]
    assert feed.loop.call(feed.rewards([rid])) == [1.0]
    rec = stored(feed, lambda s: s.rollout(rid))
    assert (rec.state, rec.reward, rec.turns, rec.policy_version) == ("done", 1.0, 2, "step-0")
    replies = stored(feed, lambda s: s.messages(rid, "model_reply"))
    assert [m.payload["token_ids"] for m in replies] == [[5, 6, 7], [642, 642]]
    cats = [m.category for m in stored(feed, lambda s: s.messages(rid))]
    assert cats.index("model_reply") < cats.index("tool_call") < cats.index("tool_result")

    sft = Path(feed.config.store).with_name("sft.jsonl")
    assert stored(feed, lambda s: export_sft(s, "feed-test", sft)) == 1
    (line,) = sft.read_text().splitlines()
    assert json.loads(line) == {  # a text-action episode: no tools column
        "messages": [
            {"role": "system", "content": "Repeat the word."},
            {"role": "user", "content": "Say a word."},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": first.next_messages[0]["content"]},
            {"role": "assistant", "content": "paris paris"},
        ]
    }


def test_an_infrastructure_fault_is_retried_and_the_actions_replayed(feed: Feed) -> None:
    messages, data = row("once")
    feed.loop.call(feed.start_many([("u1", messages, data)], trainer_max=4))
    first = turn(feed, "u1", 1, "hello", [5])
    assert not first.done and "paris" in first.next_messages[0]["content"]
    rid = first.infos["rollout_id"]
    attempts = stored(feed, lambda s: s.attempts(rid))
    assert [a.state for a in attempts] == ["error"]
    last = turn(feed, "u1", 2, "paris", [642])
    assert last.done and last.infos["attempts"] == 2 and last.infos["reward"] == 1.0
    assert [a.state for a in stored(feed, lambda s: s.attempts(rid))] == ["error", "done"]
    sft = Path(feed.config.store).with_name("retried.jsonl")
    assert stored(feed, lambda s: export_sft(s, "feed-test", sft)) == 1  # the whole episode
    roles = [m["role"] for m in json.loads(sft.read_text())["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant"]


def test_a_sample_whose_infrastructure_keeps_failing_is_masked_not_replaced(feed: Feed) -> None:
    ok_messages, ok_data = row()
    bad_messages, bad_data = row("always")
    feed.loop.call(feed.start_many([("a", ok_messages, ok_data), ("b", bad_messages, bad_data)], 4))
    bad = turn(feed, "b", 1, "hello", [5, 6, 7])
    assert bad.done and bad.infos["masked"] and bad.infos["state"] == "error"
    assert bad.loss_mask == [0, 0, 1]  # see feed.masked_out
    ok = turn(feed, "a", 1, "hi", [9])
    assert not ok.done and ok.loss_mask == [1]
    rewards = feed.loop.call(feed.rewards([bad.infos["rollout_id"], ok.infos["rollout_id"]]))
    assert rewards == [None, None]  # masked; the other has no result yet
    attempts = stored(feed, lambda s: s.attempts(bad.infos["rollout_id"]))
    assert [a.state for a in attempts] == ["error"] * 3
    assert stored(feed, lambda s: s.rollouts("feed-test", "error"))[0].reward is None


def test_the_turn_budget_follows_the_curriculum(tmp_path: Path) -> None:
    secret_env.register()
    config = FeedConfig(
        store=str(tmp_path / "c.db"),
        environment="secret_word",
        scorer="secret_share",
        text_tool="say",
        curriculum={"budgets": [1, 2], "steps_per_stage": 3},
    )
    feed = Feed(config)
    try:
        messages, data = row()
        feed.global_step = 0
        feed.loop.call(feed.start_many([("u", messages, data)], trainer_max=2))
        early = turn(feed, "u", 1, "hello", [5])
        assert early.done and early.infos["state"] == "failed" and early.infos["turn_budget"] == 1
        feed.global_step = 3
        feed.loop.call(feed.start_many([("u", messages, data)], trainer_max=2))
        assert not turn(feed, "u", 1, "hello", [5]).done
        late = turn(feed, "u", 2, "paris", [642])
        assert late.done and late.infos["turn_budget"] == 2 and late.infos["step"] == 3
    finally:
        feed.close()


def test_config_from_a_toml_file_and_variables(tmp_path: Path) -> None:
    path = tmp_path / "feed.toml"
    path.write_text('[drillyard]\nenvironment = "secret_word"\ncurriculum = "webarena"\n')
    env = {"DRILLYARD_SWIFT_CONFIG": str(path), "DRILLYARD_MAX_ATTEMPTS": "5"}
    config = FeedConfig.from_env(env)
    assert (config.environment, config.curriculum, config.max_attempts) == (
        "secret_word",
        "webarena",
        5,
    )
    json_cfg = FeedConfig.from_env({"DRILLYARD_CURRICULUM": '{"preset": "babyai"}'})
    assert json_cfg.curriculum == {"preset": "babyai"}
    path.write_text('environment = "x"\nnot_a_field = 1\n')
    with pytest.raises(ConfigError, match="not_a_field"):
        FeedConfig.from_env({"DRILLYARD_SWIFT_CONFIG": str(path)})
    with pytest.raises(ConfigError, match="DRILLYARD_MAX_ATTEMPTS"):
        FeedConfig.from_env({"DRILLYARD_MAX_ATTEMPTS": "many"})
    with pytest.raises(ConfigError, match="file not found"):
        FeedConfig.from_env({"DRILLYARD_SWIFT_CONFIG": str(tmp_path / "nope.json")})


def test_an_unknown_environment_fails_at_once(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nowhere"):
        Feed(FeedConfig(store=str(tmp_path / "x.db"), environment="nowhere"))


def test_tool_calls_step_the_environment_and_come_back_as_tool_messages(tmp_path: Path) -> None:
    config = FeedConfig(
        store=str(tmp_path / "tools.db"), run_id="tools", environment="arithmetic", scorer="numeric"
    )
    feed = Feed(config)
    try:
        data = {"task_id": "add", "ground_truth": "5"}
        msgs = [{"role": "user", "content": "What is 2 + 3?"}]
        first = feed.loop.call(feed.start_many([("u", msgs, data)], trainer_max=3))[0]
        assert first[-1]["content"].startswith("What is 2 + 3?")  # the env's reset observation
        body = '{"name": "calculator", "arguments": {"expression": "2 + 3"}}'
        call = f"<tool_call>\n{body}\n</tool_call>"
        acted = feed.loop.call(feed.turn_end("u", 1, call, [], [3, 4, 5], [], "stop"))
        assert not acted.done and acted.next_messages == [{"role": "tool", "content": "5"}]
        broken = feed.loop.call(feed.turn_end("u", 2, "<tool_call>oops", [], [3, 6], [], "stop"))
        assert not broken.done and broken.next_messages[0]["content"].startswith("Error:")
        answer = feed.loop.call(feed.turn_end("u", 3, "5", [], [7], [], "stop"))
        assert answer.done and answer.infos["reward"] == 1.0 and answer.infos["state"] == "done"
        calls = stored(feed, lambda s: s.messages(answer.infos["rollout_id"], "tool_call"))
        assert [c.payload["name"] for c in calls] == ["calculator", ""]
        assert calls[1].payload["error"]
    finally:
        feed.close()
