"""Parts chosen by name where an extra offers a faster one: ``"auto"`` takes it where installed.

`engine.eventloop` (uvloop over asyncio's loop) and `engine.policy.transport`
(pyreqwest over aiohttp) choose the same way: a name given, else an environment
variable, else ``auto``; an unknown name, or the extra's part asked for where it
is not installed, is a `ConfigError` before anything runs.
"""

from __future__ import annotations

import importlib
import os

from engine.errors import ConfigError


def choose_installed(
    name: str | None, *, env: str, what: str, where: str, plain: str, fast: str, fix: str
) -> str:
    """``plain`` or ``fast`` (a module's name) as ``name`` selects it here (None:
    ``$env``, else ``auto``: ``fast`` where it imports); ``what`` names the choice in an
    error at ``where``, ``fix`` says how to install ``fast``."""
    name = name or os.environ.get(env) or "auto"
    choices = ("auto", plain, fast)
    if name not in choices:
        raise ConfigError(where, f"unknown {what} {name!r}", f"use one of {', '.join(choices)}")
    if name == plain:
        return plain
    try:
        importlib.import_module(fast)
    except ImportError as exc:
        if name == fast:
            raise ConfigError(where, f"{fast} is not installed", fix) from exc
        return plain
    return fast
