"""The code jail under attack: its writable mounts, the workspace quota, nested
namespaces, /proc, signals, and what of the host's Python it can see."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from gaia.environment import GaiaEnvironment
from tests.adversarial.conftest import (
    assert_contained,
    assert_nothing_left,
    assert_responsive,
    hostile_rollout,
    needs_bwrap,
    python_in_jail,
    shell,
)

pytestmark = [pytest.mark.anyio, needs_bwrap]
MiB = 1 << 20
REPO = str(Path(__file__).resolve().parents[2])


def gaia(limits: dict[str, Any] | None = None, **options: Any) -> Any:
    config = {"code.local": {"limits": limits or {}}}
    return lambda: GaiaEnvironment(tools=["files", "code.local"], serve_web=False,
                                   tool_config=config, **options)


FILL = """
for d in / /etc /dev /dev/shm /run /var/tmp /tmp; do
  mkdir -p $d 2>/dev/null
  n=0
  for i in 1 2 3 4 5 6; do head -c 40000000 /dev/zero > $d/fill$i 2>/dev/null && n=$((n+1)); done
  echo "$d $(du -sck $d/fill* 2>/dev/null | tail -1 | cut -f1)"
done
"""


async def test_every_writable_mount_of_the_jail_is_capped(store: Path, run_tmp: Path) -> None:
    h = await hostile_rollout(store, gaia({"wall_seconds": 60}), [shell(FILL)])
    kept = {}
    for line in h.result("run_shell")["content"].splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].startswith("/") and parts[1].isdigit():
            kept[parts[0]] = int(parts[1]) * 1024
    assert set(kept) >= {"/", "/etc", "/dev", "/dev/shm", "/tmp"}, h.result("run_shell")
    from tools.sandbox import Limits

    caps = Limits()
    assert kept["/"] == kept["/etc"] == kept["/dev"] == 0, kept  # read-only
    assert kept["/dev/shm"] <= caps.shm_bytes and kept["/tmp"] <= caps.tmp_bytes, kept
    assert sum(kept.values()) <= caps.tmp_bytes + caps.shm_bytes, kept
    assert_responsive(h)
    assert_nothing_left(h, run_tmp)


async def test_the_workspace_has_a_disk_quota(store: Path, run_tmp: Path) -> None:
    limits = {"workspace_bytes": 48 * MiB, "workspace_files": 3000, "wall_seconds": 60}
    steps = [
        shell("for i in $(seq 1 40); do head -c 16000000 /dev/zero > big$i || break; done; "
              "echo wrote $(ls big* | wc -l)"),
        shell("echo more > more.txt && echo wrote-more"),
        shell("rm -f big*; echo cleaned"),
        shell("head -c 1000000 /dev/zero > small.bin && echo wrote-small"),
        python_in_jail("import os\nos.mkdir('n')\nfor i in range(100000):\n"
                       "    open(f'n/{i}', 'w').close()\nprint('made all')"),
        ("list_files", {}),
    ]
    h = await hostile_rollout(store, gaia(limits), steps)
    first = h.result("run_shell", 0)
    assert first["is_error"] and "quota" in first["content"], first
    assert "wrote-more" not in h.result("run_shell", 1)["content"]
    assert "cleaned" in h.result("run_shell", 2)["content"]
    assert "wrote-small" in h.result("run_shell", 3)["content"]
    files = h.result("run_python")
    assert files["is_error"] and "made all" not in files["content"], files
    assert "quota" in files["content"]
    assert_responsive(h)
    assert_contained(h, "run_python")
    assert_nothing_left(h, run_tmp)


async def test_nested_user_namespaces_are_refused(store: Path, run_tmp: Path) -> None:
    h = await hostile_rollout(store, gaia(), [
        shell("unshare -Ur id -u; echo rc=$?; unshare -U true; echo rc=$?")])
    content = h.result("run_shell")["content"]
    assert "rc=0" not in content, content
    assert_nothing_left(h, run_tmp)


async def test_proc_shows_nothing_of_the_host(store: Path, run_tmp: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DRILLYARD_HOST_SECRET", "ENV-SECRET-4711")
    probe = f"""
