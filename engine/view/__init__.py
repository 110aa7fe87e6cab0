"""The trace viewer: ``python -m engine view --store runs.db``.

A read-only web view of a trace store (`engine.view.queries`), served on
loopback behind a token (`engine.view.server`), with pages built from bounded
queries (`engine.view.pages`) and rendered by autoescaping templates
(`engine.view.render`); `engine.view.export` writes one run as a single
self-contained HTML file. `python -m engine.view.bench` measures page loads
on a million-message store.
"""

from __future__ import annotations

from engine.view.export import export_run
from engine.view.queries import ErrorReason, StoreReader
from engine.view.server import Viewer

__all__ = ["ErrorReason", "StoreReader", "Viewer", "export_run"]
