"""Files an agent made are hostile input to the engine: FIFOs, deep trees, many
files, odd names and shapes, links and races, through GAIA's default tools."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from gaia.environment import GaiaEnvironment
from tests.adversarial.conftest import (
    Hostile,
    assert_contained,
    assert_nothing_left,
    assert_responsive,
    hostile_rollout,
    needs_bwrap,
    needs_chromium,
    python_in_jail,
    shell,
    start_racer,
    unjam_fifo,
)

pytestmark = [pytest.mark.anyio, needs_bwrap]


def gaia(*tools: str, **options: Any) -> Any:
    return lambda: GaiaEnvironment(tools=list(tools), serve_web=False, **options)


@needs_chromium
async def test_a_fifo_named_as_a_screenshot_does_not_freeze_the_engine(
        store: Path, run_tmp: Path) -> None:
    holder: list[Hostile] = []

    def fifo() -> Path | None:
        return holder[0].workspace / "shot.png" if holder and holder[0].workspaces else None

    def goto(h: Hostile) -> tuple[str, dict[str, Any]]:
        holder.append(h)
        return "browser_goto", {"url": f"{h.env.server.url}/index.html"}

    with unjam_fifo(fifo) as unjammed:
        h = await hostile_rollout(
            store, lambda: GaiaEnvironment(tools=["files", "code.local", "browser"]),
            [shell("mkfifo shot.png && ls -l shot.png"), goto,
             ("browser_screenshot", {"name": "shot.png"}), shell("echo still here")])
    assert not unjammed, "the engine blocked on the FIFO until the safety net opened it"
    assert_responsive(h)
    assert_contained(h, "browser_screenshot")
    assert "not a regular file" in h.result("browser_screenshot")["content"]
    assert "still here" in h.result("run_shell")["content"]
    assert_nothing_left(h, run_tmp)


async def test_fifos_devices_and_sockets_are_never_opened_by_the_file_tools(
        store: Path, run_tmp: Path) -> None:
    steps = [
        python_in_jail("import os, socket\nos.mkfifo('data.txt')\nos.mkfifo('sheet.xlsx')\n"
                       "s = socket.socket(socket.AF_UNIX); s.bind('sock.csv')\n"
                       "os.symlink('/dev/zero', 'zero.txt')\nprint('planted')"),
        ("read_file", {"path": "data.txt"}),
        ("read_file", {"path": "sheet.xlsx"}),
        ("read_file", {"path": "sock.csv"}),
        ("read_file", {"path": "zero.txt"}),
        ("list_files", {}),
    ]
    h = await hostile_rollout(store, gaia("files", "code.local", deadline=20), steps)
    assert_responsive(h)
    for index in range(4):
        result = h.result("read_file", index)
        assert result["is_error"] and "did not finish" not in result["content"], result
    assert_contained(h, "read_file")
    assert_nothing_left(h, run_tmp)


DEEP = """
import os
os.mkdir('deep'); os.chdir('deep')
for i in range(1500):
    os.mkdir('d'); os.chdir('d')
with open('bottom.bin', 'wb') as f:
    f.write(os.urandom(1 << 20))
