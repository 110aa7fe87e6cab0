"""The command line: `view` serves and stops, `report` says why rollouts did not succeed."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.view.conftest import HOSTILE_RUN, Recorded
from tests.view.support import engine_cli

pytestmark = pytest.mark.anyio


async def test_view_prints_a_url_with_its_token_and_stops_on_ctrl_c(recorded: Recorded) -> None:
    proc = await engine_cli("view", "--store", str(recorded.store), "--port", "0")
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(60):
            line = ""
            while "token=" not in line:
                line = (await proc.stdout.readline()).decode()
                assert line, "the viewer exited before printing its URL"
        address = line.strip()
        base = address.split("/?token=")[0]
        jar = aiohttp.CookieJar(unsafe=True)
        async with aiohttp.ClientSession(cookie_jar=jar) as http:
            async with http.get(base + "/") as resp:
                assert resp.status == 401
            async with http.get(address) as resp:  # redirected, with the cookie
                assert resp.status == 200 and "run-b" in await resp.text()
        proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(30):
            assert await proc.wait() == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_view_refuses_a_missing_store_and_an_unknown_run(tmp_path: Path) -> None:
    missing = subprocess.run(
        [sys.executable, "-m", "engine", "view", "--store", str(tmp_path / "nope.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert missing.returncode == 2 and "no trace store at this path" in missing.stderr
    assert not (tmp_path / "nope.db").exists()  # the viewer never creates a store


async def test_report_lists_the_top_fault_reasons_under_pass_at_k(recorded: Recorded) -> None:
    done = await engine_cli(
        "report", HOSTILE_RUN, "--store", str(recorded.store), "--k", "1,4", COLUMNS="200"
    )
    out, err = await done.communicate()
    assert done.returncode == 0, err.decode()
    text = out.decode()
    assert text.index("pass@k") < text.index("why rollouts did not succeed")
    rows = [line for line in text.splitlines() if "EnvironmentLost" in line or "turn limit" in line]
    # state, rollouts that ended so, attempts that did (each lost one was retried once)
    assert [[cell.strip() for cell in row.split("│")[1:4]] for row in rows] == [
        ["error", "4", "8"],
        ["failed", "4", "4"],
    ]


def test_the_page_load_bench_runs_on_a_small_store(tmp_path: Path) -> None:
    from engine.view.bench import main

    assert (
        main(
            [
                "--tasks",
                "6",
                "--samples",
                "2",
                "--messages",
                "12",
                "--repeat",
                "1",
                "--no-browser",
                "--export-rollouts",
                "3",
                "--out",
                str(tmp_path),
            ]
        )
        == 0
    )
    results = json.loads((tmp_path / "view.json").read_text())
    assert results["store"]["messages"] == 6 * 2 * 12 + 6 * 2 * 10  # the big run and the small one
    pages = {p["page"] for p in results["http"]}
    assert {"runs", "run", "rollout, last", "compare", "timeline SVG"} <= pages
    assert results["export"]["rollouts"] == 3
    assert "| run |" in (tmp_path / "view.md").read_text()
