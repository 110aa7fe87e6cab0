"""Screenshots of the trace viewer for the README: ``python scripts/view_screenshots.py``.

Records two real runs of the bundled offline GAIA set with the scripted
solution agent of the tests (real tools: calculator, file readers, search),
the second with a turn budget too small for the two-step tasks, serves the
store with the viewer and photographs the run page and a rollout page in
Chromium: ``docs/view-run.png``, ``docs/view-rollout.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent


async def record(store: Path, run_id: str, max_turns: int) -> None:
    from engine import Engine, SamplingParams
    from gaia import BUNDLED
    from gaia.agent import gaia_agent, gaia_environment
    from gaia.loader import load_gaia
    from tests.gaia.oracle import SolutionPolicy

    agent = gaia_agent(
        SolutionPolicy(wrong_from=2), max_turns=max_turns, sampling=SamplingParams(seed=0)
    )
    async with Engine(store=store, progress=False) as engine:
        await engine.run(
            load_gaia(BUNDLED),
            agent,
            samples=4,
            scorer="gaia",
            run_id=run_id,
            environment=gaia_environment(["calculator", "files", "search"]),
        )


async def photograph(store: Path, out: Path) -> None:
    from playwright.async_api import async_playwright

    from engine.view import StoreReader, Viewer
    from tools.browser import CHROMIUM, CHROMIUM_ARGS

    async with StoreReader(store) as q:
        rollouts = await q.rollouts("gaia-oracle", limit=1000)
    # a rollout that used two tools and succeeded
    shown = next(r for r in rollouts if r.state == "done" and r.reward == 1.0 and r.turns >= 3)
    async with Viewer(store) as viewer, async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = await (await browser.new_context(viewport={"width": 1280, "height": 900})).new_page()
        await page.goto(viewer.url)
        for name, path, params, height in (
            ("view-run.png", "/run", {"id": "gaia-short"}, 2050),
            ("view-rollout.png", "/rollout", {"id": shown.id}, 1900),
        ):
            await page.goto(viewer.base_url + path + "?" + urlencode(params))
            await page.wait_for_load_state("load")
            await page.screenshot(
                path=str(out / name),
                full_page=True,
                clip={"x": 0, "y": 0, "width": 1280, "height": height},
            )
            print(f"wrote {out / name}")
        await browser.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", type=Path, default=ROOT / "docs")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "gaia.db"
        asyncio.run(record(store, "gaia-oracle", max_turns=12))
        asyncio.run(record(store, "gaia-short", max_turns=2))
        asyncio.run(photograph(store, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
