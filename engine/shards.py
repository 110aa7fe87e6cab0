"""Sharded runs: one run's rollouts driven by K engine processes on one store.

One CPython loop spends a few tenths of a millisecond of CPU a turn; with
thousands of rollouts in flight their model replies arrive in bursts that one
loop serves one after another. ``Engine(shards=K)`` spreads each run over K
processes, a `ShardPool` started with the engine and kept across its runs:

- each shard is a ``spawn`` process that opens its own `TraceStore` on the
  engine's file (SQLite's WAL lock serialises the writers: each batch is one
  ``BEGIN IMMEDIATE`` transaction) and starts its own backend from the
  engine's backend name and options; the engine's ``max_rollouts`` and
  ``max_model_requests`` are split among the shards;
- for a run, the parent creates the run and every rollout row (their numbers
  come from one place) and commits them; each shard is sent its share (dealt
  round-robin in the run's start order) and a copy of the agent, environment
  and scorer (pickled: a policy's connections are not sent, the copy opens its
  own), drives it with `Engine.schedule`, the driver every run uses, commits,
  and reports.

A shard that dies (kill -9, the OOM killer) leaves its rollouts unfinished:
the parent finishes them itself, as `Engine.resume` would, and the pool starts
a fresh shard for the next run. A shard that fails with an error raises
`ShardError` once every shard has reported; the run is left ``interrupted``
and `Engine.resume` finishes it. Cancelling the parent stops every shard
(SIGTERM: they stop as a cancelled run does). The shards are `multiprocessing`
spawn processes, so a script that opens a sharded engine needs the ``if
__name__ == "__main__":`` guard.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import multiprocessing
import os
import pickle
import resource
import signal
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from typing import TYPE_CHECKING, Any

import anyio
import structlog

from engine import eventloop, registry
from engine.errors import ConfigError, ShardError
from engine.resources import AsyncResource, close_policy
from engine.store import RESULT_STATES

if TYPE_CHECKING:
    from engine.agent import AnyAgent
    from engine.api import Engine
    from engine.backend import Backend, EnvFactory
    from engine.environment import EnvSpec
    from engine.rollout import Scorer
    from engine.scheduler import Pending
    from engine.store import TraceStore

log = structlog.get_logger("drillyard.shards")

PR_SET_PDEATHSIG = 1  # prctl(2)
STOP_TIMEOUT = 10.0
"""Seconds a shard has to exit once told to (then SIGTERM), and after SIGTERM
(then SIGKILL)."""


@dataclass(frozen=True, slots=True)
class ShardReport:
    """How one shard's share of a run ended. ``reported`` is False when the shard
    died without a word (killed): the parent then finished its rollouts."""

    index: int
    pid: int | None
    rollouts: int  # how many it was given
    exitcode: int | None
    reported: bool
    cpu_s: float | None = None  # its process's user + system CPU over this share
    error: str | None = None  # its traceback, when it failed


@dataclass(frozen=True, slots=True)
class ShardSetup:
    """What a shard process starts with (pickled): its store, backend and limits."""

    index: int
    store: dict[str, Any]  # TraceStore's arguments
    backend: str
    engine_options: dict[str, Any]
    loop: str
    registered: list[tuple[str, str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ShardPlan:
    """One run's share for one shard (pickled): which rollouts, driven how."""

    run_id: str
    rollout_ids: list[str]
    agent: AnyAgent
    environment: EnvSpec | EnvFactory
    scorer: Scorer
    registered: list[tuple[str, str, Any]] = field(default_factory=list)


def split(total: int, parts: int) -> list[int]:
    """``total`` split into ``parts`` whole shares that differ by at most one."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def check_shards(
    shards: int,
    store: TraceStore,
    backend: str | Backend,
    *,
    max_rollouts: int,
    max_model_requests: int,
) -> int:
    """``Engine(shards=…)``, checked against the rest of the engine's arguments."""
    if not isinstance(shards, int) or isinstance(shards, bool) or shards < 1:
        raise ConfigError(
            "shards",
            f"must be a whole number >= 1, got {shards!r}",
            "1 (the default) drives every rollout in this process; K > 1 uses K processes",
        )
    if shards == 1:
        return 1
    if not isinstance(backend, str):
        raise ConfigError(
            "backend",
            f"a sharded engine starts one backend per shard from its name; got {backend!r}",
            "pass backend='inprocess' (or another name) and backend_options={...}",
        )
    if str(store.path) == ":memory:" or str(store.path).startswith("file::memory:"):
        raise ConfigError(
            "store", "shards share the store's file: an in-memory store has none", "give a path"
        )
    for name, limit in (("max_rollouts", max_rollouts), ("max_model_requests", max_model_requests)):
        if limit < shards:
            raise ConfigError(
                name, f"{limit} cannot be split among {shards} shards", f"give {name} >= shards"
            )
    return shards


