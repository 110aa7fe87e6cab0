"""Helpers for driving viewer pages in Chromium."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any
from urllib.parse import urlencode

from engine.view import Viewer

WATCH = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__violations.push(e.violatedDirective + " " + (e.blockedURI || "inline"));
});
"""
"""Run before any page script: records every CSP violation (escaping that failed)."""


async def signed_in(browser: Any, viewer: Viewer) -> Any:
    """A fresh browser context that has opened the viewer's URL (so holds its cookie)."""
    context = await browser.new_context(viewport={"width": 1300, "height": 900})
    await context.add_init_script(WATCH)
    page = await context.new_page()
    response = await page.goto(viewer.url)
    assert response is not None and response.ok, "the token URL did not open the viewer"
    assert "token=" not in page.url, "the token stays out of the address bar"
    return page


def url(viewer: Viewer, path: str, **params: Any) -> str:
    return viewer.base_url + path + ("?" + urlencode(params) if params else "")


async def live_fields(page: Any) -> dict[str, str]:
    """Every ``[data-live]`` value on the page, by key."""
    fields: dict[str, str] = await page.evaluate(
        "() => Object.fromEntries([...document.querySelectorAll('[data-live]')]"
        ".map((e) => [e.dataset.live, e.textContent]))"
    )
    return fields


async def wait_field(page: Any, key: str, value: str, wait_ms: float = 30_000) -> None:
    """Wait (on the page, not a clock) until the live field ``key`` reads ``value``."""
    await page.wait_for_function(
        "([key, value]) => [...document.querySelectorAll('[data-live]')]"
        ".some((e) => e.dataset.live === key && e.textContent === value)",
        arg=[key, value],
        timeout=wait_ms,
    )


async def engine_cli(*args: str, **env: str) -> asyncio.subprocess.Process:
    """``python -m engine ARGS`` in a child process, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **env},
    )  # fmt: skip
