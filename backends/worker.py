"""The worker: one aiohttp server that hosts environments for one engine.

    python -m backends.worker --host 127.0.0.1 --port 0 --slots 4 --token-file F

Protocol (JSON over HTTP, every request with ``Authorization: Bearer <token>``):

    GET    /health                 liveness, slots, free slots, draining, calls running
    POST   /envs        {spec}     build a registered environment → {env_id, tools, respond}
    POST   /envs/{id}/reset {task_view}   → observation + the tools after the reset
    POST   /envs/{id}/step  {tool_call}   → observation (tool errors are observations)
    POST   /envs/{id}/respond {reply}     → {observation | null, tools} (the user's turn;
                                            only where the ``POST /envs`` answer said respond)
    DELETE /envs/{id}              close it and free its slot
    GET    /channel                the same calls as frames on one WebSocket (backends.channel)

A request without the engine's per-run token gets 401 and runs nothing. When
every slot is taken ``POST /envs`` answers 503 with ``Retry-After``. A client
must send each request head within ``--header-timeout`` seconds and its body
within ``--body-timeout`` (408), and at most ``--max-connections`` are open at
once (more get 503): a slow or greedy local process cannot tie the worker up
(`backends.http_limits`). A tool
call that outlives ``--call-timeout`` becomes an error observation; an
environment that raises an ``InfraError`` (``EnvironmentLost``: its browser
or sandbox died), a ``ConnectionError`` or an ``aiohttp.ClientError`` gets
410, which the engine treats as on the in-process backend: the attempt ends
in ``error`` and is retried (the hosting itself, shared with the Ray actors,
is `backends.host.EnvHost`). On SIGTERM the worker drains: it refuses new
environments, waits (up to ``--drain-timeout``) for the live ones to be
closed, then exits. Once bound it prints one line
``{"event": "ready", "host": ..., "port": ..., "pid": ...}`` on stdout (and
writes it to ``--ready-file`` when given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import importlib
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from backends.channel import serve_channel
from backends.host import BUSY, CONFIG, FAILED, LOST, TIMEOUT, UNKNOWN, EnvHost, HostError
from backends.http_limits import HttpLimits
from engine import eventloop
from engine.environment import EnvSpec, ToolCall
from engine.errors import ConfigError
from engine.tasks import TaskView

TOKEN_ENV = "DRILLYARD_WORKER_TOKEN"
HOST_ENV = "DRILLYARD_WORKER_HOST"
PLUGINS_ENV = "DRILLYARD_WORKER_PLUGINS"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class WorkerServer:
    """Hosts up to ``slots`` environments (an `EnvHost`); serves only holders of ``token``."""

    def __init__(self, token: str, slots: int = 4, call_timeout: float | None = 300.0) -> None:
        if not token:
            raise ConfigError("worker", "no token given", "pass --token-file or set " + TOKEN_ENV)
        self._token = f"Bearer {token}".encode()
        self.host = EnvHost(slots, call_timeout)
        self.app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024**2)
        self.app.add_routes([
            web.get("/health", self.health),
            web.post("/envs", self.create),
            web.post("/envs/{env_id}/reset", self.reset),
            web.post("/envs/{env_id}/step", self.step),
            web.post("/envs/{env_id}/respond", self.respond),
            web.delete("/envs/{env_id}", self.delete),
            web.get("/channel", self.channel),
        ])

    # ---- middleware ------------------------------------------------------

    @web.middleware
    async def _auth(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self._token):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                     headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    # ---- routes ----------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        return web.json_response(self.host.health())

    async def create(self, request: web.Request) -> web.Response:
        return _reply(*await self.op_create(await _json(request)))

    async def reset(self, request: web.Request) -> web.Response:
        return _reply(*await self.op_reset(request.match_info["env_id"], await _json(request)))

    async def step(self, request: web.Request) -> web.Response:
        return _reply(*await self.op_step(request.match_info["env_id"], await _json(request)))

    async def respond(self, request: web.Request) -> web.Response:
        return _reply(*await self.op_respond(request.match_info["env_id"], await _json(request)))

    async def delete(self, request: web.Request) -> web.Response:
        return _reply(*await self.op_delete(request.match_info["env_id"]))

    async def channel(self, request: web.Request) -> web.StreamResponse:
        """The same calls as frames over one WebSocket (`backends.channel`)."""
        return await serve_channel(request, self.dispatch)

    # ---- the calls, whichever lane they came by: (status, body) ------------

    async def dispatch(self, op: str, env_id: str | None, body: dict[str, Any]) -> tuple[int, Any]:
        if op == "step" and env_id is not None:
            return await self.op_step(env_id, body)
        if op == "reset" and env_id is not None:
            return await self.op_reset(env_id, body)
        if op == "create":
            return await self.op_create(body)
        if op == "respond" and env_id is not None:
            return await self.op_respond(env_id, body)
        if op == "delete" and env_id is not None:
            return await self.op_delete(env_id)
        return 400, {"error": f"unknown call {op!r} (create; reset, step, respond, delete "
                              "with an env)"}

    async def op_create(self, body: dict[str, Any]) -> tuple[int, Any]:
        spec_data = body.get("spec")
        if not isinstance(spec_data, dict) or not isinstance(spec_data.get("name"), str):
            return 400, {"error": 'body must be {"spec": {"name": str, "config": {...}}}'}
        spec = EnvSpec(spec_data["name"], dict(spec_data.get("config") or {}))
        try:
            env_id, tools = await self.host.create(spec)
        except HostError as exc:
            return _refused(exc)
        return 200, {"env_id": env_id, "tools": tools, "respond": self.host.responds(env_id)}

    async def op_reset(self, env_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            view = TaskView.from_dict(body["task_view"])
        except (KeyError, TypeError, ValueError) as exc:
            return 400, {"error": f'body must be {{"task_view": {{...}}}}: {exc!r}'}
        try:
            obs = await self.host.reset(env_id, view)
            # a reset may change the tools (BFCL's depend on the task, MCP servers list theirs)
            return 200, {**obs.to_dict(), "tools": self.host.tools(env_id)}
        except HostError as exc:
            return _refused(exc)

    async def op_step(self, env_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        try:
            call = ToolCall.from_dict(body["tool_call"])
        except (KeyError, TypeError, AttributeError) as exc:
            return 400, {"error": f'body must be {{"tool_call": {{...}}}}: {exc!r}'}
        try:
            obs = await self.host.step(env_id, call)
        except HostError as exc:
            return _refused(exc)
        return 200, obs.to_dict()

    async def op_respond(self, env_id: str, body: dict[str, Any]) -> tuple[int, Any]:
        reply = body.get("reply")
        if reply is not None and not isinstance(reply, str):
            return 400, {"error": 'body must be {"reply": str | null}'}
        try:
            obs = await self.host.respond(env_id, reply)
            tools = self.host.tools(env_id)
        except HostError as exc:
            return _refused(exc)
        return 200, {"observation": None if obs is None else obs.to_dict(), "tools": tools}

    async def op_delete(self, env_id: str) -> tuple[int, Any]:
        try:
            await self.host.close(env_id)
        except HostError as exc:
            return _refused(exc)
        return 200, {"closed": env_id}


# what the client (backends.remote) reads back: 410 lost -> retried, 503 busy -> elsewhere
STATUS = {BUSY: 503, CONFIG: 400, UNKNOWN: 404, FAILED: 500, LOST: 410, TIMEOUT: 504}


def _refused(exc: HostError) -> tuple[int, Any]:
    return STATUS.get(exc.kind, 500), {"error": exc.message}


def _reply(status: int, body: Any) -> web.Response:
    """A call's answer over HTTP (``Retry-After`` on a busy worker)."""
    headers = {"Retry-After": "1"} if status == STATUS[BUSY] else None
    return web.Response(status=status, body=orjson.dumps(body), headers=headers,
                        content_type="application/json")


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = orjson.loads(await request.read())
    except ValueError as exc:
        raise web.HTTPBadRequest(text=json.dumps({"error": f"body is not JSON: {exc}"}),
                                 content_type="application/json") from exc
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "body must be a JSON object"}),
                                 content_type="application/json")
    return body


