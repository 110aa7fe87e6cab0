"""The subprocess backend: a pool of local worker processes on loopback.

    Engine(backend="subprocess", backend_options={"workers": 2, "slots_per_worker": 4})

``start`` brings up ``workers`` worker processes (default: one per core), each
serving the worker protocol on 127.0.0.1 and a free port, each knowing the
engine's per-run token (read from a 0600 file). With ``start_method="fork"``
(the default) they are forked by one fork server (`backends.zygote`) that has
imported everything once, so a dead worker is replaced in milliseconds and
for almost no CPU; ``"exec"`` starts each as ``python -m backends.worker``.
A worker that exits, or misses its health deadline, is killed and replaced;
the attempts it held end ``error`` and are retried elsewhere. ``close`` stops
every process it started (SIGTERM, then SIGKILL), also after cancellation or
an exception; workers also exit on their own when the engine's process dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog

from backends.pool import PooledBackend
from backends.remote import WorkerHandle
from engine.errors import ConfigError, InfraError

log = structlog.get_logger("drillyard.backends.subprocess")

LOOPBACK = "127.0.0.1"


class WorkerStartError(InfraError):
    """A worker process did not come up; the message holds the tail of its log."""


class Proc(Protocol):
    """What the pool needs of a worker process, exec'd or forked."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    def send_signal(self, sig: int) -> None: ...

    async def wait(self) -> int: ...