os.chdir('/workspace')
open('top.txt', 'w').write('top level text')
print('depth', 1500)
"""


async def test_a_deep_tree_is_listed_read_and_removed(store: Path, run_tmp: Path) -> None:
    steps = [python_in_jail(DEEP), ("list_files", {}), ("read_file", {"path": "top.txt"}),
             shell("echo alive; ls"), ("read_file", {"path": "deep/" + "d/" * 1400 + "d"})]
    h = await hostile_rollout(store, gaia("files", "code.local"), steps)
    assert "depth 1500" in h.result("run_python")["content"]
    listing = h.result("list_files")
    assert not listing["is_error"] and "top.txt" in listing["content"], listing
    assert "top level text" in h.result("read_file", 0)["content"]
    assert "alive" in h.result("run_shell")["content"], h.result("run_shell")
    assert_responsive(h)
    assert_contained(h, "read_file")  # the path deeper than the file tools go
    assert_nothing_left(h, run_tmp)


SHAPES = r"""
import os, socket, stat
os.makedirs('locked/inner/deeper')
open('locked/inner/deeper/f.txt', 'w').write('x')
os.chmod('locked/inner/deeper', 0)
os.chmod('locked/inner', 0o500)
os.chmod('locked', 0)
os.mkfifo('pipe')
socket.socket(socket.AF_UNIX).bind('sock')
os.makedirs('sticky/sub'); os.chmod('sticky', 0o1777)
open('readonly.txt', 'w').write('ro'); os.chmod('readonly.txt', 0o444)
long = 'L' * 251 + '.txt'
open(long, 'w').write('long name')
os.mkdir('x' * 250)
open(b'bad-\xff\xfe-name.txt', 'w').write('not utf-8')
open('new\nline.txt', 'w').write('newline')
os.symlink('/etc/shadow', 'shadow-link')
os.symlink('loop', 'loop')
print('planted')
"""


async def test_odd_names_and_unwritable_shapes_are_listed_and_removed(
        store: Path, run_tmp: Path) -> None:
    steps = [python_in_jail(SHAPES), ("list_files", {}),
             ("read_file", {"path": "L" * 251 + ".txt"}), ("read_file", {"path": "shadow-link"}),
             ("read_file", {"path": "loop"})]
    h = await hostile_rollout(store, gaia("files", "code.local"), steps)
    assert "planted" in h.result("run_python")["content"], h.result("run_python")
    assert_responsive(h)
    listing = h.result("list_files")
    assert not listing["is_error"] and "readonly.txt" in listing["content"], listing
    assert "long name" in h.result("read_file", 0)["content"]
    assert h.result("read_file", 1)["is_error"] and h.result("read_file", 2)["is_error"]
    assert_contained(h, "read_file")
    assert_nothing_left(h, run_tmp)


MANY = """
import os
os.mkdir('many')
n = 0
for i in range({count}):
    with open(f'many/{{i:06d}}', 'wb'):
        n += 1