def check_shippable(agent: AnyAgent, environment: EnvSpec | EnvFactory, scorer: Scorer) -> None:
    """Fail before a sharded run starts when its agent, environment or scorer
    cannot be sent to a shard process."""
    for what, obj in (("agent", agent), ("environment", environment), ("scorer", scorer)):
        try:
            pickle.dumps(obj)
        except Exception as exc:
            raise ConfigError(
                what,
                f"{obj!r} cannot be sent to a shard process ({type(exc).__name__}: {exc})",
                "define it (and what it holds: functions, classes) at module level, "
                "or open the engine with shards=1",
            ) from exc


def _registered(wanted: list[tuple[str, str]]) -> list[tuple[str, str, Any]]:
    """The run-time registrations (`registry.register`) among ``wanted`` names, for a
    shard to register too; declared, built-in and entry-point names resolve there
    by themselves."""
    return [(kind, name, obj) for kind, name in wanted if (obj := registry.registered(kind, name))]


@dataclass(slots=True)
class _Shard:
    """One shard process as the parent holds it."""

    setup: ShardSetup
    proc: BaseProcess
    conn: Connection  # duplex: plans down, reports up

    def alive(self) -> bool:
        return self.proc.is_alive()


class ShardPool(AsyncResource):
    """K shard processes, started with the engine and kept across its runs."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.shards: list[_Shard | None] = [None] * engine.shards
        self._context = multiprocessing.get_context("spawn")
        self._turn = anyio.Lock()  # one run at a time on the shards: runs started together queue

    def _setups(self) -> list[ShardSetup]:
        engine, config = self.engine, self.engine.scheduler_config
        k = engine.shards
        max_rollouts = split(config.max_rollouts, k)
        max_requests = split(engine.max_model_requests, k)
        store = engine.store
        return [
            ShardSetup(
                index=i,
                store={
                    "path": str(store.path),
                    "flush_interval": store.flush_interval,
                    "batch_size": store.batch_size,
                },
                backend=engine.backend.name,
                engine_options={
                    "backend_options": engine.backend_options,
                    "max_rollouts": max_rollouts[i],
                    "max_model_requests": max_requests[i],
                    "max_attempts": config.max_attempts,
                    "retry_backoff": config.retry_backoff,
                    "step_timeout": config.limits.step_timeout,
                    "rollout_timeout": config.limits.rollout_timeout,
                },
                loop=eventloop.running(),
                registered=_registered([("backends", engine.backend.name)]),
            )
            for i in range(k)
        ]

    async def start(self) -> None:
        """Start every shard that is not running (all, the first time) and wait until
        each has opened its store and started its backend."""
        setups = self._setups()
        fresh: list[_Shard] = []
        try:
            for i, shard in enumerate(self.shards):
                if shard is not None and shard.alive():
                    continue
                if shard is not None:
                    shard.conn.close()
                ours, theirs = self._context.Pipe(duplex=True)
                proc = self._context.Process(
                    target=shard_main,
                    args=(pickle.dumps(setups[i]), theirs, os.getpid()),
                    name=f"drillyard-shard-{i}",
                )
                proc.start()
                theirs.close()
                self.shards[i] = new = _Shard(setups[i], proc, ours)
                fresh.append(new)
            answers = await _gather([functools.partial(_receive, s) for s in fresh])
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        for shard, answer in zip(fresh, answers, strict=True):
            if not (isinstance(answer, tuple) and answer[0] == "ready"):
                await self.aclose()
                detail = answer[1] if isinstance(answer, tuple) else "it exited without a word"
                raise ShardError(shard.setup.index, str(detail), starting=True)
        if fresh:
            log.info("shards started", shards=len(fresh), pids=[s.proc.pid for s in fresh])

    async def aclose(self, *, now: bool = False) -> None:
        """Ask every shard to stop once it is idle (``now``: at once, as a cancelled
        run stops: SIGTERM); SIGKILL what has not stopped after `STOP_TIMEOUT`."""
        shards = [s for s in self.shards if s is not None]
        self.shards = [None] * len(self.shards)
        for shard in shards:
            with contextlib.suppress(OSError):
                shard.conn.send_bytes(b"")  # stop
            if now:
                shard.proc.terminate()
        await anyio.to_thread.run_sync(_stop, [s.proc for s in shards])
        for shard in shards:
            shard.conn.close()

    async def drive(
        self,
        run_id: str,
        pending: list[Pending],
        agent: AnyAgent,
        environment: EnvSpec | EnvFactory,
        scorer: Scorer,
    ) -> list[ShardReport]:
        """Deal ``pending`` round-robin to the shards, wait for every shard's report.
        A shard that died has ``reported=False``; it is started again next run.
        Runs on one engine take turns on its shards."""
        from engine.environment import EnvSpec

        async with self._turn:
            await self.start()
            shards = [s for s in self.shards if s is not None]
            k = min(len(shards), len(pending))
            env_name = environment.name if isinstance(environment, EnvSpec) else None
            registered = _registered([("environments", env_name)] if env_name else [])
            given = [
                (shard, ShardPlan(run_id, [p.record.id for p in pending[i::k]], agent,
                                  environment, scorer, registered))
                for i, shard in enumerate(shards[:k])
            ]  # fmt: skip
            try:
                blobs = [pickle.dumps(plan) for _, plan in given]  # all, before any is sent
            except Exception as exc:
                raise ConfigError(
                    "environment", f"what the run registered cannot reach a shard: {exc}",
                    "register module-level classes and functions, or open the engine with shards=1",
                ) from exc  # fmt: skip
            for (shard, _), blob in zip(given, blobs, strict=True):
                shard.conn.send_bytes(blob)
            try:
                answers = await _gather([functools.partial(_receive, s) for s, _ in given])
            except BaseException:
                # stopped mid-run: the shards stop too (their rollouts stay unfinished,
                # for resume); the next run starts fresh ones
                with anyio.CancelScope(shield=True):
                    await self.aclose(now=True)
                raise
            reports = []
            for (shard, plan), answer in zip(given, answers, strict=True):
                if isinstance(answer, ShardReport):
                    reports.append(answer)
                else:
                    reports.append(ShardReport(shard.setup.index, shard.proc.pid,
                                               len(plan.rollout_ids), shard.proc.exitcode,
                                               reported=False))  # fmt: skip
            return reports


async def _gather(calls: list[Callable[[], Any]]) -> list[Any]:
    """Each blocking call on a worker thread at once; their results in order."""
    results: list[Any] = [None] * len(calls)

    async def one(i: int) -> None:
        results[i] = await anyio.to_thread.run_sync(calls[i], abandon_on_cancel=True)

    async with anyio.create_task_group() as tg:
        for i in range(len(calls)):
            tg.start_soon(one, i)
    return results


def _receive(shard: _Shard) -> Any:
    """The shard's next message, or None once it has died (a worker thread)."""
    wait([shard.conn, shard.proc.sentinel])
    with contextlib.suppress(EOFError, OSError):
        if shard.conn.poll():
            return shard.conn.recv()
    shard.proc.join()
    return None


