"""BFCL tests need the real ``bfcl-eval`` package: skipped without it, unless
DRILLYARD_REQUIRE_BFCL=1 (CI), where a missing package is a failure."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def bfcl_installed(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    if importlib.util.find_spec("bfcl_eval") is None:
        from bfcl.package import INSTALL

        if os.environ.get("DRILLYARD_REQUIRE_BFCL") == "1":
            pytest.fail(f"bfcl-eval is not installed but DRILLYARD_REQUIRE_BFCL=1: {INSTALL}")
        pytest.skip(f"bfcl-eval not installed: {INSTALL}")
    root: Path = tmp_path_factory.getbasetemp() / "bfcl-root"
    monkeypatch.setenv("DRILLYARD_BFCL_ROOT", str(root))  # BFCL's result/lock folders
    yield
