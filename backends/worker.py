"""The worker: one aiohttp server that hosts environments for one engine.

    python -m backends.worker --host 127.0.0.1 --port 0 --slots 4 --token-file F

Protocol (JSON over HTTP, every request with ``Authorization: Bearer <token>``):

    GET    /health                 liveness, slots, free slots, draining
    POST   /envs        {spec}     build a registered environment → {env_id, tools}
    POST   /envs/{id}/reset {task_view}   → observation
    POST   /envs/{id}/step  {tool_call}   → observation (tool errors are observations)
    DELETE /envs/{id}              close it and free its slot

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
in ``error`` and is retried. On
SIGTERM the worker drains: it refuses new environments, waits (up to
``--drain-timeout``) for the live ones to be closed, then exits. Once bound it
prints one line ``{"event": "ready", "host": ..., "port": ..., "pid": ...}`` on
stdout (and writes it to ``--ready-file`` when given).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import importlib
import json
import os
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from backends.http_limits import HttpLimits
from engine.backend import build_environment
from engine.environment import Environment, EnvSpec, Observation, ToolCall
from engine.errors import ConfigError
from engine.rollout import ENVIRONMENT_FAULTS
from engine.tasks import TaskView

TOKEN_ENV = "DRILLYARD_WORKER_TOKEN"
HOST_ENV = "DRILLYARD_WORKER_HOST"
PLUGINS_ENV = "DRILLYARD_WORKER_PLUGINS"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(slots=True)
class _Hosted:
    env: Environment
    spec: EnvSpec
    created: float = field(default_factory=time.monotonic)


class WorkerServer:
    """Hosts up to ``slots`` environments; serves only holders of ``token``."""

    def __init__(self, token: str, slots: int = 4, call_timeout: float | None = 300.0) -> None:
        if not token:
            raise ConfigError("worker", "no token given", "pass --token-file or set " + TOKEN_ENV)
        if slots < 1:
            raise ConfigError("worker", f"slots must be >= 1, got {slots}")
        self._token = f"Bearer {token}".encode()
        self.slots = slots
        self.call_timeout = call_timeout
        self.envs: dict[str, _Hosted] = {}
        self._reserved = 0  # slots taken by environments still being built
        self.draining = False
        self._empty = asyncio.Event()
        self._empty.set()
        self.app = web.Application(middlewares=[self._auth], client_max_size=64 * 1024**2)
        self.app.add_routes([
            web.get("/health", self.health),
            web.post("/envs", self.create),
            web.post("/envs/{env_id}/reset", self.reset),
            web.post("/envs/{env_id}/step", self.step),
            web.delete("/envs/{env_id}", self.delete),
        ])

    @property
    def free(self) -> int:
        return self.slots - len(self.envs) - self._reserved

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
        return web.json_response({"ok": not self.draining, "draining": self.draining,
                                  "slots": self.slots, "free": self.free,
                                  "live": len(self.envs), "pid": os.getpid()})

    async def create(self, request: web.Request) -> web.Response:
        if self.draining:
            return _busy("worker is draining")
        if self.free <= 0:
            return _busy(f"all {self.slots} slots are in use")
        body = await _json(request)
        spec_data = body.get("spec")
        if not isinstance(spec_data, dict) or not isinstance(spec_data.get("name"), str):
            return _error(400, 'body must be {"spec": {"name": str, "config": {...}}}')
        spec = EnvSpec(spec_data["name"], dict(spec_data.get("config") or {}))
        self._reserved += 1
        self._empty.clear()
        try:
            env = build_environment(spec)
            tools = env.tools
        except ConfigError as exc:
            return _error(400, str(exc))
        except Exception as exc:
            return _error(500, f"building environment '{spec.name}' raised "
                               f"{type(exc).__name__}: {exc}")
        finally:
            self._reserved -= 1
            self._check_empty()
        env_id = secrets.token_hex(8)
        self.envs[env_id] = _Hosted(env, spec)
        self._empty.clear()
        return web.json_response({"env_id": env_id, "tools": tools})

    async def reset(self, request: web.Request) -> web.Response:
        hosted = self._get(request)
        body = await _json(request)
        try:
            view = TaskView.from_dict(body["task_view"])
        except (KeyError, TypeError, ValueError) as exc:
            return _error(400, f'body must be {{"task_view": {{...}}}}: {exc!r}')
        try:
            obs = await self._bounded(hosted.env.reset(view))
        except TimeoutError:
            return _error(504, f"reset did not finish within {self.call_timeout}s")
        except ENVIRONMENT_FAULTS as exc:  # the environment is gone: the engine retries
            return _error(410, f"environment lost: {type(exc).__name__}: {exc}")
        except Exception as exc:
            return _error(500, f"reset raised {type(exc).__name__}: {exc}")
        return web.json_response(obs.to_dict())

    async def step(self, request: web.Request) -> web.Response:
        hosted = self._get(request)
        body = await _json(request)
        try:
            call = ToolCall.from_dict(body["tool_call"])
        except (KeyError, TypeError, AttributeError) as exc:
            return _error(400, f'body must be {{"tool_call": {{...}}}}: {exc!r}')
        if call.error is not None:  # a malformed call never reaches the environment
            return web.json_response(Observation.error(call.error).to_dict())
        try:
            obs = await self._bounded(hosted.env.step(call))
        except TimeoutError:
            obs = Observation.error(f"tool {call.name} did not finish within {self.call_timeout}s")
        except ENVIRONMENT_FAULTS as exc:  # the environment is gone: the engine retries
            return _error(410, f"environment lost: {type(exc).__name__}: {exc}")
        except Exception as exc:  # the tool's fault: the agent sees it
            obs = Observation.error(f"tool {call.name} raised {type(exc).__name__}: {exc}")
        return web.json_response(obs.to_dict())

    async def delete(self, request: web.Request) -> web.Response:
        env_id = request.match_info["env_id"]
        hosted = self.envs.pop(env_id, None)
        if hosted is None:
            return _error(404, f"no environment {env_id}")
        try:
            await asyncio.shield(self._close(hosted))
        finally:
            self._check_empty()
        return web.json_response({"closed": env_id})

    # ---- helpers ---------------------------------------------------------

    def _get(self, request: web.Request) -> _Hosted:
        env_id = request.match_info["env_id"]
        hosted = self.envs.get(env_id)
        if hosted is None:
            raise web.HTTPNotFound(text=json.dumps({"error": f"no environment {env_id}"}),
                                   content_type="application/json")
        return hosted

    async def _bounded(self, awaitable: Awaitable[Observation]) -> Observation:
        obs = await asyncio.wait_for(awaitable, self.call_timeout)
        if not isinstance(obs, Observation):
            raise TypeError(f"environment returned {type(obs).__name__}, not an Observation")
        return obs

    async def _close(self, hosted: _Hosted) -> None:
        try:
            await asyncio.wait_for(hosted.env.close(), self.call_timeout)
        except Exception as exc:
            print(f"worker: closing {hosted.spec.name} failed: {exc!r}", file=sys.stderr)

    def _check_empty(self) -> None:
        if not self.envs and not self._reserved:
            self._empty.set()

    async def drain(self, grace: float) -> None:
        """Refuse new environments; wait for live ones to be closed, then close the rest."""
        self.draining = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._empty.wait(), grace)
        for env_id in list(self.envs):
            await self._close(self.envs.pop(env_id))


def _busy(why: str) -> web.Response:
    return web.json_response({"error": why}, status=503, headers={"Retry-After": "1"})


def _error(status: int, text: str) -> web.Response:
    return web.json_response({"error": text}, status=status)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
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
    print(line, flush=True)

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
            await server.drain(args.drain_timeout)
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
    p.add_argument("--parent-pid", type=int, default=0,
                   help="exit when this process is no longer our parent")
    args = p.parse_args(argv)
    args.plugin += [m for m in os.environ.get(PLUGINS_ENV, "").split(",") if m]
    return args


def read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        return Path(args.token_file).read_text().strip()
    return os.environ.get(TOKEN_ENV, "").strip()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    token = read_token(args)
    if not token:
        sys.exit(f"worker: no token (pass --token-file or set {TOKEN_ENV})")
    asyncio.run(serve(args, token))


if __name__ == "__main__":
    main()
