"""Which event loop the command-line entry points run on: uvloop where installed.

An embedding application owns its loop (run Drillyard on uvloop with
``uvloop.run(main())``). The CLIs and the bench call `run`: with
``loop="auto"`` (the default) they use uvloop when it is installed
(``pip install 'drillyard[fast]'``) and asyncio's own loop otherwise;
``DRILLYARD_LOOP=asyncio`` (or ``uvloop``) overrides the default.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

from engine.errors import ConfigError

T = TypeVar("T")
LoopName = Literal["auto", "asyncio", "uvloop"]
LOOPS: tuple[LoopName, ...] = ("auto", "asyncio", "uvloop")
LOOP_ENV = "DRILLYARD_LOOP"


def resolve(loop: str | None = None) -> Literal["asyncio", "uvloop"]:
    """The loop ``loop`` names (None: ``$DRILLYARD_LOOP``, else auto) as run here."""
    name = loop or os.environ.get(LOOP_ENV) or "auto"
    if name not in LOOPS:
        raise ConfigError(
            "event loop", f"unknown loop {name!r}", "use one of auto, asyncio, uvloop"
        )
    if name == "asyncio":
        return "asyncio"
    try:
        importlib.import_module("uvloop")
    except ImportError as exc:
        if name == "uvloop":
            raise ConfigError(
                "event loop", "uvloop is not installed", "pip install 'drillyard[fast]'"
            ) from exc
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T], loop: str | None = None) -> T:
    """``asyncio.run(main)`` on the loop `resolve` picks."""
    if resolve(loop) == "uvloop":
        uvloop = importlib.import_module("uvloop")
        result: T = uvloop.run(main)
        return result
    return asyncio.run(main)
