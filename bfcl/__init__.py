"""BFCL v4 multi-turn for Drillyard: the loader, the ``bfcl`` environment (the
entry's user turns and BFCL's stateful backends), the ``bfcl`` scorer (BFCL's
own multi-turn checker), agents and ``python -m engine eval bfcl``.

Needs ``bfcl-eval`` (installed without its pinned dependencies) and the
``bfcl`` extra: see `bfcl.package`. Importing ``bfcl`` registers the
environment and scorer by name (the engine's registry also declares both).
"""

from __future__ import annotations

from bfcl.package import CATEGORIES, INSTALL
from engine import registry

registry.declare("environments", "bfcl", "bfcl.environment:BFCLEnvironment", "bfcl")
registry.declare("scorers", "bfcl", "bfcl.scorer:bfcl_score", "bfcl")

__all__ = ["CATEGORIES", "INSTALL"]