import os, glob
seen = []
for path in glob.glob('/proc/[0-9]*/environ') + glob.glob('/proc/[0-9]*/cmdline') + \\
        ['/proc/self/mountinfo', '/proc/1/mountinfo', '/proc/self/cgroup']:
    try:
        seen.append(open(path, 'rb').read().decode('utf-8', 'replace'))
    except OSError as e:
        seen.append('')
for path in glob.glob('/proc/[0-9]*/cwd') + glob.glob('/proc/[0-9]*/root'):
    try:
        seen.append(os.readlink(path))
    except OSError:
        pass
print('pids', len(glob.glob('/proc/[0-9]*')))
print('\\n'.join(seen))
print('engine', os.path.exists('/proc/{os.getpid()}/environ'))
"""
    h = await hostile_rollout(store, gaia(), [python_in_jail(probe)])
    text = h.result("run_python")["content"]
    assert "ENV-SECRET" not in text
    assert os.getcwd() not in text, "the engine's working directory is visible in the jail"
    assert REPO not in text and sys.prefix not in text
    pids = int(text.split("pids ", 1)[1].split()[0])
    assert pids < 10, text  # only the jail's own processes
    assert_nothing_left(h, run_tmp)


async def test_signals_from_the_jail_never_reach_the_engine(store: Path, run_tmp: Path) -> None:
    me = os.getpid()
    h = await hostile_rollout(store, gaia(), [
        shell(f"kill -9 {me}; echo rc=$?; kill -9 -1; echo after"),
        shell("echo next call runs"),
    ])
    assert "next call runs" in h.result("run_shell", 1)["content"]
    assert h.rollout is not None and h.rollout.state == "done"
    assert_responsive(h)
    assert_nothing_left(h, run_tmp)


SITE_PROBE = """
import os, sys
found = []
for top in ['/usr', '/etc', '/opt', '/srv', '/home', '/root', '/tmp', '/workspace']:
    for root, dirs, files in os.walk(top):
        if root.count('/') - top.count('/') >= 6:
            dirs[:] = []
        for name in dirs + files:
            path = os.path.join(root, name)
            if name in ('site-packages', 'dist-packages') or name.endswith(('.dist-info',
                                                                           '.egg-info')):
                if not os.path.isdir(path) or os.listdir(path):
                    found.append(path)
            elif name == 'metadata.jsonl' or path.endswith('gaia/data'):
                found.append(path)
print('FOUND', sorted(set(found))[:20])
print('PATH', [p for p in sys.path if p and os.path.isdir(p) and os.listdir(p)])
try:
    import yaml
    print('IMPORTED yaml from', yaml.__file__)
except ImportError:
    print('no third-party packages')
"""


async def test_the_jail_sees_no_site_packages(store: Path, run_tmp: Path) -> None:
    h = await hostile_rollout(store, gaia({"wall_seconds": 60}), [python_in_jail(SITE_PROBE)])
    text = h.result("run_python")["content"]
    assert "FOUND []" in text, text
    assert "IMPORTED" not in text
    if shutil.which("python3"):
        assert "no third-party packages" in text
    assert_nothing_left(h, run_tmp)


async def test_packages_are_shown_only_when_given_and_never_drillyard(
        store: Path, run_tmp: Path) -> None:
    from engine.errors import ConfigError
    from tools.code import LocalCodeEnvironment

    packages = run_tmp / "jail-packages"  # as `pip install --target` leaves it
    (packages / "harbourlib").mkdir(parents=True)
    (packages / "harbourlib" / "__init__.py").write_text("TIDE = 'high'\n")
    (packages / "harbourlib-1.0.dist-info").mkdir()
    h = await hostile_rollout(store, lambda: LocalCodeEnvironment(packages=[str(packages)]), [
        python_in_jail("import harbourlib, sys\nprint('tide', harbourlib.TIDE)")])
    assert "tide high" in h.result("run_python")["content"], h.result("run_python")
    (packages / "drillyard-0.1.0.dist-info").mkdir()
    with pytest.raises(ConfigError, match="Drillyard's own install"):
        LocalCodeEnvironment(packages=[str(packages)])
    shutil.rmtree(packages)
    assert_nothing_left(h, run_tmp)
