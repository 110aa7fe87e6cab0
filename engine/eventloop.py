"""Which event loop the command-line entry points run on: uvloop where installed.

An embedding application owns its loop (run Drillyard on uvloop with
``uvloop.run(main())``). The CLIs and the bench call `run`: with
``loop="auto"`` (the default) they use uvloop when it is installed
(``pip install 'drillyard[fast]'``) and asyncio's own loop otherwise;
``DRILLYARD_LOOP=asyncio`` (or ``uvloop``) overrides the default.

They also run under `tuned_gc`: with a thousand rollouts live, CPython's
cyclic collector at its defaults (a young collection every 700 allocations)
took about a third of the engine's CPU in the HTTP bench. An embedding
application can use ``with tuned_gc():`` itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import importlib
import os
from collections.abc import Coroutine, Iterator
from typing import Any, Literal, TypeVar

from engine.errors import ConfigError
from engine.extras import choose_installed

T = TypeVar("T")
LoopName = Literal["auto", "asyncio", "uvloop"]
LOOPS: tuple[LoopName, ...] = ("auto", "asyncio", "uvloop")
LOOP_ENV = "DRILLYARD_LOOP"
GC_ENV = "DRILLYARD_GC_THRESHOLD"
GC_THRESHOLD = 50_000
"""Allocations between young collections under `tuned_gc` (CPython's default: 700)."""


def resolve(loop: str | None = None) -> Literal["asyncio", "uvloop"]:
    """The loop ``loop`` names (None: ``$DRILLYARD_LOOP``, else auto) as run here."""
    chosen = choose_installed(
        loop, env=LOOP_ENV, what="loop", where="event loop", plain="asyncio", fast="uvloop",
        fix="pip install 'drillyard[fast]'",
    )  # fmt: skip
    return "uvloop" if chosen == "uvloop" else "asyncio"


def gc_threshold(threshold: int | None = None) -> int:
    """The young-generation threshold `tuned_gc` sets (None: ``$DRILLYARD_GC_THRESHOLD``,
    else `GC_THRESHOLD`); 0 leaves the collector as it is."""
    raw = ""
    if threshold is None:
        raw = os.environ.get(GC_ENV, "").strip()
        try:
            threshold = int(raw) if raw else GC_THRESHOLD
        except ValueError:
            threshold = -1
    if threshold < 0:
        raise ConfigError(
            f"${GC_ENV}" if raw else "gc threshold",
            f"not a count of allocations: {raw or threshold!r}",
            f"set it to a whole number >= 0 (0: CPython's defaults; default {GC_THRESHOLD})",
        )
    return threshold


@contextlib.contextmanager
def tuned_gc(threshold: int | None = None) -> Iterator[None]:
    """Fewer cyclic collections while it lasts, restored after.

    Objects alive on entry (modules, the app's setup) are frozen out of the
    collector's sight (`gc.freeze`), so full collections do not walk them,
    and a young collection runs every ``threshold`` allocations instead of
    700. Garbage in reference cycles is still collected, later; nothing else
    changes."""
    young = gc_threshold(threshold)
    if not young or not gc.isenabled():
        yield
        return
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(young, *before[1:])
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if not frozen:  # an app's own freeze (before it forks) is all or nothing: keep it
            gc.unfreeze()


def running() -> Literal["asyncio", "uvloop"]:
    """The loop the calling coroutine runs on, by the name `run` takes."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T], loop: str | None = None) -> T:
    """``asyncio.run(main)`` on the loop `resolve` picks, under `tuned_gc`."""
    try:
        name, young = resolve(loop), gc_threshold()
    except BaseException:
        main.close()  # never run: no "was never awaited" warning on top of the error
        raise
    with tuned_gc(young):
        if name == "uvloop":
            uvloop = importlib.import_module("uvloop")
            result: T = uvloop.run(main)
            return result
        return asyncio.run(main)
