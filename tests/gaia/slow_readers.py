"""Readers for tests, importable by name in the parser child (`tools.parsing`)."""

from __future__ import annotations

import time
from pathlib import Path


def slow_reader(path: Path) -> str:
    """A reader that takes a minute."""
    time.sleep(60)
    return "late"
