"""The embedding API: `Engine` runs rollouts, `Run` reads their results back.

async with Engine(store="runs.db", backend="inprocess") as engine:
    run = await engine.run(tasks, agent, environment="arithmetic", samples=8)
    print(await run.pass_at_k([1, 4, 8]))

``agent`` is the built-in loop (`Agent`) or an app's own: an async
``solve(task, ctx)`` with ``policy=…`` (or an `AppAgent`), whose model calls
go through the engine's recording gateway (`engine.gateway`).
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import time
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import anyio
import structlog
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine import registry
from engine.agent import AnyAgent, as_agent
from engine.backend import Backend, EnvFactory, create_backend
from engine.environment import EnvSpec
from engine.errors import ConfigError
from engine.export import export_jsonl
from engine.live import LiveRun
from engine.logs import configure_logging
from engine.messages import Message
from engine.ordering import ORDERS, TaskOrder, check_order, estimates, longest_first
from engine.passk import PassAtK, compute_pass_at_k
from engine.policy.base import Policy, preflight
from engine.resources import AsyncResource
from engine.rollout import Limits, Outcome, Rollout, Scorer
from engine.scheduler import Pending, Scheduler, SchedulerConfig
from engine.scoring import resolve_scorer
from engine.shards import (
    ShardPool,
    ShardReport,
    check_shards,
    check_shippable,
    drive_sharded,
)
from engine.store import RolloutRecord, TraceStore
from engine.tasks import Task, check_unique_ids
from engine.trajectory import TokenTrajectory, rollout_trajectories

if TYPE_CHECKING:
    from engine.agent import Solve
    from engine.gateway import Gateway

log = structlog.get_logger("drillyard.engine")

EnvironmentArg = str | EnvSpec | EnvFactory


def code_version() -> str:
    """The drillyard version, plus the git commit when running from a checkout."""
    try:
        ver = version("drillyard")
    except PackageNotFoundError:
        ver = "unknown"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return f"{ver}+{commit}" if commit else ver


def new_run_id() -> str:
    return time.strftime("run-%Y%m%d-%H%M%S-") + secrets.token_hex(3)


class Run:
    """A run in the store: everything a user can ask of it is a query away."""

    def __init__(self, store: TraceStore, run_id: str) -> None:
        self.store = store
        self.id = run_id

    def __repr__(self) -> str:
        return f"Run({self.id!r}, store={str(self.store.path)!r})"

    async def rollouts(self, state: str | Iterable[str] | None = None) -> list[RolloutRecord]:
        return await self.store.rollouts(self.id, state)

    async def messages(self, rollout_id: str) -> list[Message]:
        return await self.store.messages(rollout_id)

    async def token_trajectories(self, rollout_id: str) -> list[TokenTrajectory]:
        """Per agent, the rollout's last attempt as one token sequence with its loss
        mask, or why it is not trainable (see `engine.trajectory`)."""
        return await rollout_trajectories(self.store, await self.store.rollout(rollout_id))

    async def counts(self) -> dict[str, int]:
        """How many rollouts are in each state."""
        return await self.store.state_counts(self.id)

    async def rewards(self) -> dict[str, list[float | None]]:
        """Per task (GRPO group), the reward of each sample (None: no result)."""
        groups = await self.store.rewards_by_group(self.id)
        return {task: [r for _, r in samples] for task, samples in groups.items()}

    async def pass_at_k(
        self, ks: Iterable[int] = (1,), by: Iterable[str] = (), threshold: float = 1.0
    ) -> PassAtK:
        """pass@k from the store. A sample counts as correct when it is ``done``
        with reward ≥ ``threshold``; ``failed`` and ``timed_out`` count as wrong;
        ``error`` (infrastructure) and unfinished samples are left out of n."""
        outcomes: dict[str, list[bool]] = {}
        for task, samples in (await self.store.rewards_by_group(self.id)).items():
            outcomes[task] = [
                state == "done" and reward is not None and reward >= threshold
                for state, reward in samples
                if state in ("done", "failed", "timed_out")
            ]
        by = tuple(by)
        metadata = {t.id: t.metadata for t in await self.store.tasks(self.id)} if by else None
        return compute_pass_at_k(outcomes, ks, metadata, by)

    async def export_jsonl(self, path: str | Path, states: tuple[str, ...] | None = None) -> int:
        return await export_jsonl(self.store, self.id, path, states)


class Engine(AsyncResource):
    """Opens the trace store and the backend; runs and resumes rollouts.

    ``store`` is a path or an open-able `TraceStore`; ``backend`` a registered
    name (``"inprocess"``, ``"subprocess"``, ``"kubernetes"``) or a `Backend`.
    ``shards`` > 1 drives each run over that many engine processes, started
    with the engine (`engine.shards`; the backend then by name).
    """

    def __init__(
        self,
        store: str | Path | TraceStore = "drillyard.db",
        backend: str | Backend = "inprocess",
        *,
        backend_options: dict[str, Any] | None = None,
        max_rollouts: int = 64,
        max_model_requests: int = 64,
        max_attempts: int = 3,
        retry_backoff: float = 0.2,
        step_timeout: float = 120.0,
        rollout_timeout: float | None = None,
        progress: bool | None = None,
        shards: int = 1,
    ) -> None:
        self.store = store if isinstance(store, TraceStore) else TraceStore(store)
        self.backend = (
            backend
            if isinstance(backend, Backend)
            else create_backend(backend, **(backend_options or {}))
        )
        if max_model_requests < 1:
            raise ConfigError("max_model_requests", f"must be >= 1, got {max_model_requests}")
        self.max_model_requests = max_model_requests
        self.shards = check_shards(
            shards, self.store, backend, max_rollouts=max_rollouts,
            max_model_requests=max_model_requests,
        )  # fmt: skip
        self.backend_options = dict(backend_options or {})
        self.scheduler_config = SchedulerConfig(
            max_rollouts=max_rollouts,
            max_attempts=max_attempts,
            retry_backoff=retry_backoff,
            limits=Limits(step_timeout=step_timeout, rollout_timeout=rollout_timeout),
        )
        self.progress = progress
        self._model_limit = asyncio.Semaphore(max_model_requests)
        self._gateway: Gateway | None = None
        self.last_scheduler: Scheduler | None = None
        self.last_shards: list[ShardReport] = []  # the last sharded run's shards
        self.shard_pool: ShardPool | None = None  # with shards > 1, while open
        self._backend_started = False
        self._backend_lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        configure_logging()
        await self.store.open()
        try:
            if self.shards > 1:  # this process's backend only if a dead shard's work needs it
                self.shard_pool = ShardPool(self)
                await self.shard_pool.start()
            else:
                await self.started_backend()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.store.close()
            raise
        return self

    async def started_backend(self) -> Backend:
        """The engine's backend, started on first use (at open, unless sharded)."""
        async with self._backend_lock:
            if not self._backend_started:
                await self.backend.start()
                self._backend_started = True
        return self.backend

    async def aclose(self) -> None:
        """Close the gateway and the backend, then the store (everything recorded is committed)."""
        try:
            pool, self.shard_pool = self.shard_pool, None
            if pool is not None:
                await pool.aclose()
            gateway, self._gateway = self._gateway, None
            if gateway is not None:
                await gateway.aclose()
            if self._backend_started:
                self._backend_started = False
                await self.backend.close()
        finally:
            await self.store.close()

    async def gateway(self) -> Gateway:
        """The engine's model gateway, started on first use (an `AppAgent`'s run does)."""
        if self._gateway is None:
            from engine.gateway import Gateway

            gateway = Gateway()
            await gateway.start()
            self._gateway = gateway
        return self._gateway

    def open_run(self, run_id: str) -> Run:
        return Run(self.store, run_id)

    @property
    def model_limit(self) -> asyncio.Semaphore:
        """The engine-wide bound on model requests in flight (``max_model_requests``)."""
        return self._model_limit

    async def live_run(
        self,
        agent: AnyAgent | None,
        *,
        environment: EnvironmentArg,
        scorer: str | Scorer = "exact",
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> LiveRun:
        """Open a run that batches of rollouts are added to over time (a training
        job); see `engine.live`. An existing ``run_id`` of this store is continued.
        ``agent`` may be None when every batch item brings its own."""
        if self.shards > 1:
            raise ConfigError(
                "shards",
                "a live run (training) is driven in one process",
                "open the engine for training with shards=1 (the default)",
            )
        env = self._environment(environment)
        score_fn = resolve_scorer(scorer)
        run_id = run_id or new_run_id()
        existing = {r.id for r in await self.store.runs()}
        if run_id in existing:
            rollouts = await self.store.rollouts(run_id)
            groups: dict[str, int] = {}
            for r in rollouts:
                groups[r.task_id] = max(groups.get(r.task_id, 0), r.sample_index + 1)
            self.store.set_run_status(run_id, "running")
            live = LiveRun(self, run_id, agent, env, score_fn, counter=len(rollouts), groups=groups)
        else:
            described = agent.describe() if agent is not None else {"per_rollout": True}
            config = self._run_config(env, scorer, described, 1, metadata, "given")
            self.store.create_run(run_id, config, code_version())
            live = LiveRun(self, run_id, agent, env, score_fn)
        await self.store.commit()
        log.info("live run open", run=run_id)
        return live

    async def run(
        self,
        tasks: Iterable[Task],
        agent: AnyAgent | Solve,
        *,
        environment: EnvironmentArg,
        policy: Policy | None = None,
        samples: int = 1,
        scorer: str | Scorer = "exact",
        run_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        order: TaskOrder = "given",
    ) -> Run:
        """Run every task ``samples`` times (one GRPO group per task) to a result each.

        ``agent`` is an `Agent` (the built-in loop), or an app's own loop: an
        async ``solve(task, ctx) -> str`` with ``policy=`` (its model calls'
        destination), or an `AppAgent` for more options. ``order`` is the order
        rollouts start in: ``"given"``, ``"longest_first"`` (by each task's mean
        duration in earlier runs of this store, else its ``metadata["expected_s"]``),
        or a function task -> expected seconds; see `engine.ordering`. Longest
        first shortens a run's tail."""
        check_order(order)
        agent = as_agent(agent, policy)
        task_list = check_unique_ids(tasks)
        if not task_list:
            raise ConfigError("tasks", "no tasks given", "pass at least one Task")
        if samples < 1:
            raise ConfigError("samples", f"must be >= 1, got {samples}")
        env = self._environment(environment)
        score_fn = resolve_scorer(scorer)
        await preflight(agent.policy)  # an unreachable model server fails here, once
        if self.shards > 1:
            check_shippable(agent, env, score_fn)
        run_id = run_id or new_run_id()
        config = self._run_config(
            env, scorer, agent.describe(), samples, metadata, _order_name(order)
        )
        self.store.create_run(run_id, config, code_version())
        self.store.add_tasks(run_id, task_list)
        pending: list[Pending] = []
        for task in task_list:
            for i in range(samples):
                rid = f"{run_id}.{len(pending)}"
                self.store.add_rollout(rid, run_id, task.id, i, self.backend.name)
                pending.append(Pending(RolloutRecord.queued(rid, run_id, task.id, i), task))
        await self.store.commit()
        pending = longest_first(pending, _task_of, await estimates(task_list, order, self.store))
        log.info("run started", run=run_id, tasks=len(task_list), samples=samples,
                 order=_order_name(order))  # fmt: skip
        await self._drive(run_id, pending, agent, env, score_fn)
        return Run(self.store, run_id)

    async def resume(
        self,
        run_id: str,
        agent: AnyAgent | Solve,
        *,
        environment: EnvironmentArg | None = None,
        policy: Policy | None = None,
        scorer: str | Scorer | None = None,
        order: TaskOrder | None = None,
    ) -> Run:
        """Finish every rollout of a run that has no result yet; others stay as they are.

        ``order`` defaults to the run's own when it was a name (see `run`)."""
        agent = as_agent(agent, policy)
        record = await self.store.run(run_id)
        if order is None:
            stored = record.config.get("order", "given")
            order = stored if stored in ORDERS else "given"
        check_order(order)
        env: EnvSpec | EnvFactory
        if environment is not None:
            env = self._environment(environment)
        elif "name" in record.config["environment"]:
            env = EnvSpec(**record.config["environment"])
        else:
            raise ConfigError(
                f"run {run_id}",
                "its environment was a factory, not a name",
                "pass environment= to resume",
            )
        score_fn = resolve_scorer(scorer if scorer is not None else record.config["scorer"])
        await preflight(agent.policy)
        if self.shards > 1:
            check_shippable(agent, env, score_fn)
        pending = await self.unfinished_pending(run_id)
        todo = list({p.task.id: p.task for p in pending}.values())
        pending = longest_first(pending, _task_of, await estimates(todo, order, self.store))
        self.store.set_run_status(run_id, "running")
        log.info("run resumed", run=run_id, unfinished=len(pending))
        await self._drive(run_id, pending, agent, env, score_fn)
        return Run(self.store, run_id)

    def _run_config(
        self,
        env: EnvSpec | EnvFactory,
        scorer: str | Scorer,
        agent: dict[str, Any],
        samples: int,
        metadata: dict[str, Any] | None,
        order: str,
    ) -> dict[str, Any]:
        """What a run records of how it was started (shown by `runs`, used by `resume`)."""
        return {
            "environment": env.to_dict() if isinstance(env, EnvSpec) else {"factory": repr(env)},
            "scorer": scorer if isinstance(scorer, str) else getattr(scorer, "__qualname__", "?"),
            "samples": samples,
            "agent": agent,
            "backend": self.backend.name,
            "limits": {
                "max_rollouts": self.scheduler_config.max_rollouts,
                "max_model_requests": self.max_model_requests,
                "shards": self.shards,
                "max_attempts": self.scheduler_config.max_attempts,
                "step_timeout": self.scheduler_config.limits.step_timeout,
                "rollout_timeout": self.scheduler_config.limits.rollout_timeout,
            },
            "metadata": metadata or {},
            "order": order,
        }

    def _environment(self, environment: EnvironmentArg) -> EnvSpec | EnvFactory:
        if isinstance(environment, str):
            environment = EnvSpec(environment)
        if isinstance(environment, EnvSpec):
            registry.resolve("environments", environment.name)  # unknown names fail now
            return environment
        if callable(environment):
            return environment
        raise ConfigError("environment", f"{environment!r} is not a name, EnvSpec or factory")

    async def unfinished_pending(self, run_id: str, only: list[str] | None = None) -> list[Pending]:
        """The run's rollouts without a result, ready to drive (``only``: those of
        these ids that are unfinished, in that order)."""
        tasks = {t.id: t for t in await self.store.tasks(run_id)}
        seqs = await self.store.next_seqs(run_id)
        pending = [
            Pending(r, tasks[r.task_id], seqs[r.id]) for r in await self.store.unfinished(run_id)
        ]
        if only is None:
            return pending
        by_id = {p.record.id: p for p in pending}
        return [by_id[i] for i in only if i in by_id]

    async def _drive(
        self,
        run_id: str,
        pending: list[Pending],
        agent: AnyAgent,
        env: EnvSpec | EnvFactory,
        score_fn: Scorer,
    ) -> None:
        """Drive ``pending`` to a result each (here, or over the engine's shards);
        the run is ``finished`` after, ``interrupted`` if this is stopped."""
        status = "interrupted"
        try:
            if self.shards > 1 and len(pending) > 1:
                await drive_sharded(self, run_id, pending, agent, env, score_fn)
            else:
                await self.schedule(run_id, pending, agent, env, score_fn)
            status = "finished"
        finally:
            with anyio.CancelScope(shield=True):
                self.store.set_run_status(run_id, status)
                await self.store.commit()
                log.info("run ended", run=run_id, status=status)

    async def schedule(
        self,
        run_id: str,
        pending: list[Pending],
        agent: AnyAgent,
        env: EnvSpec | EnvFactory,
        score_fn: Scorer,
    ) -> None:
        """The one driver: every pending rollout to a result, in this process."""
        backend = await self.started_backend()
        gateway = await self.gateway() if agent.uses_gateway else None
        progress = progress_bar(self.progress, len(pending))
        bar = progress.add_task(run_id, total=len(pending), states="")
        tally: dict[str, int] = {}

        def on_result(rollout: Rollout, outcome: Outcome) -> None:
            tally[str(outcome.state)] = tally.get(str(outcome.state), 0) + 1
            progress.update(bar, advance=1, states=states_text(tally))

        scheduler = Scheduler(
            run_id=run_id,
            store=self.store,
            backend=backend,
            agent=agent,
            environment=env,
            scorer=score_fn,
            model_limit=self._model_limit,
            config=self.scheduler_config,
            on_result=on_result,
            gateway=gateway,
        )
        self.last_scheduler = scheduler
        with progress:
            await scheduler.run(pending)
        log.info("rollouts driven", run=run_id, **tally)


def progress_bar(setting: bool | None, total: int) -> Progress:
    """A run's progress bar: rollouts with a result, by state. Shown when ``setting``
    (the engine's ``progress``) says so; None: for runs of 50 rollouts or more."""
    show = setting if setting is not None else total >= 50
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[states]}"),
        TimeElapsedColumn(),
        disable=not show,
        transient=False,
    )


def states_text(counts: dict[str, int]) -> str:
    """``done=3 failed=1``: the progress bar's tally of results by state."""
    return " ".join(f"{k}={v}" for k, v in sorted(counts.items()))


def _task_of(item: Pending) -> Task:
    return item.task


def _order_name(order: TaskOrder) -> str:
    return order if isinstance(order, str) else getattr(order, "__qualname__", repr(order))
