"""The code tools in a real bubblewrap jail: they work, and escapes are contained."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import anyio
import pytest

from engine import Agent, Engine, EnvSpec, ScriptedPolicy, Task, TaskView, ToolCall
from engine.backend import build_environment
from engine.errors import ConfigError
from engine.policy.toolcalls import make_call
from tests.tools.conftest import needs_bwrap
from tools._cgroup import RunCgroup
from tools.code import LocalCode, LocalCodeEnvironment
from tools.sandbox import Jail, Limits, _pids_of

pytestmark = pytest.mark.anyio


def call(name: str, /, **arguments: Any) -> ToolCall:
    import json

    return make_call("c1", name, json.dumps(arguments))


def processes_of(uid: int | None) -> list[int]:
    """Live processes owned by ``uid`` (the jail's own uid when root; zombies waiting
    for the container's init to reap them hold nothing and do not count)."""
    return [] if uid is None else _pids_of(uid)


def jail_uid(env: LocalCodeEnvironment) -> int | None:
    box = env.toolboxes[0]
    assert isinstance(box, LocalCode) and box.jail is not None
    return box.jail.uid


@needs_bwrap
async def test_python_and_shell_see_attachments_and_keep_files(
        gaia_like: tuple[TaskView, Path]) -> None:
    task, _ = gaia_like
    env = LocalCodeEnvironment()
    try:
        intro = await env.reset(task)
        assert "numbers.csv" in intro.content
        obs = await env.step(call("run_python", code=(
            "import csv\nrows = list(csv.DictReader(open('numbers.csv')))\n"
            "print(sum(int(r['n']) for r in rows))\nopen('out.txt', 'w').write('kept')")))
        assert obs.content.strip() == "6" and not obs.is_error
        obs = await env.step(call("run_shell", command="cat out.txt; echo; pwd; id -u"))
        lines = obs.content.splitlines()
        assert lines[0] == "kept" and lines[1] == "/workspace"
        if os.geteuid() == 0:  # root runs the jail as a fresh unprivileged uid
            assert lines[2] == str(jail_uid(env)) and lines[2] != "0"
        obs = await env.step(call("run_shell", command="exit 3"))
        assert obs.is_error and "[exit code 3]" in obs.content
        assert (await env.step(call("run_python", code=""))).is_error
        assert (await env.step(call("run_python", code="1", timeout="x"))).is_error
        assert "unknown tool" in (await env.step(call("rm_rf"))).content
    finally:
        await env.close()
    assert env.workspace is None


@needs_bwrap
async def test_engine_rollout_through_registered_code_environment(
        make_engine: Any, gaia_like: tuple[TaskView, Path]) -> None:
    view, _ = gaia_like
    task = Task(view.id, view.prompt, "6", view.attachments)

    def handler(messages: list[dict[str, Any]], tools: list[Any]) -> Any:
        assert {t["function"]["name"] for t in tools} == {"run_python", "run_shell"}
        if messages[-1]["role"] == "tool":
            return f"<answer>{messages[-1]['content'].strip()}</answer>"
        code = "print(sum(int(x) for x in open('numbers.csv').read().split()[1:]))"
        return {"tool_calls": [{"name": "run_python", "arguments": {"code": code}}]}

    engine: Engine = make_engine()
    async with engine:
        run = await engine.run([task], Agent(ScriptedPolicy(handler)),
                               environment=EnvSpec("code.local", {"limits": {"wall_seconds": 20}}))
        [rollout] = await run.rollouts()
        assert rollout.state == "done" and rollout.reward == 1.0


@needs_bwrap
async def test_network_is_unreachable_even_on_loopback(gaia_like: tuple[TaskView, Path]) -> None:
    accepted = anyio.Event()

    async def on_connect(stream: Any) -> None:
        accepted.set()
        await stream.aclose()

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    env = LocalCodeEnvironment()
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, on_connect)
        try:
            await env.reset(gaia_like[0])
            probe = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), 3)"
                     "\n    print('CONNECTED')\nexcept OSError as e:\n    print('refused', e)")
            obs = await env.step(call("run_python", code=probe))
            assert "refused" in obs.content and "CONNECTED" not in obs.content
            assert not accepted.is_set()
            dns = await env.step(call("run_python", code=(
                "import socket\ntry:\n    socket.getaddrinfo('example.com', 80)\n    print('DNS')\n"
                "except OSError as e:\n    print('no dns', e)")))
            assert "no dns" in dns.content
            # the server is real: the host itself can connect to it
            stream = await anyio.connect_tcp("127.0.0.1", port)
            await stream.aclose()
            with anyio.fail_after(5):
                await accepted.wait()
        finally:
            tg.cancel_scope.cancel()
            await env.close()


