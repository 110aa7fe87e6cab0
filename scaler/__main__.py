"""``python -m scaler``: see `scaler.cli`."""

from __future__ import annotations

from scaler.cli import main

raise SystemExit(main())