class ForkedProc:
    """A worker forked by the zygote: its exit is reported by the zygote."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.Event()

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def exited(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set()

    async def wait(self) -> int:
        await self._exited.wait()
        assert self.returncode is not None
        return self.returncode


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class SubprocessBackend(PooledBackend):
    """``workers`` local worker processes with ``slots_per_worker`` environments each."""

    name = "subprocess"

    def __init__(
        self,
        workers: int | None = None,
        slots_per_worker: int = 4,
        *,
        plugins: Sequence[str] = (),
        start_method: str = "fork",
        call_timeout: float = 300.0,
        start_timeout: float = 30.0,
        stop_timeout: float = 5.0,
        health_interval: float = 1.0,
        health_timeout: float = 5.0,
        max_restarts: int = 5,
        python: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(slots_per_worker=slots_per_worker, health_interval=health_interval,
                         health_timeout=health_timeout)
        n = default_workers() if workers is None else workers
        if n < 1:
            raise ConfigError("backend 'subprocess'", f"workers must be >= 1, got {n}")
        if start_method not in ("fork", "exec"):
            raise ConfigError("backend 'subprocess'", f"unknown start_method {start_method!r}",
                              "use 'fork' (a fork server) or 'exec' (a fresh interpreter each)")
        self.n_workers = n
        self.plugins = list(plugins)
        self.start_method = start_method
        self.call_timeout = call_timeout
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.max_restarts = max_restarts
        self.python = python or sys.executable
        self.extra_env = env or {}
        self.processes: dict[int, Proc] = {}  # pid -> live worker process
        self.spawned: list[int] = []  # every pid ever started (zygote included)
        self._index: dict[str, int] = {}  # worker name -> pool index
        self._pid: dict[str, int] = {}  # worker name -> pid
        self._given_up: set[int] = set()
        self._closing = False
        self._dir: Path | None = None
        self._zygote: asyncio.subprocess.Process | None = None
        self._zygote_lock = asyncio.Lock()
        self._forked: dict[int, ForkedProc] = {}
        self._ready: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._serial = 0

    @property
    def target_workers(self) -> int:
        return self.n_workers

    @property
    def pids(self) -> list[int]:
        """PIDs of the worker processes now running."""
        return [pid for pid, p in self.processes.items() if p.returncode is None]

    @property
    def log_path(self) -> Path | None:
        """The workers' log (every worker's stderr, and its stdout after the ready
        line) while the pool runs; it goes with the pool's folder on close."""
        return None if self._dir is None else self._dir / "workers.log"

    # ---- start / close ---------------------------------------------------

    async def start(self) -> None:
        self._closing = False
        self._dir = Path(tempfile.mkdtemp(prefix="drillyard-workers-"))
        fd = os.open(self._dir / "token", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.token)
        self._open_session()
        try:
            if self.start_method == "fork":  # forks are quick: one after another
                handles = [await self._launch(i) for i in range(self.n_workers)]
            else:
                handles = await asyncio.gather(*(self._launch(i) for i in range(self.n_workers)))
            for handle in handles:  # each answers, and accepts our token
                await handle.health(self.health_timeout)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.close()
            raise
        for handle in handles:
            self._add_worker(handle)
        log.info("subprocess workers up", workers=len(handles), pids=self.pids)

    async def close(self) -> None:
        with anyio.CancelScope(shield=True):
            self._closing = True
            for worker in list(self.workers.values()):
                worker.mark_dead("the backend closed")
            self.workers.clear()
            # workers first, while the zygote still reports their exits; then the zygote
            await asyncio.gather(*(self._stop(p) for p in list(self.processes.values())))
            self.processes.clear()
            if self._zygote is not None:
                await self._stop_zygote(self._zygote)
                self._zygote = None
            await self._stop_tasks()
            await self._close_session()
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None

    async def _stop(self, proc: Proc) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), self.stop_timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGKILL)
        await proc.wait()
        self.processes.pop(proc.pid, None)

    # ---- processes: exec'd, or forked by the zygote -----------------------

    def _command(self, module: str) -> list[str]:
        assert self._dir is not None
        cmd = [self.python, "-m", module, "--host", LOOPBACK, "--port", "0",
               "--slots", str(self.slots_per_worker), "--token-file", str(self._dir / "token"),
               "--call-timeout", str(self.call_timeout), "--drain-timeout",
               str(self.stop_timeout), "--parent-pid", str(os.getpid()), "--stdout-to-stderr"]
        for plugin in self.plugins:
            cmd += ["--plugin", plugin]
        return cmd

    async def _exec(self, module: str, log_name: str) -> asyncio.subprocess.Process:
        assert self._dir is not None
        env = {**os.environ, **self.extra_env}
        env.pop("DRILLYARD_WORKER_TOKEN", None)
        log_fd = os.open(self._dir / log_name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command(module), stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=log_fd, env=env, start_new_session=True)
        finally:
            os.close(log_fd)
        self.spawned.append(proc.pid)
        return proc

    async def _start_process(self, label: str) -> tuple[Proc, int]:
        """Start one worker and wait for its ready line; return it and its port."""
        if self.start_method == "fork":
            return await self._fork(label)
        proc = await self._exec("backends.worker", "workers.log")
        self.processes[proc.pid] = proc
        try:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), self.start_timeout)
            ready = json.loads(line) if line else {}
            if ready.get("event") != "ready":
                raise WorkerStartError(f"{label} did not start: {self._log_tail()}")
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await self._stop(proc)
            if isinstance(exc, TimeoutError):
                raise WorkerStartError(f"{label} not ready within {self.start_timeout}s: "
                                       f"{self._log_tail()}") from exc
            raise
        return proc, int(ready["port"])

    async def _ensure_zygote(self) -> asyncio.subprocess.Process:
        async with self._zygote_lock:
            if self._zygote is not None and self._zygote.returncode is None:
                return self._zygote
            zygote = await self._exec("backends.zygote", "workers.log")
            assert zygote.stdout is not None
            try:
                line = await asyncio.wait_for(zygote.stdout.readline(), self.start_timeout)
                if not line or json.loads(line).get("event") != "zygote":
                    raise WorkerStartError(f"the fork server did not start: {self._log_tail()}")
            except BaseException:
                with anyio.CancelScope(shield=True):
                    await self._stop_zygote(zygote)
                raise
            self._zygote = zygote
            self._spawn(self._read_zygote(zygote))
            return zygote

    async def _read_zygote(self, zygote: asyncio.subprocess.Process) -> None:
        assert zygote.stdout is not None
        try:
            while line := await zygote.stdout.readline():
                try:
                    event = json.loads(line)
                except ValueError:
                    event = None
                if not isinstance(event, dict):  # a plug-in printing: not ours, not fatal
                    log.warning("fork_server_output_not_an_event", line=line[:200])
                    continue
                if event.get("event") == "ready":
                    future = self._ready.pop(str(event.get("tag")), None)
                    if future is not None and not future.done():
                        future.set_result(event)
                elif event.get("event") == "exit":
                    child = self._forked.pop(int(event["pid"]), None)
                    if child is not None:
                        child.exited(int(event["code"]))
        finally:  # the zygote is gone: its children go with it
            for child in list(self._forked.values()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                child.exited(-9)
            self._forked.clear()

    async def _fork(self, label: str) -> tuple[Proc, int]:
        zygote = await self._ensure_zygote()
        assert zygote.stdin is not None
        self._serial += 1
        tag = str(self._serial)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._ready[tag] = future
        try:
            zygote.stdin.write(f"spawn {tag}\n".encode())
            await zygote.stdin.drain()
            ready = await asyncio.wait_for(future, self.start_timeout)
        except (TimeoutError, OSError) as exc:
            raise WorkerStartError(f"{label} not forked within {self.start_timeout}s: "
                                   f"{self._log_tail()}") from exc
        finally:
            self._ready.pop(tag, None)
        child = ForkedProc(int(ready["pid"]))
        self._forked[child.pid] = child
        self.processes[child.pid] = child
        self.spawned.append(child.pid)
        return child, int(ready["port"])

    async def _stop_zygote(self, zygote: asyncio.subprocess.Process) -> None:
        if zygote.stdin is not None:
            zygote.stdin.close()  # EOF: stop the children, then exit
        try:
            await asyncio.wait_for(zygote.wait(), self.stop_timeout + 2)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                zygote.kill()
            await zygote.wait()

    def _log_tail(self, lines: int = 15) -> str:
        if self._dir is None:
            return "(no log)"
        try:
            text = (self._dir / "workers.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return " | ".join(text.strip().splitlines()[-lines:]) or "(empty log)"

    # ---- workers in the pool ---------------------------------------------

    async def _launch(self, index: int) -> WorkerHandle:
        proc, port = await self._start_process(f"worker {index}")
        name = f"subprocess-{index}/pid{proc.pid}@{LOOPBACK}:{port}"
        handle = WorkerHandle(name, f"http://{LOOPBACK}:{port}", self.token,
                              self._open_session(), self.slots_per_worker, self.connect_timeout)
        self._index[name], self._pid[name] = index, proc.pid
        self._spawn(self._watch(handle, proc))
        return handle

    async def _watch(self, handle: WorkerHandle, proc: Proc) -> None:
        code = await proc.wait()
        if not self._closing:
            self.declare_dead(handle, f"worker process {proc.pid} exited with code {code}")

    def _on_dead(self, worker: WorkerHandle, reason: str) -> None:  # type: ignore[override]
        index = self._index.pop(worker.name)
        proc = self.processes.get(self._pid.pop(worker.name))
        if proc is not None and proc.returncode is None:  # hung: it must not linger
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        if not self._closing:
            self._spawn(self._replace(index, proc))

    async def _replace(self, index: int, old: Proc | None) -> None:
        if old is not None:
            await self._stop(old)
        for attempt in range(self.max_restarts):
            if self._closing:
                return
            try:
                handle = await self._launch(index)
            except WorkerStartError as exc:
                log.warning("worker restart failed", index=index, attempt=attempt + 1,
                            error=str(exc))
                await asyncio.sleep(min(0.1 * 2 ** attempt, 2.0))
                continue
            self._add_worker(handle)
            log.info("worker replaced", worker=handle.name)
            return
        self._given_up.add(index)
        if len(self._given_up) == self.n_workers:
            self.set_broken(f"every worker failed to restart {self.max_restarts} times "
                            f"(see the logs in {self._dir})")