async def serve(args: argparse.Namespace, token: str) -> None:
    """Run the worker until SIGTERM/SIGINT (then drain) or until its parent dies."""
    for module in args.plugin:
        importlib.import_module(module)
    server = WorkerServer(token, args.slots, args.call_timeout or None)
    limits = HttpLimits(max_connections=args.max_connections,
                        header_timeout=args.header_timeout, body_timeout=args.body_timeout)
    server.app.middlewares.append(limits.middleware)
    runner = web.AppRunner(server.app, handle_signals=False, handler_cancellation=True,
                           access_log=None, keepalive_timeout=args.header_timeout)
    await runner.setup()
    host, port = await limits.listen(runner, args.host, args.port)
    event = {"event": "ready", "host": host, "port": port, "pid": os.getpid()}
    if getattr(args, "tag", None):  # a child of the fork server: say which request this is
        event["tag"] = args.tag
    line = json.dumps(event)
    if args.ready_file:
        _write_atomically(Path(args.ready_file), line + "\n")
    events = args.events_fd
    if events is None:
        sys.stdout.flush()
        events = sys.stdout.fileno()
    write_line(events, line)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    parent = args.parent_pid
    try:
        while not stop.is_set():
            if parent and os.getppid() != parent:  # the engine died: do not outlive it
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        if stop.is_set():
            await server.host.drain(args.drain_timeout)
    finally:
        limits.close()
        await runner.cleanup()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m backends.worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=os.environ.get(HOST_ENV, "127.0.0.1"),
                   help=f"address to bind (default: ${HOST_ENV} or 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="port (0: any free port)")
    p.add_argument("--slots", type=int, default=4, help="environments at once")
    p.add_argument("--token-file", help=f"file holding the bearer token (else ${TOKEN_ENV})")
    p.add_argument("--call-timeout", type=float, default=300.0,
                   help="seconds a reset/step may take (0: none)")
    p.add_argument("--drain-timeout", type=float, default=30.0,
                   help="seconds to wait for live environments on SIGTERM")
    p.add_argument("--header-timeout", type=float, default=30.0,
                   help="seconds a connection has to send each request head")
    p.add_argument("--body-timeout", type=float, default=60.0,
                   help="seconds a request has to send its body")
    p.add_argument("--max-connections", type=int, default=256,
                   help="open connections at most (more are refused with 503)")
    p.add_argument("--plugin", action="append", default=[],
                   help="module to import first (it registers environments); repeatable")
    p.add_argument("--ready-file", help="also write the ready line to this file")
    p.add_argument("--stdout-to-stderr", action="store_true",
                   help="send stdout where stderr goes; only the ready line goes to the "
                        "original stdout (a parent that reads only that need not drain it)")
    p.add_argument("--parent-pid", type=int, default=0,
                   help="exit when this process is no longer our parent")
    p.set_defaults(events_fd=None)  # where the ready line goes (None: stdout)
    args = p.parse_args(argv)
    args.plugin += [m for m in os.environ.get(PLUGINS_ENV, "").split(",") if m]
    return args


def write_line(fd: int, line: str) -> None:
    """``line`` and its newline in one write, so lines from several processes on
    one pipe never interleave (``print`` under PYTHONUNBUFFERED writes them apart)."""
    os.write(fd, (line + "\n").encode())


def separate_stdout() -> int:
    """Point stdout where stderr goes (the log) and return a new descriptor on the
    stdout the parent reads, for event lines only: what environments and plug-ins
    print then neither garbles the parent's events nor blocks on a pipe it no
    longer drains."""
    sys.stdout.flush()
    events = os.dup(1)
    os.dup2(2, 1)
    return events


def read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return os.environ.get(TOKEN_ENV, "").strip()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.stdout_to_stderr:  # before the plug-ins are imported: they may print too
        args.events_fd = separate_stdout()
    token = read_token(args)
    if not token:
        sys.exit(f"worker: no token (pass --token-file or set {TOKEN_ENV})")
    eventloop.run(serve(args, token))


if __name__ == "__main__":
    main()
