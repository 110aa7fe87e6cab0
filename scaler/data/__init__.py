"""The spec set shipped for the synthesis demo (``specs/``) and its author functions."""

from __future__ import annotations

from pathlib import Path

SPECS = Path(__file__).parent / "specs"