print('made', n)
"""


async def test_a_workspace_of_many_files_does_not_stall_the_loop(
        store: Path, run_tmp: Path) -> None:
    env = gaia("files", "code.local", tool_config={
        "code.local": {"limits": {"wall_seconds": 120, "cpu_seconds": 120}}})
    steps = [python_in_jail(MANY.format(count=300_000)), ("list_files", {}),
             ("read_file", {"path": "many/000001"}), shell("echo alive"), ("list_files", {}),
             ("read_file", {"path": "missing.txt"})]
    h = await hostile_rollout(store, env, steps)
    assert_responsive(h)
    listing = h.result("list_files")
    assert len(listing["content"]) < 64_000, len(listing["content"])
    assert "alive" in h.result("run_shell")["content"]
    missing = h.result("read_file")
    assert missing["is_error"] and len(missing["content"]) < 64_000
    assert_contained(h, "read_file")
    assert_nothing_left(h, run_tmp)


async def test_a_symlink_race_never_hands_over_an_outside_file(
        store: Path, run_tmp: Path) -> None:
    secret = run_tmp / f"outside-{secrets.token_hex(4)}.txt"
    secret.write_text("OUTSIDE-SECRET-6502")
    racers: list[Any] = []

    async def plant(h: Hostile) -> tuple[str, dict[str, Any]]:
        racers.append(await start_racer(h.workspace, "race.txt",
                                        [str(secret), "../" + secret.name]))
        return "list_files", {}

    async def settle(h: Hostile) -> tuple[str, dict[str, Any]]:
        for proc in racers:  # the race is over: race.txt is a plain file again
            proc.kill()
            await proc.wait()
        (h.workspace / "race.txt").unlink()
        (h.workspace / "race.txt").write_text("settled text")
        return "read_file", {"path": "race.txt"}

    steps: list[Any] = [plant] + [("read_file", {"path": "race.txt"})] * 150 + [settle]
    try:
        h = await hostile_rollout(store, gaia("files", deadline=5), steps)
    finally:
        for proc in racers:
            if proc.returncode is None:
                proc.kill()
            await proc.aclose()
    assert racers
    reads = [r for r in h.results if r["tool"] == "read_file"]
    assert all("OUTSIDE-SECRET" not in r.get("content", "") for r in reads)
    assert not [r for r in reads if "did not finish" in r.get("content", "")], \
        "reads blocked on a FIFO swapped in (each leaves a thread stuck in open())"
    assert "settled text" in reads[-1]["content"]  # the tool itself works
    assert_responsive(h)
    assert h.rollout is not None and h.rollout.state == "done"
    assert secret.read_text() == "OUTSIDE-SECRET-6502"
    secret.unlink()
    assert_nothing_left(h, run_tmp)


async def test_hard_links_never_lead_outside(store: Path, run_tmp: Path) -> None:
    outside = run_tmp / f"host-owned-{secrets.token_hex(4)}.txt"
    outside.write_text("host file")
    outside.chmod(0o600)
    before = outside.stat()

    def plant(h: Hostile) -> tuple[str, dict[str, Any]]:
        # a link that exists in the workspace (made by anyone): the engine must
        # neither chown it nor read through it
        os.link(outside, h.workspace / "linked.txt")
        return shell("ln /usr/bin/python3 py 2>&1; ln /etc/ld.so.cache c 2>&1; "
                     "cat linked.txt 2>&1; echo overwrite > linked.txt 2>&1; echo done")

    h = await hostile_rollout(store, gaia("files", "code.local"),
                              [shell("echo start"), plant, ("read_file", {"path": "linked.txt"})])
    content = h.results[1]["content"]
    assert content.count("Invalid cross-device link") == 2, content
    assert "host file" not in content
    after = outside.stat()
    assert (after.st_uid, after.st_mode) == (before.st_uid, before.st_mode)
    assert outside.read_text() == "host file"
    assert_contained(h, "read_file")
    assert_responsive(h)
    outside.unlink()
    assert_nothing_left(h, run_tmp)


UNPRIVILEGED_REMOVAL = r"""
import os, socket, sys
from pathlib import Path
from tools.workspace import remove_tree
root = Path(sys.argv[1])
os.chdir(root)
os.makedirs('locked/inner/deeper')
open('locked/inner/deeper/f.txt', 'w').write('x')
os.chmod('locked/inner/deeper', 0)
os.chmod('locked/inner', 0o500)
os.chmod('locked', 0)
open('ro.txt', 'w').write('ro'); os.chmod('ro.txt', 0o400)
os.mkfifo('pipe'); socket.socket(socket.AF_UNIX).bind('sock')
os.mkdir('deep'); os.chdir('deep')
for i in range(1200):
    os.mkdir('d'); os.chdir('d')
os.chdir('/')
os.chmod(root, 0o500)
print('gone' if remove_tree(root) else 'left', os.path.lexists(root))
"""


def test_removal_needs_no_privilege_over_what_the_agent_locked(run_tmp: Path) -> None:
    """As the jail's own user (the engine's, when it is not root), a tree of
    folders made unreadable and unwritable, 1200 deep, with a FIFO and a socket,
    is removed."""
    import subprocess
    import sys

    tmp = run_tmp / "tmp"  # a parent like /tmp: anyone may make a folder there
    tmp.mkdir()
    tmp.chmod(0o1777)
    root = tmp / "agent-made"
    root.mkdir()
    command = [sys.executable, "-c", UNPRIVILEGED_REMOVAL, str(root)]
    if os.geteuid() == 0:  # become an unprivileged user, as the engine would be
        uid = 1_000_000 + int.from_bytes(os.urandom(3), "big")
        os.chown(root, uid, uid)
        command = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *command]
    repo = str(Path(__file__).resolve().parents[2])
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": repo})
    assert done.stdout.strip() == "gone False", done.stdout + done.stderr
    tmp.rmdir()