def _stop(procs: list[BaseProcess]) -> None:
    """Wait for the shards to exit; SIGTERM, then SIGKILL, after `STOP_TIMEOUT` each."""
    for p in procs:
        p.join(STOP_TIMEOUT)
        if p.is_alive():
            p.terminate()
            p.join(STOP_TIMEOUT)
        if p.is_alive():
            p.kill()
            p.join()


async def drive_sharded(
    engine: Engine,
    run_id: str,
    pending: list[Pending],
    agent: AnyAgent,
    environment: EnvSpec | EnvFactory,
    scorer: Scorer,
) -> None:
    """Drive ``pending`` over the engine's shards; finish a dead shard's share here."""
    pool = engine.shard_pool
    assert pool is not None, "the engine is not open"
    async with anyio.create_task_group() as tg:
        ended = anyio.Event()
        tg.start_soon(_watch, engine, run_id, len(pending), ended)
        try:
            reports = await pool.drive(run_id, pending, agent, environment, scorer)
        finally:
            ended.set()
    engine.last_shards = reports
    failed = [r for r in reports if r.error is not None]
    if failed:
        raise ShardError(failed[0].index, failed[0].error or "")
    dead = [r.index for r in reports if not r.reported]
    if dead:
        left = await engine.unfinished_pending(run_id, [p.record.id for p in pending])
        log.warning("shards died; finishing their rollouts here", run=run_id, shards=dead,
                    rollouts=len(left))  # fmt: skip
        await engine.schedule(run_id, left, agent, environment, scorer)