@needs_bwrap
async def test_host_files_and_ground_truth_are_out_of_reach(
        gaia_like: tuple[TaskView, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    task, folder = gaia_like
    secret_dir = anyio.Path(f"/tmp/drillyard-secret-{secrets.token_hex(4)}")
    await secret_dir.mkdir(mode=0o755)
    secret = secret_dir / "secret.txt"
    await secret.write_text("TOP-SECRET-9871")
    await secret.chmod(0o644)  # readable by anyone on the host: only the jail stands in the way
    monkeypatch.setenv("DRILLYARD_HOST_SECRET", "ENV-SECRET-5555")
    targets = [str(secret), str(folder / "metadata.jsonl"), "/root", "/etc/shadow",
               os.getcwd(), "/home", "/var"]
    env = LocalCodeEnvironment()
    try:
        await env.reset(task)
        probe = f"""
import os
for path in {targets!r}:
    try:
        data = os.listdir(path) if os.path.isdir(path) else open(path).read()
        print('READ', path, str(data)[:100])
    except OSError as e:
        print('blocked', path, type(e).__name__)
needles = ['TOP-' + 'SECRET', 'GROUND-' + 'TRUTH', 'ENV-' + 'SECRET']
for top in ['/etc', '/workspace', '/tmp', '/proc', '/']:
    for root, dirs, files in os.walk(top):
        if root == '/':
            dirs[:] = [d for d in dirs if d not in ('usr', 'proc', 'sys', 'dev', 'etc')]
        if root.startswith('/proc') and root.count('/') > 1:
            dirs[:] = []
        for name in files:
            try:
                with open(os.path.join(root, name), 'rb') as f:
                    blob = f.read(1 << 20)
            except OSError:
                continue
            for needle in needles:
                if needle.encode() in blob:
                    print('FOUND', needle, 'in', os.path.join(root, name))
print('ENV', sorted(os.environ))
"""
        obs = await env.step(call("run_python", code=probe))
        text = obs.content
        for target in targets:
            assert f"blocked {target} FileNotFoundError" in text, text
        assert not [ln for ln in text.splitlines() if ln.startswith(("READ ", "FOUND "))], text
        assert "DRILLYARD_HOST_SECRET" not in text
        # the host itself reads the same files: the probe is not vacuous
        assert "TOP-SECRET" in await secret.read_text()
        assert "GROUND-TRUTH" in await anyio.Path(folder / "metadata.jsonl").read_text()
    finally:
        await env.close()
        await secret.unlink()
        await secret_dir.rmdir()


@needs_bwrap
async def test_writes_outside_the_workspace_do_not_reach_the_host(
        gaia_like: tuple[TaskView, Path]) -> None:
    task, folder = gaia_like
    marker = f"drillyard-escape-{secrets.token_hex(4)}"
    env = LocalCodeEnvironment()
    try:
        await env.reset(task)
        obs = await env.step(call("run_shell", command=(
            f"echo x > /usr/{marker}; echo x > /usr/bin/{marker}; echo x > /etc/{marker};"
            f" echo x > /tmp/{marker} && echo tmp-ok; echo pwned > numbers.csv && echo ws-ok")))
        assert f"/usr/{marker}: Read-only file system" in obs.content
        assert f"/usr/bin/{marker}: Read-only file system" in obs.content
        assert "tmp-ok" in obs.content and "ws-ok" in obs.content
    finally:
        await env.close()
    for leftover in (f"/usr/{marker}", f"/usr/bin/{marker}", f"/etc/{marker}", f"/tmp/{marker}"):
        assert not await anyio.Path(leftover).exists()  # the jail's / and /tmp are its own
    original = await anyio.Path(folder / "numbers.csv").read_text()
    assert original == "n\n1\n2\n3\n"  # the jail wrote to its copy, not to the original


@needs_bwrap
async def test_fork_bomb_is_contained(workspace: Path) -> None:
    async with Jail(workspace, Limits(processes=32, wall_seconds=3)) as jail:
        # every level waits for its pipeline, so the tree stands until forks are
        # refused (in the background, the first shell could exit before that)
        result = await jail.run(["/bin/sh", "-c", "f(){ f | f; }; f"])
        assert "Cannot fork" in result.stderr, result  # the process limit stopped it
        assert processes_of(jail.uid) == []
        bomb = ("import os\nrefused = 0\nwhile True:\n    try:\n        os.fork()\n"
                "    except BlockingIOError:\n        refused += 1\n"
                "        if refused == 1000: print('limit hit', flush=True)")
        result = await jail.run(["python3", "-c", bomb])
        assert result.timed_out and "limit hit" in result.stdout
        assert processes_of(jail.uid) == []
    # the host can still start processes
    assert (await anyio.run_process(["true"])).returncode == 0


@needs_bwrap
async def test_memory_bomb_is_contained(workspace: Path) -> None:
    limits = Limits(memory_bytes=256 * 1024 * 1024, wall_seconds=20)
    async with Jail(workspace, limits) as jail:
        result = await jail.run(["python3", "-c", (
            "chunks = []\nwhile True:\n    chunks.append(bytearray(16 * 1024 * 1024))")])
        assert result.exit_code != 0 and "MemoryError" in result.stderr
        big = await jail.run(["python3", "-c", "x = bytearray(2 * 1024 ** 3)"])
        assert "MemoryError" in big.stderr
        ok = await jail.run(["python3", "-c", "x = bytearray(64 * 1024 ** 2); print(len(x))"])
        assert ok.stdout.strip() == str(64 * 1024 ** 2)


@needs_bwrap
async def test_memory_of_the_whole_jail_is_capped_by_its_cgroup(workspace: Path) -> None:
    probe = RunCgroup.create(1 << 24, 8)
    if probe is None:
        pytest.skip("no cgroup can be made here (needs root and a writable cgroupfs): "
                    "jails are bounded by their rlimits only")
    assert probe.remove()
    bomb = """
import os, time
for i in range(4):
    if os.fork() == 0:
        x = bytearray(150 * 1024 * 1024)
        for j in range(0, len(x), 4096):
            x[j] = 1
        print('filled', flush=True)
        time.sleep(2)
        os._exit(0)
print(sorted(os.wait()[1] for _ in range(4)), flush=True)
"""
    # each process may map 1 GiB (rlimit), but all of them together only 256 MiB (cgroup)
    async with Jail(workspace, Limits(memory_bytes=256 * 1024 * 1024, wall_seconds=20)) as jail:
        result = await jail.run(["python3", "-c", bomb])
        # at most one of the four 150 MiB children survives: the kernel's OOM
        # killer (for the cgroup) kills the rest, possibly after they filled
        assert "9, 9, 9]" in result.stdout
        assert "out of memory" in result.render()
        assert processes_of(jail.uid) == []


@needs_bwrap
async def test_infinite_loop_and_background_children_die_at_the_deadline(workspace: Path) -> None:
    async with Jail(workspace, Limits(wall_seconds=1.5)) as jail:
        result = await jail.run(["/bin/sh", "-c", "sleep 1000 & while :; do :; done"])
        assert result.timed_out and result.exit_code is None
        assert 1.4 < result.seconds < 5
        assert "wall-clock limit" in result.render()
        assert processes_of(jail.uid) == []
    async with Jail(workspace, Limits(cpu_seconds=1, wall_seconds=20)) as jail:
        result = await jail.run(["python3", "-c", "while True: pass"])
        assert not result.timed_out and result.exit_code != 0 and result.seconds < 10


@needs_bwrap
async def test_huge_output_is_cut_and_a_flood_is_killed(workspace: Path) -> None:
    async with Jail(workspace, Limits(output_bytes=1000, wall_seconds=30)) as jail:
        result = await jail.run(["/bin/sh", "-c", "head -c 5000000 /dev/zero | tr '\\0' x"])
        assert len(result.stdout) == 1000 and result.dropped_bytes == 5000000 - 1000
        assert "output truncated" in result.render()
        flood = await jail.run(["yes"])
        assert not flood.timed_out and "output flood" in flood.render()
        assert processes_of(jail.uid) == []


@needs_bwrap
async def test_cancelling_a_run_kills_the_jail(workspace: Path) -> None:
    async with Jail(workspace, Limits(wall_seconds=60)) as jail:
        with anyio.move_on_after(1) as scope:
            await jail.run(["/bin/sh", "-c", "sleep 1000"])
        assert scope.cancelled_caught
        assert processes_of(jail.uid) == []


def test_e2b_without_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    import tools.code  # noqa: F401 - registers the names

    monkeypatch.delenv("E2B_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="E2B_API_KEY"):
        build_environment(EnvSpec("code.e2b"))


def test_unknown_limit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="wall_secs"):
        LocalCodeEnvironment(limits={"wall_secs": 3})
