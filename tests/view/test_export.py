"""`python -m engine view --export RUN out.html`: one file that needs nothing else."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from engine import Run, TraceStore
from engine.view import StoreReader, export_run
from tests.view.conftest import HOSTILE, SECRET, Recorded
from tests.view.support import WATCH, engine_cli, live_fields

pytestmark = pytest.mark.anyio


async def test_the_export_is_one_self_contained_file_without_script(
    recorded: Recorded, chromium: Any, tmp_path: Path
) -> None:
    out = tmp_path / "shared" / "run.html"
    proc = await engine_cli(
        "view", "--store", str(recorded.store), "--export", recorded.run_id, str(out)
    )
    stdout, stderr = await proc.communicate()
    assert proc.returncode == 0, stderr.decode()
    async with TraceStore(recorded.store) as store:
        run = Run(store, recorded.run_id)
        rollouts = await run.rollouts()
        counts = await run.counts()
        first = min(rollouts, key=lambda r: (r.task_id != "t1", r.sample_index))
        messages = await store.messages(first.id)
    async with StoreReader(recorded.store) as q:
        row = await q.rollout(first.id)
        assert row is not None
    assert f"wrote {len(rollouts)} rollouts" in stdout.decode()
    html = out.read_text()
    assert SECRET not in html  # ground truth stays out unless --answers

    context = await chromium.new_context()
    await context.add_init_script(WATCH)
    page = await context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    await page.goto(out.as_uri())
    await page.wait_for_load_state("load")
    assert requests == [out.as_uri()]  # nothing else: styles inline, charts as data: images
    state = await page.evaluate(
        """() => ({
            scripts: document.scripts.length,
            violations: window.__violations,
            pwned: window.__pwned === undefined ? null : String(window.__pwned),
            sections: document.querySelectorAll("section.rollout").length,
            charts: [...document.querySelectorAll("img.chart")].map((i) => i.naturalWidth),
        })"""
    )
    assert state["scripts"] == 0 and state["violations"] == [] and state["pwned"] is None
    assert state["sections"] == len(rollouts) and all(w > 0 for w in state["charts"])
    fields = await live_fields(page)
    assert fields["count|done"] == str(counts["done"])
    section = page.locator(f"#r-{row.num}")
    shown = await section.locator(".msg").evaluate_all(
        "(ms) => ms.map((m) => Number(m.dataset.seq))"
    )
    assert shown == [m.seq for m in messages]
    assert HOSTILE in await section.locator(".msg.tool_result pre.text").first.text_content()
    # the index links to each trajectory in the file
    await page.locator(f'table.rollouts a[href="#r-{row.num}"]').click()
    assert page.url.endswith(f"#r-{row.num}")
    await context.close()


async def test_an_export_can_hold_some_states_a_few_rollouts_and_the_answers(
    recorded: Recorded, tmp_path: Path
) -> None:
    out = tmp_path / "errors.html"
    n = await export_run(
        recorded.store, recorded.run_id, out, states=["error", "failed"], limit=3, answers=True
    )
    html = out.read_text()
    assert n == 3 and html.count('<section class="rollout"') == 3
    assert "ground truth (shown because you asked)" in html
    secret_run = tmp_path / "secret.html"
    await export_run(recorded.store, recorded.run_id, secret_run, answers=True)
    assert SECRET in secret_run.read_text()