async def _watch(engine: Engine, run_id: str, total: int, ended: anyio.Event) -> None:
    """The progress bar of a sharded run: the store's counts, twice a second until
    every shard has ended, and once after."""
    from engine.api import progress_bar, states_text

    progress = progress_bar(engine.progress, total)
    bar = progress.add_task(run_id, total=total, states="")
    before: int | None = None  # rollouts of the run that had a result already (a resume)
    with progress:
        while True:
            last = ended.is_set()
            counts = await engine.store.state_counts(run_id)
            if before is None:
                before = sum(counts.values()) - total
            done = sum(n for state, n in counts.items() if state in RESULT_STATES) - before
            results = {k: v for k, v in counts.items() if k in RESULT_STATES}
            progress.update(bar, completed=max(0, min(done, total)), states=states_text(results))
            if last:
                return
            with anyio.move_on_after(0.5):
                await ended.wait()


# ---- in the shard process ---------------------------------------------------


def _die_with(parent: int) -> None:
    """Be killed the moment ``parent`` dies (Linux ``PR_SET_PDEATHSIG``), as if the
    kill -9 that ended the engine had ended its shards too: nothing then writes to
    the store behind a later `Engine.resume`."""
    if sys.platform == "linux":
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # it died before that took effect
        os._exit(1)


def shard_main(blob: bytes, conn: Connection, parent: int) -> None:
    """A shard process's body: open the engine, then drive each plan sent until told
    to stop (an empty message) or the parent goes away."""
    _die_with(parent)
    try:
        setup: ShardSetup = pickle.loads(blob)
        for kind, name, obj in setup.registered:
            registry.register(kind, name, obj)
        eventloop.run(_serve(setup, conn), setup.loop)
    except BaseException:
        with contextlib.suppress(OSError):
            conn.send(("failed", traceback.format_exc()))
    finally:
        conn.close()


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _serve(setup: ShardSetup, conn: Connection) -> None:
    from engine.api import Engine
    from engine.store import TraceStore

    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    opts = dict(setup.store)
    path = opts.pop("path")
    async with Engine(
        TraceStore(path, **opts), setup.backend, progress=False, **setup.engine_options
    ) as engine:
        conn.send(("ready", os.getpid()))
        while True:
            try:
                blob = await anyio.to_thread.run_sync(conn.recv_bytes, abandon_on_cancel=True)
            except (EOFError, OSError):
                return  # the parent has gone
            if not blob:
                return  # told to stop
            cpu0, given, error = _cpu_s(), 0, None
            try:
                plan: ShardPlan = pickle.loads(blob)
                given = len(plan.rollout_ids)
                await _drive(engine, plan)
            except Exception:
                error = traceback.format_exc()
            conn.send(ShardReport(setup.index, os.getpid(), given, None, reported=True,
                                  cpu_s=_cpu_s() - cpu0, error=error))  # fmt: skip


async def _drive(engine: Engine, plan: ShardPlan) -> None:
    """One run's share, through the driver every run uses."""
    for kind, name, obj in plan.registered:
        registry.register(kind, name, obj)
    pending = await engine.unfinished_pending(plan.run_id, plan.rollout_ids)
    try:
        await engine.schedule(plan.run_id, pending, plan.agent, plan.environment, plan.scorer)
    finally:
        with anyio.CancelScope(shield=True):
            await engine.store.commit()  # on disk before the report says so
            await close_policy(plan.agent.policy)
