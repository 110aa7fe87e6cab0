"""Every viewer page in real Chromium, its numbers checked against the store's own API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import Agent, Engine, FunctionEnvironment, Run, ScriptedPolicy, Task, TraceStore
from engine.view import Viewer
from engine.view.summary import ks_for
from tests.view.conftest import SECRET, Recorded, lookup
from tests.view.support import live_fields, signed_in, url

pytestmark = pytest.mark.anyio


def fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


async def test_runs_and_run_pages_show_the_stores_numbers(
    recorded: Recorded, chromium: Any
) -> None:
    async with TraceStore(recorded.store) as store, Viewer(recorded.store) as viewer:
        page = await signed_in(chromium, viewer)
        runs = await live_fields(page)
        for run_id in recorded.run_ids:
            counts = await Run(store, run_id).counts()
            assert runs[f"{run_id}|done"] == str(counts.get("done", 0))
            assert runs[f"{run_id}|error"] == str(counts.get("error", 0))
            assert runs[f"{run_id}|total"] == str(sum(counts.values()))
            assert runs[f"{run_id}|status"] == "finished"
        assert await page.locator("#runs tbody tr").count() == 2

        run = Run(store, recorded.run_id)
        await page.goto(url(viewer, "/run", id=recorded.run_id))
        fields = await live_fields(page)
        counts = await run.counts()
        for state in ("done", "failed", "error", "queued", "timed_out"):
            assert fields[f"count|{state}"] == str(counts.get(state, 0)), state
        ks = ks_for(4)
        assert ks == [1, 2, 4]
        report = await run.pass_at_k(ks, by=["level"])  # the engine's own pass@k
        for k in ks:
            assert fields[f"pass|all|{k}"] == fmt(report.overall[k])
            for level, scores in report.by["level"].items():
                assert fields[f"pass|level={level}|{k}"] == fmt(scores.get(k))
        assert fields["tasks|all"] == str(len(report.per_task))

        # GRPO spread: groups whose scored rewards are all equal teach nothing
        scored: dict[str, list[float]] = {}
        for r in await run.rollouts(("done", "failed", "timed_out")):
            if r.reward is not None:
                scored.setdefault(r.task_id, []).append(r.reward)
        equal = [t for t, rs in scored.items() if len(rs) >= 2 and len(set(rs)) == 1]
        assert equal, "the fixture has all-equal groups (secret, loops)"
        assert fields["spread|all_equal"] == str(len(equal))
        assert fields["spread|all_zero"] == str(sum(1 for t in equal if scored[t][0] == 0))

        # faults grouped by reason: the final state's rollouts, every attempt's count
        errors = await run.rollouts("error")
        attempts = [a for r in errors for a in await store.attempts(r.id) if a.state == "error"]
        rows = await page.locator("#errors tbody tr").evaluate_all(
            "(rows) => rows.map((r) => [...r.cells].map((c) => c.textContent))"
        )
        # the lost environment (one reason, digits aside), then the turn limit
        assert [row[:3] for row in rows] == [
            ["error", str(len(errors)), str(len(attempts))],
            ["failed", str(counts["failed"]), str(counts["failed"])],
        ]
        assert len(errors) == 4 and len(attempts) == 8  # each retried once
        assert rows[0][3].startswith("EnvironmentLost: worker 10.0.0.")

        # the timeline and throughput charts load (as images: they cannot run script)
        for chart in ("#gantt", "#throughput"):
            assert (
                await page.locator(chart).evaluate("(img) => img.complete && img.naturalWidth") > 0
            )
        assert (await page.locator("#rollouts-table tbody tr").count()) == sum(counts.values())

        # other pages: rollouts by state, groups, compare
        await page.goto(url(viewer, "/run/rollouts", id=recorded.run_id, state="error"))
        shown = await page.locator("#rollouts-table tbody tr").evaluate_all(
            "(rows) => rows.map((r) => r.dataset.rollout)"
        )
        assert shown == [r.id for r in sorted(errors, key=lambda r: r.sample_index)]
        await page.goto(url(viewer, "/run/groups", id=recorded.run_id))
        assert await page.locator("#groups tbody tr").count() == len(report.per_task)

        other = await Run(store, recorded.other_id).pass_at_k([1, 2])
        mine = await run.pass_at_k([1, 2])
        await page.goto(
            url(viewer, "/run/compare", id=recorded.run_id, **{"with": recorded.other_id})
        )
        row = page.locator('#compare-tasks tr[data-task="t1"] td')
        cells = await row.all_inner_texts()
        assert cells[0] == "t1"
        assert cells[2:4] == [fmt(mine.per_task["t1"][1]), fmt(mine.per_task["t1"][2])]
        assert cells[5:7] == [fmt(other.per_task["t1"][1]), fmt(other.per_task["t1"][2])]
        overall = await page.locator("#compare-overall tbody tr").all_inner_texts()
        assert fmt(mine.overall[1]) in overall[0] and fmt(other.overall[1]) in overall[1]


async def test_a_rollout_page_shows_the_whole_trajectory_in_order(
    recorded: Recorded, chromium: Any
) -> None:
    async with TraceStore(recorded.store) as store, Viewer(recorded.store) as viewer:
        run = Run(store, recorded.run_id)
        # a rollout that failed once and was retried: both attempts, in order
        flaky = (await run.rollouts("error"))[0]
        done = next(r for r in await run.rollouts("done") if r.task_id == "t1")
        page = await signed_in(chromium, viewer)
        for rollout in (done, flaky):
            messages = await store.messages(rollout.id)
            await page.goto(url(viewer, "/rollout", id=rollout.id))
            seen = await page.locator("#messages .msg").evaluate_all(
                "(ms) => ms.map((m) => [Number(m.dataset.seq), m.dataset.category])"
            )
            assert seen == [[m.seq, str(m.category)] for m in messages]
            attempts = await page.locator("#attempts tbody tr").count()
            assert attempts == len(await store.attempts(rollout.id))
        assert attempts == 2  # the flaky one: each attempt with its reason
        assert "EnvironmentLost" in await page.locator("#attempts").inner_text()

        await page.goto(url(viewer, "/rollout", id=done.id))
        messages = await store.messages(done.id)
        fields = await live_fields(page)
        replies = [m for m in messages if m.category == "model_reply"]
        assert fields["prompt_tokens"] == str(
            sum(m.payload["usage"]["prompt_tokens"] for m in replies)
        )
        assert fields["completion_tokens"] == str(
            sum(m.payload["usage"]["completion_tokens"] for m in replies)
        )
        assert fields["policy_version"] == "v7" and fields["worker"] == done.worker
        assert fields["reward"] == fmt(done.reward) and fields["state"] == "done"
        result = next(m for m in messages if m.category == "tool_result")
        shown = await page.locator(f"#m{result.seq} pre.text").text_content()
        assert shown == result.payload["content"]
        call = next(m for m in messages if m.category == "tool_call")
        assert "lookup" in await page.locator(f"#m{call.seq}").inner_text()
        # every message's raw JSON is one click away, and the full one a link away
        await page.locator(f"#m{result.seq} details.rawjson summary").click()
        raw = await page.locator(f"#m{result.seq} pre.raw").inner_text()
        assert '"category": "tool_result"' in raw
        full = page.locator(f"#m{result.seq} details.rawjson a")
        async with page.expect_navigation():
            await full.click()
        assert '"seq": ' + str(result.seq) in await page.locator("body").inner_text()

        # the ground truth shows only when asked for
        secret = next(r for r in await run.rollouts() if r.task_id == "secret")
        await page.goto(url(viewer, "/rollout", id=secret.id))
        assert SECRET not in await page.content()
        await page.get_by_text("show the ground truth").click()
        await page.wait_for_selector("#truth")
        assert SECRET in await page.locator("#truth").inner_text()


async def test_a_50_turn_rollout_reads_turn_by_turn_and_pages_by_seq(
    tmp_path: Path, chromium: Any
) -> None:
    turns = 50

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        done = sum(1 for m in messages if m["role"] == "tool")
        if done < turns - 1:
            return {"tool_calls": [{"name": "lookup", "arguments": {"q": f"step {done}"}}]}
        return "<answer>0</answer>"

    store = tmp_path / "long.db"
    async with Engine(store=store, progress=False) as engine:
        run = await engine.run(
            [Task("long", "a long one", "0")],
            Agent(ScriptedPolicy(handler), max_turns=turns),
            environment=lambda: FunctionEnvironment([lookup]),
            run_id="long",
        )
        (rollout,) = await run.rollouts()
        messages = await run.messages(rollout.id)
    assert rollout.state == "done" and rollout.turns == turns
    async with Viewer(store) as viewer:
        page = await signed_in(chromium, viewer)
        await page.goto(url(viewer, "/rollout", id=rollout.id))
        assert await page.locator("#messages .turn").count() == turns
        assert await page.locator("#messages .msg").count() == len(messages)
        # pages of 100 messages, keyset by seq: every message once, in order
        seqs: list[int] = []
        await page.goto(url(viewer, "/rollout", id=rollout.id, n=100))
        while True:
            seqs += await page.locator("#messages .msg").evaluate_all(
                "(ms) => ms.map((m) => Number(m.dataset.seq))"
            )
            more = page.get_by_text("next messages →")
            if not await more.count():
                break
            async with page.expect_navigation():
                await more.click()
        assert seqs == [m.seq for m in messages] and len(messages) > 300
