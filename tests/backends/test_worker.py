"""The worker protocol over real HTTP against a real `python -m backends.worker` process."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest

from tests.backends.conftest import WorkerProcess, eventually, pid_alive, worker_process
from tests.backends.fake_k8s import REPO

pytestmark = pytest.mark.anyio


async def call(session: aiohttp.ClientSession, w: WorkerProcess, method: str, path: str,
               body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    async with session.request(method, w.url + path, json=body,
                               headers=w.auth if headers is None else headers) as resp:
        return resp.status, await resp.json(content_type=None)


def view(prompt: str = "What is 2+3?") -> dict[str, Any]:
    return {"id": "t1", "prompt": prompt, "attachments": [], "metadata": {}}


def tool(name: str, arguments: str = "{}") -> dict[str, Any]:
    return {"tool_call": {"id": "c1", "name": name, "arguments": arguments}}


async def test_protocol_round_trip(tmp_path: Path) -> None:
    with worker_process(tmp_path, "--slots", "2") as w:
        async with aiohttp.ClientSession() as s:
            status, health = await call(s, w, "GET", "/health")
            assert status == 200 and health["free"] == 2 and health["slots"] == 2
            assert health["pid"] == w.proc.pid
            status, created = await call(s, w, "POST", "/envs", {"spec": {"name": "probe"}})
            assert status == 200
            env = created["env_id"]
            names = [t["function"]["name"] for t in created["tools"]]
            assert names == ["calculator", "hang", "boom", "crash", "lost", "missing",
                             "whoami", "shout"]
            status, obs = await call(s, w, "POST", f"/envs/{env}/reset", {"task_view": view()})
            assert status == 200 and obs["content"].startswith("What is 2+3?")
            status, obs = await call(s, w, "POST", f"/envs/{env}/step",
                                     tool("calculator", '{"expression": "2+3"}'))
            assert status == 200 and obs == {"content": "5", "done": False, "answer": None,
                                             "is_error": False, "info": {}}
            # tool errors are observations, never 500s
            status, obs = await call(s, w, "POST", f"/envs/{env}/step", tool("boom"))
            assert status == 200 and obs["is_error"]
            assert obs["content"] == "Error: tool boom raised ValueError: boom on request"
            status, obs = await call(s, w, "POST", f"/envs/{env}/step",
                                     tool("calculator", '{"expression": '))
            assert status == 200 and obs["is_error"] and "not valid JSON" in obs["content"]
            status, obs = await call(s, w, "POST", f"/envs/{env}/step", tool("nope"))
            assert status == 200 and "unknown tool 'nope'" in obs["content"]
            # an environment that says it is gone is not a tool error: 410, the worker lives on
            status, err = await call(s, w, "POST", f"/envs/{env}/step", tool("lost"))
            assert status == 410 and "EnvironmentLost" in err["error"]
            assert "browser died" in err["error"]
            assert (await call(s, w, "GET", "/health"))[1]["free"] == 1
            status, _ = await call(s, w, "DELETE", f"/envs/{env}")
            assert status == 200
            assert (await call(s, w, "GET", "/health"))[1]["free"] == 2
            status, err = await call(s, w, "DELETE", f"/envs/{env}")
            assert status == 404 and env in err["error"]
            status, err = await call(s, w, "POST", "/envs", {"spec": {"name": "no-such-env"}})
            assert status == 400 and "no-such-env" in err["error"]
            assert "unknown name" in err["error"]
            status, err = await call(s, w, "POST", "/envs", {"nonsense": 1})
            assert status == 400


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": "s3cret-token"},
                                     {"Authorization": "Bearer s3cret-token-and-more"}])
async def test_requests_without_the_token_get_401_and_run_nothing(
        tmp_path: Path, headers: dict[str, str]) -> None:
    with worker_process(tmp_path, "--slots", "2") as w:
        async with aiohttp.ClientSession() as s:
            for method, path, body in [("GET", "/health", None),
                                       ("POST", "/envs", {"spec": {"name": "probe"}}),
                                       ("POST", "/envs/x/step", tool("crash")),
                                       ("DELETE", "/envs/x", None)]:
                status, err = await call(s, w, method, path, body, headers=headers)
                assert status == 401, (method, path)
                assert "token" in err["error"]
            status, health = await call(s, w, "GET", "/health")
            assert status == 200 and health["live"] == 0 and health["free"] == 2
            assert w.proc.poll() is None


async def test_the_worker_binds_loopback_only(tmp_path: Path) -> None:
    with worker_process(tmp_path, "--host", "127.0.0.1") as w:
        assert w.host == "127.0.0.1"
        import psutil

        listening = [c.laddr for c in psutil.Process(w.proc.pid).net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN]
        assert [(a.ip, a.port) for a in listening] == [("127.0.0.1", w.port)]
        with pytest.raises(OSError):  # another loopback address reaches nothing
            await anyio.connect_tcp("127.0.0.2", w.port)


async def test_slot_limit_answers_503_with_retry_after(tmp_path: Path) -> None:
    with worker_process(tmp_path, "--slots", "2") as w:
        async with aiohttp.ClientSession() as s:
            ids = [(await call(s, w, "POST", "/envs", {"spec": {"name": "probe"}}))[1]["env_id"]
                   for _ in range(2)]
            async with s.post(w.url + "/envs", json={"spec": {"name": "probe"}},
                              headers=w.auth) as resp:
                assert resp.status == 503 and resp.headers["Retry-After"] == "1"
                assert "all 2 slots" in (await resp.json())["error"]
            await call(s, w, "DELETE", f"/envs/{ids[0]}")
            status, _ = await call(s, w, "POST", "/envs", {"spec": {"name": "probe"}})
            assert status == 200


async def test_a_hanging_tool_is_cut_at_the_call_deadline(tmp_path: Path) -> None:
    with worker_process(tmp_path, "--call-timeout", "0.3") as w:
        async with aiohttp.ClientSession() as s:
            env = (await call(s, w, "POST", "/envs", {"spec": {"name": "probe"}}))[1]["env_id"]
            started = time.monotonic()
            status, obs = await call(s, w, "POST", f"/envs/{env}/step", tool("hang"))
            assert time.monotonic() - started < 5
            assert status == 200 and obs["is_error"]
            assert obs["content"] == "Error: tool hang did not finish within 0.3s"
            status, obs = await call(s, w, "POST", f"/envs/{env}/step",
                                     tool("calculator", '{"expression": "6*7"}'))
            assert obs["content"] == "42"


async def test_sigterm_drains_then_exits(tmp_path: Path) -> None:
    with worker_process(tmp_path, "--drain-timeout", "30") as w:
        async with aiohttp.ClientSession() as s:
            env = (await call(s, w, "POST", "/envs", {"spec": {"name": "probe"}}))[1]["env_id"]
            w.proc.send_signal(signal.SIGTERM)

            async def draining() -> bool:
                return bool((await call(s, w, "GET", "/health"))[1]["draining"])

            end = time.monotonic() + 10
            while not await draining():
                assert time.monotonic() < end, "worker never started draining"
                await anyio.sleep(0.01)
            status, err = await call(s, w, "POST", "/envs", {"spec": {"name": "probe"}})
            assert status == 503 and "draining" in err["error"]
            # the live environment still works until it is closed
            _, obs = await call(s, w, "POST", f"/envs/{env}/step",
                                tool("calculator", '{"expression": "1+1"}'))
            assert obs["content"] == "2"
            assert w.proc.poll() is None
            await call(s, w, "DELETE", f"/envs/{env}")
        await eventually(lambda: w.proc.poll() is not None, 10, "worker exit after drain")
        assert w.proc.returncode == 0


async def test_token_from_the_environment_and_none_refused(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "backends.worker", "--port", "0"]
    env_no_token = {"PATH": "/usr/bin:/bin"}
    with anyio.fail_after(60):
        done = await anyio.run_process(cmd, cwd=REPO, env=env_no_token, check=False)
    assert done.returncode != 0 and b"no token" in done.stderr
    with worker_process(tmp_path, env={"DRILLYARD_WORKER_TOKEN": "from-env"}) as w:
        async with aiohttp.ClientSession() as s:
            status, _ = await call(s, w, "GET", "/health")
            assert status == 200


async def test_a_worker_exits_when_its_parent_dies(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t")
    ready = tmp_path / "ready"
    script = (f"{sys.executable} -m backends.worker --port 0 --token-file {token} "
              f"--ready-file {ready} --parent-pid $$ & wait")
    async with await anyio.open_process(["sh", "-c", script], cwd=REPO,
                                        stdout=subprocess.DEVNULL) as shell:
        await eventually(ready.exists, 30, "worker ready file")
        pid = json.loads(ready.read_text())["pid"]
        assert pid_alive(pid)
        shell.kill()
        await shell.wait()
        await eventually(lambda: not pid_alive(pid), 10, "orphaned worker exit")


async def test_the_client_maps_faults_to_engine_errors(tmp_path: Path) -> None:
    from backends.remote import WorkerBusy, WorkerHandle, WorkerUnreachable
    from engine import EnvironmentLost, EnvSpec, NotRetryable, TaskView, ToolCall
    from engine.policy.toolcalls import make_call

    with worker_process(tmp_path, "--slots", "1") as w:
        async with aiohttp.ClientSession() as s:
            stranger = WorkerHandle("w0", w.url, "not-the-token", s, 1)
            with pytest.raises(NotRetryable, match="refused the engine's token"):
                await stranger.create(EnvSpec("probe"))
            worker = WorkerHandle("w0", w.url, w.token, s, 1)
            env = await worker.create(EnvSpec("probe"))
            obs = await env.reset(TaskView("t", "What is 6*7?"))
            assert obs.content.startswith("What is 6*7?")
            assert (await env.step(make_call("c", "calculator", {"expression": "6*7"}))).content \
                == "42"
            with pytest.raises(WorkerBusy, match="all 1 slots"):
                await worker.create(EnvSpec("probe"))
            # a call stuck on a worker declared dead ends at once
            async with anyio.create_task_group() as tg:
                async def stuck() -> None:
                    with pytest.raises(EnvironmentLost, match="missed a deadline"):
                        await env.step(ToolCall("c", "hang", "{}", {}))
                tg.start_soon(stuck)
                await eventually(lambda: worker.in_flight > 0, 10, "the call in flight")
                worker.mark_dead("missed a deadline")
            w.proc.kill()
            w.proc.wait()
            fresh = WorkerHandle("w0", w.url, w.token, s, 1)
            with pytest.raises(WorkerUnreachable, match="w0 lost"):
                await fresh.create(EnvSpec("probe"))


async def test_the_channel_carries_the_calls_as_frames_many_in_flight(tmp_path: Path) -> None:
    """The WebSocket lane answers exactly what the HTTP routes answer, a slow tool
    holds up no other call, and a frame that is not the protocol gets a 400."""
    with worker_process(tmp_path, "--slots", "2") as w:
        async with aiohttp.ClientSession() as s, s.ws_connect(w.url + "/channel",
                                                              headers=w.auth) as ws:
            async def ask(frame: dict[str, Any]) -> dict[str, Any]:
                await ws.send_bytes(json.dumps(frame).encode())
                return dict(json.loads((await ws.receive()).data))

            made = await ask({"id": 1, "op": "create", "env": None,
                              "body": {"spec": {"name": "probe"}}})
            assert made["id"] == 1 and made["status"] == 200
            env = made["body"]["env_id"]
            reset = await ask({"id": 2, "op": "reset", "env": env, "body": {"task_view": view()}})
            assert reset["status"] == 200 and reset["body"]["content"].startswith("What is 2+3?")
            # a call that hangs holds up none sent after it (it ends with the channel)
            await ws.send_bytes(json.dumps({"id": 3, "op": "step", "env": env,
                                            "body": tool("hang")}).encode())
            quick = await ask({"id": 4, "op": "step", "env": env,
                               "body": tool("calculator", '{"expression": "6*7"}')})
            assert (quick["id"], quick["status"], quick["body"]["content"]) == (4, 200, "42")
            assert (await ask({"id": 5, "op": "step", "env": "nope", "body": tool("calculator")})
                    )["status"] == 404
            assert (await ask({"id": 6, "op": "launch", "env": env, "body": {}}))["status"] == 400
            await ws.send_bytes(b"not json")
            assert json.loads((await ws.receive()).data) == {"id": None, "status": 400, "body": {
                "error": 'a frame is {"id", "op", "env", "body"}'}}
            assert (await ask({"id": 7, "op": "delete", "env": env, "body": {}}))["status"] == 200
        async with aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await s.ws_connect(w.url + "/channel", headers={"Authorization": "Bearer no"})
            assert refused.value.status == 401


async def test_a_worker_without_the_channel_is_spoken_to_over_http(tmp_path: Path) -> None:
    """A worker that serves only the HTTP routes (one written in another language, say)."""
    from aiohttp import web

    from backends.remote import WorkerHandle
    from backends.worker import WorkerServer
    from engine import EnvSpec, TaskView
    from engine.policy.toolcalls import make_call

    server = WorkerServer("tok", slots=1)
    app = web.Application(middlewares=server.app.middlewares)
    app.add_routes([web.post("/envs", server.create), web.post("/envs/{env_id}/reset",
                    server.reset), web.post("/envs/{env_id}/step", server.step),
                    web.delete("/envs/{env_id}", server.delete)])  # fmt: skip
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        host, port = runner.addresses[0][:2]
        async with aiohttp.ClientSession() as s:
            worker = WorkerHandle("http-only", f"http://{host}:{port}", "tok", s, 1)
            env = await worker.create(EnvSpec("probe"))
            assert not worker.channel_supported
            await env.reset(TaskView("t", "What is 6*7?"))
            obs = await env.step(make_call("c", "calculator", {"expression": "6*7"}))
            assert obs.content == "42"
            await env.close()
            assert server.host.health()["live"] == 0
    finally:
        await runner.cleanup()
