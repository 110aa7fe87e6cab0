"""Pages open in Chromium follow a real run writing to the same store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from engine import Run, Task, TraceStore
from engine.view import Viewer
from tests.view.conftest import record_run
from tests.view.support import live_fields, signed_in, url, wait_field

pytestmark = pytest.mark.anyio

MARK = "() => { window.__same_document = true; }"
SAME = "() => window.__same_document === true"


async def test_runs_run_and_rollout_pages_update_while_the_run_writes(
    tmp_path: Path, chromium: Any
) -> None:
    store = tmp_path / "live.db"
    async with TraceStore(store):
        pass  # an empty store (as a first run makes it) for the viewer to open
    tasks = [
        Task(f"t{i}", f"Question {i}", str(i), metadata={"level": 1 + i % 2}) for i in range(3)
    ]
    gate = asyncio.Event()  # every rollout waits for it before its final answer
    async with Viewer(store) as viewer:
        runs = await signed_in(chromium, viewer)
        writing = asyncio.create_task(record_run(store, "live", samples=2, gate=gate, tasks=tasks))
        try:
            # the run appears on the open runs page, and its rollouts reach the gate
            await wait_field(runs, "live|running", "6")
            await runs.evaluate(MARK)
            run = await runs.context.new_page()
            await run.goto(url(viewer, "/run", id="live"))
            assert (await live_fields(run))["count|generating"] == "6"
            assert (await live_fields(run))["status"] == "running"
            await run.evaluate(MARK)
            rollout = await runs.context.new_page()
            await rollout.goto(url(viewer, "/rollout", id="live.0"))
            before = await rollout.locator("#messages .msg").count()
            assert (await live_fields(rollout))["state"] == "generating"
            await rollout.evaluate(MARK)
            gate.set()
            await writing
        finally:
            gate.set()
            if not writing.done():
                writing.cancel()
        async with TraceStore(store) as trace:
            final = Run(trace, "live")
            counts = await final.counts()
            report = await final.pass_at_k([1, 2])
            messages = await final.messages("live.0")
        assert counts == {"done": 6}
        # each page shows the end without being reloaded: its script updated it in place
        await wait_field(runs, "live|done", "6")
        await wait_field(runs, "live|status", "finished")
        await wait_field(runs, "live|pass@1", f"{report.overall[1]:.3f}")
        await wait_field(run, "count|done", "6")
        await wait_field(run, "count|generating", "0")
        await wait_field(run, "pass|all|2", f"{report.overall[2]:.3f}")
        await wait_field(run, "status", "finished")
        await run.wait_for_selector("#workers td:text('inprocess')")  # a section re-rendered
        await wait_field(rollout, "state", "done")
        await rollout.wait_for_function(
            "(n) => document.querySelectorAll('#messages .msg').length === n", arg=len(messages)
        )
        shown = await rollout.locator("#messages .msg").evaluate_all(
            "(ms) => ms.map((m) => Number(m.dataset.seq))"
        )
        assert shown == [m.seq for m in messages] and len(shown) > before
        assert await rollout.locator("#messages .msg.score").count() == 1
        for page in (runs, run, rollout):
            assert await page.evaluate(SAME), "the page was reloaded instead of updated"
        # once the run is over the pages stop asking
        for page in (run, rollout):
            await page.wait_for_function("() => document.body.dataset.poll === 'done'")
