"""One run as one self-contained HTML file to share: no script, no requests.

The file holds the run page (pass@k, spread, faults, timeline, workers), an
index of its rollouts and every rollout's trajectory, with the stylesheet
inline and the charts as ``data:`` images; its own CSP allows nothing else.
It is written rollout by rollout from one read snapshot, so a big run never
sits in memory whole. Ground truth is left out unless ``answers``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path

import anyio
from markupsafe import Markup

from engine.view.charts import data_uri
from engine.view.pages import Links, Page, chart_svg, rollout_fields, rollout_page, run_page
from engine.view.queries import RolloutRow, StoreReader
from engine.view.render import css, export_csp, render

INDEX_MARK = "<!--drillyard:index-->"
CHUNK = 500
EXPORT_MESSAGES = 1_000_000  # every message of a rollout, on one page


async def _rollouts(
    q: StoreReader, run_id: str, states: Sequence[str] | None, limit: int | None
) -> AsyncIterator[list[RolloutRow]]:
    after: int | None = None
    left = limit if limit is not None else -1
    while left != 0:
        size = CHUNK if left < 0 else min(CHUNK, left)
        rows = await q.rollouts(run_id, after=after, limit=size, state=states)
        if not rows:
            return
        yield rows
        after = rows[-1].num
        left = left - len(rows) if left > 0 else left


async def export_run(
    store: str | Path,
    run_id: str,
    out: str | Path,
    *,
    states: Sequence[str] | None = None,
    limit: int | None = None,
    answers: bool = False,
) -> int:
    """Write ``out`` (HTML) for ``run_id``; return how many rollouts it holds."""
    links = Links(export=True)
    style = css()
    head_extra = {
        "export": True,
        "css": Markup(style),  # the packaged stylesheet, not recorded text
        "export_csp": export_csp(style),
        "exported_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        "store": str(store),
        "links": links,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    async with StoreReader(store) as q, q.snapshot():
        page = await run_page(q, run_id, links=links, preview=0)
        now = time.time()
        svgs = {name: await chart_svg(q, run_id, name, now) for name in ("gantt", "throughput")}
        counts = (await q.state_counts([run_id]))[run_id]
        chosen = sum(n for s, n in counts.items() if states is None or s in states)
        exported = min(chosen, limit) if limit is not None else chosen
        page = replace(page, template="export.html", live=False)
        page.context["charts"] = {name: data_uri(svg) for name, svg in svgs.items()}
        head, _, tail = render(
            page, **head_extra, exported=exported, chosen_states=states, limit=limit
        ).partition(INDEX_MARK)
        async with await anyio.open_file(out, "w", encoding="utf-8") as fh:
            await fh.write(head)
            async for rows in _rollouts(q, run_id, states, limit):
                fields: dict[str, str] = {}
                rollout_fields(rows, fields)
                index = Page("_rollouts_table.html", "", {"rollouts": rows}, fields)
                await fh.write(render(index, **head_extra))
            async for rows in _rollouts(q, run_id, states, limit):
                for r in rows:
                    rp = await rollout_page(
                        q, r.id, show_answer=answers, links=links, page_size=EXPORT_MESSAGES
                    )
                    section = replace(rp, template="_export_rollout.html", live=False, tail=None)
                    await fh.write(render(section, **head_extra))
                    written += 1
            await fh.write(tail)
    return written
