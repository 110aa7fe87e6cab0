"""A fork server for workers: import once, fork a ready worker in milliseconds.

    python -m backends.zygote --slots 4 --token-file F --parent-pid P [--plugin M ...]

Starting ``python -m backends.worker`` costs about a second of CPU (the
interpreter, aiohttp, the engine, the plug-ins). The subprocess pool replaces
dead workers through this process instead: it imports all of that once, then
for each ``spawn <tag>`` line on stdin forks a child that serves the worker
protocol and prints ``{"event": "ready", "tag": ..., "port": ..., "pid": ...}``
(its stdout, and each child's, is the log: only events reach the event pipe).
It reaps its children and reports ``{"event": "exit", "pid": ..., "code": ...}``.
On stdin EOF or SIGTERM it stops every child (SIGTERM, then SIGKILL) and
exits; children exit on their own when the zygote dies, and the zygote when
the engine (``--parent-pid``) dies.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import os
import selectors
import signal
import sys
import time

from backends.worker import parse_args, read_token, separate_stdout, serve, write_line
from engine import eventloop

_events = 1  # the event pipe: the stdout the engine reads (`main` keeps it apart)


def _say(event: dict[str, object]) -> None:
    write_line(_events, json.dumps(event))


def _child(args: argparse.Namespace, token: str, tag: str, fds: list[int]) -> None:
    signal.set_wakeup_fd(-1)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    for fd in fds:
        os.close(fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    child_args = copy.copy(args)
    child_args.tag, child_args.parent_pid, child_args.plugin = tag, os.getppid(), []
    child_args.events_fd = _events  # its stdout, like ours, is the log
    code = 0
    try:
        eventloop.run(serve(child_args, token))
    except BaseException as exc:
        print(f"worker {tag} failed: {exc!r}", file=sys.stderr, flush=True)
        code = 1
    finally:
        sys.stdout.flush()
        os._exit(code)


def _stop_children(children: set[int], grace: float) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    while children and time.monotonic() < end:
        _reap(children)
        time.sleep(0.01)
    for pid in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    while children:
        pid, status = os.waitpid(-1, 0)
        children.discard(pid)
        _say({"event": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def _reap(children: set[int]) -> None:
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        children.discard(pid)
        _say({"event": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})


def main(argv: list[str] | None = None) -> None:
    global _events
    _events = separate_stdout()  # before the plug-ins are imported: they may print too
    args = parse_args(argv)
    token = read_token(args)
    if not token:
        sys.exit("zygote: no token (pass --token-file)")
    for module in args.plugin:
        importlib.import_module(module)
    eventloop.resolve()  # imports uvloop (where installed) once, for every child
    engine_pid = args.parent_pid
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    stopping = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    children: set[int] = set()
    pending = b""
    _say({"event": "zygote", "pid": os.getpid()})
    while not stopping:
        if engine_pid and os.getppid() != engine_pid:
            break
        for key, _ in sel.select(timeout=0.5):
            if key.fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 4096)
                continue
            data = os.read(0, 4096)
            if not data:
                stopping = True
                break
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                verb, _, tag = line.decode().strip().partition(" ")
                if verb != "spawn":
                    continue
                pid = os.fork()
                if pid == 0:
                    sel.close()
                    _child(args, token, tag, [wake_r, wake_w])
                children.add(pid)
        _reap(children)
    _stop_children(children, args.drain_timeout)


if __name__ == "__main__":
    main()
