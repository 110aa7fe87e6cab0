"""Ground truth: the wheel, installed where the jail sees system packages,
leaves no answer reachable from any GAIA tool (code jail, files, search, browser)."""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adversarial.conftest import needs_bwrap, needs_chromium

REPO = Path(__file__).resolve().parents[2]
PREFIX_PARENT = Path("/usr/local")
pytestmark = [needs_bwrap, needs_chromium, pytest.mark.slow]


def build_wheel(out: Path) -> Path:
    """``pip wheel`` of a clean copy of the project (the checkout stays untouched)."""
    src = out / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".git", ".venv", "__pycache__", "*.pyc", "tests", "bench", ".*_cache", "build",
        "*.egg-info", "*.db"))
    # without setuptools here, pip builds in an isolated env (setuptools from PyPI)
    local = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out / "dist"),
           *local, str(src)]
    subprocess.run(cmd, check=True, timeout=600)
    [wheel] = (out / "dist").glob("drillyard-*.whl")
    return wheel


@pytest.fixture
def installed_under_usr(tmp_path: Path) -> object:
    if not os.access(PREFIX_PARENT, os.W_OK):
        pytest.skip(f"{PREFIX_PARENT} is not writable: run as root to install the wheel there")
    wheel = build_wheel(tmp_path)
    prefix = PREFIX_PARENT / f"drillyard-gt-{secrets.token_hex(4)}"
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                        "--prefix", str(prefix), str(wheel)], check=True, timeout=300)
        [site] = prefix.glob("lib/python3*/site-packages")
        yield site
    finally:
        shutil.rmtree(prefix, ignore_errors=True)
    assert not prefix.exists()


def test_no_answer_is_reachable_from_any_tool(installed_under_usr: Path, tmp_path: Path) -> None:
    site = installed_under_usr
    out = tmp_path / "probe.json"
    probe = Path(__file__).with_name("gt_probe.py")
    done = subprocess.run([sys.executable, "-I", str(probe), str(site), str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["gaia"].startswith(str(site)), report["gaia"]  # the installed wheel ran
    metadata = Path(report["metadata"])
    needles = report["needles"]
    text = metadata.read_text()
    assert all(n in text for n in needles)  # the host sees the answers: the probe is not vacuous
    seen = report["seen"]
    for entry in seen:
        leaked = [n for n in needles if n in entry["content"]]
        assert not leaked, (entry["tool"], entry["arguments"], leaked)
    grep = seen[0]["content"]
    assert "/tmp/control.txt" in grep, grep  # the grep from inside the jail searched /
    hits = [ln for ln in grep.splitlines() if ln.startswith("/") and ln != "/tmp/control.txt"]
    assert not hits, hits
    assert "No such file or directory" in seen[1]["content"], seen[1]
    assert "find-done" in seen[2]["content"]
    assert not [ln for ln in seen[2]["content"].splitlines() if ln.endswith("metadata.jsonl")]
    assert "No module named 'gaia'" in seen[3]["content"], seen[3]
    assert "Halvard Point Lighthouse" in seen[-1]["content"]  # the browser itself works
