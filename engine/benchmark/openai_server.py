"""A loopback OpenAI-compatible chat server for ``python -m engine.bench --http``.

    python -m engine.benchmark.openai_server --latency 0.2 --turns 8 [--procs 2] [--port 0]

It answers ``POST /v1/chat/completions`` after ``--latency`` seconds in the
shape vLLM does: a call to the ``sleep`` tool on each of the first
``--turns`` − 1 turns of a conversation (a turn is an assistant message
already in it), then the final answer ``--answer``. With ``return_token_ids``
the reply carries ``prompt_token_ids`` and each choice's ``token_ids``
(``--reply-tokens``), and ``usage`` counts them; with ``logprobs``, one
logprob per reply token. The made-up ids are those of an exact chat template:
a message's ids depend only on it (4 + one per 4 characters of its text; an
assistant message's are the ids its turn was sent), so each prompt starts
with the previous prompt and reply, as vLLM's do when the engine's token
bookkeeping works (`engine.trajectory.continuation`). ``GET /v1/models``
lists the model (the engine's preflight). ``--procs`` processes share the
port (``SO_REUSEPORT``), so the server is not the bench's bottleneck; its CPU
is measured apart from the engine's. Once listening it prints one line
``{"event": "ready", "host": ..., "port": ..., "pids": [...]}``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
import time
from typing import Any

import orjson
from aiohttp import web

MODEL = "bench"
TOOL = "sleep"
_VOCAB = 151_643
_IDS = [(i * 2_654_435_761) % _VOCAB for i in range(1 << 17)]  # sliced, never rebuilt


class ChatServer:
    """The routes; one instance per process."""

    def __init__(self, latency: float, turns: int, answer: str, reply_tokens: int) -> None:
        self.latency = latency
        self.turns = turns
        self.answer = answer
        self.reply_tokens = reply_tokens
        self._ids = itertools.count()
        self.app = web.Application(client_max_size=256 * 1024**2)
        self.app.add_routes(
            [web.post("/v1/chat/completions", self.chat), web.get("/v1/models", self.models)]
        )

    async def models(self, request: web.Request) -> web.Response:
        data = {"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]}
        return web.Response(body=orjson.dumps(data), content_type="application/json")

    async def chat(self, request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _error(400, f"body is not JSON: {exc}")
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return _error(400, "messages must be a list of objects")
        await asyncio.sleep(self.latency)
        return web.Response(body=orjson.dumps(self.reply(body, messages)),
                            content_type="application/json")  # fmt: skip

    def prompt_ids(self, messages: list[dict[str, Any]]) -> list[int]:
        """The prompt's ids: each message's own, one after another."""
        ids: list[int] = []
        turn = 0
        for m in messages:
            if m.get("role") == "assistant":
                ids += self.reply_ids(turn)
                turn += 1
            else:
                size = 4 + len(str(m.get("content") or "")) // 4
                ids += _IDS[len(ids) % 4096 : len(ids) % 4096 + size]
        return ids

    def reply_ids(self, turn: int) -> list[int]:
        """The ids of the reply on turn ``turn`` (0, 1, …) of any conversation."""
        start = 8192 + turn * self.reply_tokens
        return _IDS[start : start + self.reply_tokens]

    def reply(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
        """The chat completion vLLM would send for this request (n choices)."""
        n = next(self._ids)
        turn = sum(1 for m in messages if m.get("role") == "assistant") + 1
        want_ids = bool(body.get("return_token_ids"))
        prompt = self.prompt_ids(messages) if want_ids else None
        prompt_len = len(prompt) if prompt is not None else 4 * len(messages)
        reply_len = self.reply_tokens
        reply = self.reply_ids(turn - 1)
        choices = []
        for index in range(int(body.get("n") or 1)):
            if turn < self.turns:
                message: dict[str, Any] = {
                    "role": "assistant",
                    "content": None,
                    "reasoning_content": None,
                    "tool_calls": [
                        {
                            "id": f"chatcmpl-tool-{n:x}{index}",
                            "type": "function",
                            "function": {"name": TOOL, "arguments": f'{{"turn": {turn}}}'},
                        }
                    ],
                }
                finish = "tool_calls"
            else:
                message = {"role": "assistant", "content": self.answer, "tool_calls": []}
                finish = "stop"
            choice: dict[str, Any] = {
                "index": index,
                "message": message,
                "logprobs": None,
                "finish_reason": finish,
                "stop_reason": None,
                "token_ids": reply if want_ids else None,
            }
            if body.get("logprobs"):
                choice["logprobs"] = {
                    "content": [
                        {"token": f"token_id:{t}", "logprob": -0.25, "bytes": None,
                         "top_logprobs": []}
                        for t in reply
                    ]
                }  # fmt: skip
            choices.append(choice)
        return {
            "id": f"chatcmpl-{n:x}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model") or MODEL,
            "choices": choices,
            "service_tier": None,
            "system_fingerprint": None,
            "usage": {
                "prompt_tokens": prompt_len,
                "completion_tokens": reply_len * len(choices),
                "total_tokens": prompt_len + reply_len * len(choices),
                "prompt_tokens_details": None,
            },
            "prompt_logprobs": None,
            "prompt_token_ids": prompt,
            "kv_transfer_params": None,
        }


def _error(status: int, text: str) -> web.Response:
    data = {"error": {"message": text, "type": "BadRequestError", "code": status}}
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def _listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def _serve(args: argparse.Namespace, sock: socket.socket, parent: int) -> None:
    server = ChatServer(args.latency, args.turns, args.answer, args.reply_tokens)
    runner = web.AppRunner(server.app, handle_signals=False, access_log=None)
    await runner.setup()
    await web.SockSite(runner, sock, backlog=4096).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        while not stop.is_set():
            if parent and os.getppid() != parent:  # whoever started us is gone
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
    finally:
        await runner.cleanup()


def _raise_fd_limit() -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _run(args: argparse.Namespace, sock: socket.socket, parent: int) -> None:
    if args.loop == "uvloop" or args.loop == "auto":
        try:
            import uvloop

            uvloop.run(_serve(args, sock, parent))
            return
        except ImportError:
            if args.loop == "uvloop":
                sys.exit("openai_server: --loop uvloop needs uvloop (pip install uvloop)")
    asyncio.run(_serve(args, sock, parent))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m engine.benchmark.openai_server",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="port (0: any free one)")
    p.add_argument("--latency", type=float, default=0.2, help="seconds before each reply (0.2)")
    p.add_argument("--turns", type=int, default=8, help="model calls per conversation (8)")
    p.add_argument("--answer", default="42", help="the final answer (42)")
    p.add_argument("--reply-tokens", type=int, default=24, help="tokens per reply (24)")
    p.add_argument("--procs", type=int, default=1, help="server processes on the port (1)")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto",
                   help="event loop (auto: uvloop when installed)")  # fmt: skip
    p.add_argument("--parent-pid", type=int, default=0, help="exit when this parent is gone")
    args = p.parse_args(argv)
    if args.turns < 1 or args.procs < 1 or args.latency < 0 or args.reply_tokens < 1:
        p.error("--turns, --procs and --reply-tokens must be >= 1 and --latency >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _raise_fd_limit()
    first = _listen(args.host, args.port)
    port = first.getsockname()[1]
    pids = [os.getpid()]
    for _ in range(args.procs - 1):
        pid = os.fork()
        if pid == 0:  # a child: its own socket on the same port, the kernel spreads connections
            first.close()
            _run(args, _listen(args.host, port), os.getppid())
            os._exit(0)
        pids.append(pid)
    line = {"event": "ready", "host": args.host, "port": port, "pids": pids}
    print(orjson.dumps(line).decode(), flush=True)
    try:
        _run(args, first, args.parent_pid)
    finally:
        for pid in pids[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        for pid in pids[1:]:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


if __name__ == "__main__":
    main()
