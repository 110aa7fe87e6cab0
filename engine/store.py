"""The trace store: SQLite in WAL mode through aiosqlite, one batching writer.

Writes are enqueued without waiting (`record`, `update_rollout`, …) and one
writer task commits them in batches (every ``flush_interval`` seconds or every
``batch_size`` rows, one transaction a batch). `commit` is a barrier: it
returns once everything enqueued before it is on disk. A rollout's terminal
state is enqueued after its messages and so can never be committed before
them. Reads go through a second connection and see committed data only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite
import orjson

from engine.errors import ConfigError
from engine.messages import Category, Message
from engine.schema import MIGRATIONS, SCHEMA_VERSION
from engine.tasks import Task

WRITER_PRAGMAS = (
    # a new file gets 8 KiB pages (no effect on an existing one): the messages
    # index is filled in rollout order, not time order, and larger pages split
    # less often (measured: ~1.3x rows/s on ingest)
    "page_size=8192",
    "journal_mode=WAL",
    "synchronous=NORMAL",
    # the writer's page cache holds the hot index pages of every live rollout
    # (default 2 MB); memory is only used as the file grows
    "cache_size=-65536",
    "foreign_keys=ON",
    "busy_timeout=10000",
    # checkpoint the WAL every ~40 MB rather than every 4 MB: fewer stalls of
    # the writer under a heavy ingest
    "wal_autocheckpoint=10000",
)
"""The writer connection's settings, in order (the ingest bench's baseline uses them too)."""

RESULT_STATES = frozenset({"done", "failed", "timed_out", "error"})
"""States that carry a final result; every other state is resumable."""

_ROLLOUT_FIELDS = frozenset(
    {
        "state",
        "attempt",
        "reward",
        "answer",
        "error",
        "turns",
        "started_at",
        "finished_at",
        "worker",
        "policy_version",
        "backend",
    }
)


def _dumps(obj: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


@dataclass(slots=True)
class RolloutRecord:
    """One rollout (one sample of one task) as the store holds it."""

    id: str
    run_id: str
    task_id: str
    sample_index: int
    attempt: int
    state: str
    reward: float | None
    answer: str | None
    error: str | None
    turns: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    backend: str | None
    worker: str | None
    policy_version: str | None

    @property
    def group_id(self) -> str:
        return self.task_id


@dataclass(slots=True)
class AttemptRecord:
    rollout_id: str
    attempt: int
    state: str
    error: str | None
    worker: str | None
    started_at: float
    finished_at: float | None


@dataclass(slots=True)
class TrainStepRecord:
    """What was measured of one training step of a run (fields merged as they arrive)."""

    run_id: str
    step: int
    data: dict[str, Any]
    updated_at: float


@dataclass(slots=True)
class RunRecord:
    id: str
    created_at: float
    finished_at: float | None
    status: str
    config: dict[str, Any]
    code_version: str


class _Batch:
    """Everything the writer commits in one transaction, in dependency order."""

    __slots__ = (
        "attempts",
        "barriers",
        "messages",
        "rollout_inserts",
        "rollout_updates",
        "runs",
        "tasks",
    )

    def __init__(self) -> None:
        self.runs: list[tuple[str, tuple[Any, ...]]] = []
        self.tasks: list[tuple[Any, ...]] = []
        self.rollout_inserts: list[tuple[Any, ...]] = []
        self.attempts: dict[tuple[str, int], tuple[Any, ...]] = {}
        self.messages: list[tuple[Any, ...]] = []
        self.rollout_updates: dict[str, dict[str, Any]] = {}
        self.barriers: list[asyncio.Future[None]] = []

    def rows(self) -> int:
        return (
            len(self.runs)
            + len(self.tasks)
            + len(self.rollout_inserts)
            + len(self.attempts)
            + len(self.messages)
            + len(self.rollout_updates)
        )


class TraceStore:
    """Every run, rollout, attempt and message, in one SQLite file.

    Use as an async context manager: ``async with TraceStore("runs.db") as store:``.
    """

    def __init__(
        self, path: str | Path, *, flush_interval: float = 0.02, batch_size: int = 2000
    ) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._batch = _Batch()
        self._wake = asyncio.Event()  # something is enqueued
        self._urgent = asyncio.Event()  # flush now: a barrier, a full batch, closing
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        self._failure: BaseException | None = None
        self._nums: dict[str, int] = {}
        self._next_num = 1
        self.rows_written = 0
        self.batches_written = 0

    # ---- lifecycle -------------------------------------------------------

    async def open(self) -> TraceStore:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            for pragma in WRITER_PRAGMAS:
                await self._db.execute(f"PRAGMA {pragma}")
            await self._migrate(self._db)
            async with self._db.execute("SELECT COALESCE(MAX(num), 0) FROM rollouts") as cur:
                row = await cur.fetchone()
        except BaseException:
            await self._db.close()
            self._db = None
            raise
        self._next_num = int(row[0]) + 1 if row else 1
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        await self._reader.execute("PRAGMA busy_timeout=10000")
        self._writer = asyncio.create_task(self._write_loop(), name="drillyard-store-writer")
        return self

    async def close(self) -> None:
        """Flush everything enqueued, stop the writer, close both connections."""
        if self._db is None:
            return
        try:
            if self._writer is not None and not self._writer.done():
                await self.commit()
        finally:
            self._closing = True
            self._wake.set()
            self._urgent.set()
            if self._writer is not None:
                await asyncio.gather(self._writer, return_exceptions=True)
            for conn in (self._reader, self._db):
                if conn is not None:
                    await conn.close()
            self._db = self._reader = None

    async def __aenter__(self) -> TraceStore:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.close())

    async def _migrate(self, db: aiosqlite.Connection) -> None:
        async with db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            raise ConfigError(
                str(self.path),
                f"store has schema version {current}, this drillyard knows {SCHEMA_VERSION}",
                "upgrade drillyard to read this store",
            )
        for version, script in MIGRATIONS:
            if version > current:
                await db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;")

    # ---- the writer ------------------------------------------------------

    def _enqueued(self) -> None:
        """Called after every enqueue: the hot path, so kept to two checks."""
        if self._failure is not None:
            raise RuntimeError(f"trace store writer failed: {self._failure!r}") from self._failure
        self._wake.set()
        if len(self._batch.messages) >= self.batch_size:
            self._urgent.set()

    async def _write_loop(self) -> None:
        assert self._db is not None
        while True:
            await self._wake.wait()
            if not self._urgent.is_set():
                # gather a batch for up to flush_interval; cut short when urgent
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._urgent.wait(), self.flush_interval)
            self._wake.clear()
            self._urgent.clear()
            batch, self._batch = self._batch, _Batch()
            if batch.rows() or batch.barriers:
                try:
                    await self._commit_batch(self._db, batch)
                except BaseException as exc:
                    self._failure = exc
                    for fut in batch.barriers + self._batch.barriers:
                        if not fut.done():
                            fut.set_exception(RuntimeError(f"trace store write failed: {exc!r}"))
                    raise
                for fut in batch.barriers:
                    if not fut.done():
                        fut.set_result(None)
            if self._closing and not self._batch.rows() and not self._batch.barriers:
                return

    async def _commit_batch(self, db: aiosqlite.Connection, b: _Batch) -> None:
        await db.execute("BEGIN")
        try:
            for sql, params in b.runs:
                await db.execute(sql, params)
            if b.tasks:
                await db.executemany(
                    "INSERT OR IGNORE INTO tasks(run_id, task_id, ord, data) VALUES (?,?,?,?)",
                    b.tasks,
                )
            if b.rollout_inserts:
                await db.executemany(
                    "INSERT INTO rollouts(num, id, run_id, task_id, sample_index, attempt, state,"
                    " turns, created_at, backend) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    b.rollout_inserts,
                )
            if b.attempts:
                await db.executemany(
                    "INSERT INTO attempts(rollout_id, attempt, state, error, worker, started_at,"
                    " finished_at) VALUES (?,?,?,?,?,?,?)"
                    " ON CONFLICT(rollout_id, attempt) DO UPDATE"
                    " SET state=excluded.state, error=excluded.error, worker=excluded.worker,"
                    " finished_at=excluded.finished_at",
                    list(b.attempts.values()),
                )
            if b.messages:
                await db.executemany(
                    "INSERT INTO messages(rollout_num, seq, attempt, sender, receiver, category,"
                    " topic, priority, headers, payload, created_at)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    b.messages,
                )
            # one executemany per set of updated columns, not one statement per
            # rollout: each statement is a hop to the connection's thread
            by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
            for rollout_id, fields in b.rollout_updates.items():
                by_columns.setdefault(tuple(fields), []).append((*fields.values(), rollout_id))
            for columns, rows in by_columns.items():
                cols = ", ".join(f"{k}=?" for k in columns)
                await db.executemany(f"UPDATE rollouts SET {cols} WHERE id=?", rows)
            await db.execute("COMMIT")
        except BaseException:
            await db.execute("ROLLBACK")
            raise
        self.rows_written += b.rows()
        self.batches_written += 1

    async def commit(self) -> None:
        """Wait until everything enqueued so far is committed."""
        if self._failure is not None:
            raise RuntimeError(f"trace store writer failed: {self._failure!r}") from self._failure
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.barriers.append(fut)
        self._wake.set()
        self._urgent.set()
        await fut

    # ---- enqueue ---------------------------------------------------------

    def record(self, msg: Message) -> None:
        """Enqueue one message."""
        self._batch.messages.append(
            (
                self._nums[msg.rollout_id],
                msg.seq,
                msg.attempt,
                msg.sender,
                msg.receiver,
                str(msg.category),
                msg.topic,
                msg.priority,
                _dumps(msg.headers) if msg.headers else None,
                _dumps(msg.payload),
                msg.created_at,
            )
        )
        self._enqueued()

    def update_rollout(self, rollout_id: str, **fields: Any) -> None:
        """Enqueue new values for a rollout's columns (merged with earlier ones in the batch)."""
        unknown = set(fields) - _ROLLOUT_FIELDS
        if unknown:
            raise ValueError(f"unknown rollout fields: {sorted(unknown)}")
        self._batch.rollout_updates.setdefault(rollout_id, {}).update(fields)
        self._enqueued()

    def record_attempt(self, a: AttemptRecord) -> None:
        self._batch.attempts[(a.rollout_id, a.attempt)] = (
            a.rollout_id,
            a.attempt,
            a.state,
            a.error,
            a.worker,
            a.started_at,
            a.finished_at,
        )
        self._enqueued()

    def create_run(self, run_id: str, config: dict[str, Any], code_version: str) -> None:
        self._batch.runs.append(
            (
                "INSERT INTO runs(id, created_at, status, config, code_version) VALUES (?,?,?,?,?)",
                (run_id, time.time(), "running", _dumps(config), code_version),
            )
        )
        self._enqueued()

    def record_train_step(self, run_id: str, step: int, **data: Any) -> None:
        """Enqueue measurements of a training step, merged into what it already holds."""
        self._batch.runs.append(
            (
                "INSERT INTO train_steps(run_id, step, data, updated_at) VALUES (?,?,?,?)"
                " ON CONFLICT(run_id, step) DO UPDATE"
                " SET data=json_patch(data, excluded.data), updated_at=excluded.updated_at",
                (run_id, step, _dumps(data), time.time()),
            )
        )
        self._enqueued()

    def set_run_status(self, run_id: str, status: str) -> None:
        finished = time.time() if status != "running" else None
        self._batch.runs.append(
            ("UPDATE runs SET status=?, finished_at=? WHERE id=?", (status, finished, run_id))
        )
        self._enqueued()

    def add_tasks(self, run_id: str, tasks: Iterable[Task]) -> None:
        self._batch.tasks.extend(
            (run_id, t.id, i, _dumps(t.to_dict())) for i, t in enumerate(tasks)
        )
        self._enqueued()

    def add_rollout(
        self, rollout_id: str, run_id: str, task_id: str, sample_index: int, backend: str
    ) -> None:
        num = self._next_num
        self._next_num += 1
        self._nums[rollout_id] = num
        self._batch.rollout_inserts.append(
            (num, rollout_id, run_id, task_id, sample_index, 0, "queued", 0, time.time(), backend)
        )
        self._enqueued()

    # ---- reads -----------------------------------------------------------

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
        if self._reader is None:
            raise RuntimeError("the trace store is not open: use `async with TraceStore(...)`")
        async with self._reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def runs(self) -> list[RunRecord]:
        rows = await self._fetch(
            "SELECT id, created_at, finished_at, status, config, code_version FROM runs"
            " ORDER BY created_at"
        )
        return [RunRecord(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5]) for r in rows]

    async def run(self, run_id: str) -> RunRecord:
        rows = await self._fetch(
            "SELECT id, created_at, finished_at, status, config, code_version FROM runs WHERE id=?",
            (run_id,),
        )
        if not rows:
            known = ", ".join(r.id for r in await self.runs()) or "none"
            raise ConfigError(f"{self.path}", f"no run '{run_id}' in this store", f"runs: {known}")
        r = rows[0]
        return RunRecord(r[0], r[1], r[2], r[3], orjson.loads(r[4]), r[5])

    async def tasks(self, run_id: str) -> list[Task]:
        rows = await self._fetch("SELECT data FROM tasks WHERE run_id=? ORDER BY ord", (run_id,))
        return [Task.from_dict(orjson.loads(r[0])) for r in rows]

    _ROLLOUT_COLS = (
        "id, run_id, task_id, sample_index, attempt, state, reward, answer, error, turns,"
        " created_at, started_at, finished_at, backend, worker, policy_version"
    )

    async def rollouts(
        self, run_id: str, state: str | Iterable[str] | None = None
    ) -> list[RolloutRecord]:
        """Rollouts of a run, optionally only those in the given state(s)."""
        sql = f"SELECT {self._ROLLOUT_COLS} FROM rollouts WHERE run_id=?"
        params: tuple[Any, ...] = (run_id,)
        if state is not None:
            states = (state,) if isinstance(state, str) else tuple(state)
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params += states
        rows = await self._fetch(sql + " ORDER BY task_id, sample_index", params)
        return [RolloutRecord(*r) for r in rows]

    async def rollout(self, rollout_id: str) -> RolloutRecord:
        rows = await self._fetch(
            f"SELECT {self._ROLLOUT_COLS} FROM rollouts WHERE id=?", (rollout_id,)
        )
        if not rows:
            raise KeyError(rollout_id)
        return RolloutRecord(*rows[0])

    async def unfinished(self, run_id: str) -> list[RolloutRecord]:
        """Rollouts without a result yet: what `resume` runs again (and may now write to)."""
        states = tuple(RESULT_STATES)
        rows = await self._fetch(
            f"SELECT num, {self._ROLLOUT_COLS} FROM rollouts WHERE run_id=? AND state NOT IN"
            f" ({','.join('?' * len(states))}) ORDER BY task_id, sample_index",
            (run_id, *states),
        )
        for r in rows:
            self._nums[r[1]] = r[0]
        return [RolloutRecord(*r[1:]) for r in rows]

    async def attempts(self, rollout_id: str) -> list[AttemptRecord]:
        rows = await self._fetch(
            "SELECT rollout_id, attempt, state, error, worker, started_at, finished_at"
            " FROM attempts WHERE rollout_id=? ORDER BY attempt",
            (rollout_id,),
        )
        return [AttemptRecord(*r) for r in rows]

    async def messages(self, rollout_id: str, category: str | None = None) -> list[Message]:
        """A rollout's messages in order (all attempts)."""
        sql = (
            "SELECT r.run_id, r.id, m.seq, m.attempt, m.sender, m.receiver, m.category, m.topic,"
            " m.payload, m.headers, m.priority, m.created_at FROM messages m"
            " JOIN rollouts r ON r.num = m.rollout_num WHERE r.id=?"
        )
        params: tuple[Any, ...] = (rollout_id,)
        if category is not None:
            sql += " AND m.category=?"
            params += (category,)
        rows = await self._fetch(sql + " ORDER BY m.seq", params)
        return [
            Message(
                r[0],
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                Category(r[6]),
                r[7],
                orjson.loads(r[8]),
                orjson.loads(r[9]) if r[9] else {},
                r[10],
                r[11],
            )
            for r in rows
        ]

    async def next_seqs(self, run_id: str) -> dict[str, int]:
        """For every rollout of a run, the seq its next message gets."""
        rows = await self._fetch(
            "SELECT r.id, COALESCE(MAX(m.seq) + 1, 0) FROM rollouts r"
            " LEFT JOIN messages m ON m.rollout_num = r.num WHERE r.run_id=? GROUP BY r.id",
            (run_id,),
        )
        return {r[0]: int(r[1]) for r in rows}

    async def rewards_by_group(self, run_id: str) -> dict[str, list[tuple[str, float | None]]]:
        """For each task (GRPO group): ``[(state, reward), …]`` by sample index."""
        rows = await self._fetch(
            "SELECT task_id, state, reward FROM rollouts WHERE run_id=?"
            " ORDER BY task_id, sample_index",
            (run_id,),
        )
        groups: dict[str, list[tuple[str, float | None]]] = {}
        for task_id, state, reward in rows:
            groups.setdefault(task_id, []).append((state, reward))
        return groups

    async def task_durations(self, task_ids: Iterable[str]) -> dict[str, tuple[float, int]]:
        """Per task id: (mean wall seconds, attempts) over the attempts that ended
        normally (done, failed or timed out) in any run of this store."""
        ids = list(dict.fromkeys(task_ids))
        out: dict[str, tuple[float, int]] = {}
        for start in range(0, len(ids), 500):  # SQLite's host-parameter limit
            chunk = ids[start : start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self._fetch(
                "SELECT r.task_id, AVG(a.finished_at - a.started_at), COUNT(*)"
                " FROM rollouts r JOIN attempts a ON a.rollout_id = r.id"
                f" WHERE r.task_id IN ({marks}) AND a.state IN ('done', 'failed', 'timed_out')"
                " AND a.finished_at IS NOT NULL GROUP BY r.task_id",
                tuple(chunk),
            )
            out.update({r[0]: (float(r[1]), int(r[2])) for r in rows})
        return out

    async def train_steps(self, run_id: str) -> list[TrainStepRecord]:
        """The run's training steps in order, with everything recorded of each."""
        rows = await self._fetch(
            "SELECT run_id, step, data, updated_at FROM train_steps WHERE run_id=? ORDER BY step",
            (run_id,),
        )
        return [
            TrainStepRecord(run_id=r[0], step=r[1], data=orjson.loads(r[2]), updated_at=r[3])
            for r in rows
        ]

    async def count_messages(self, run_id: str | None = None) -> int:
        if run_id is None:
            rows = await self._fetch("SELECT COUNT(*) FROM messages")
        else:
            rows = await self._fetch(
                "SELECT COUNT(*) FROM messages m JOIN rollouts r ON r.num = m.rollout_num"
                " WHERE r.run_id=?",
                (run_id,),
            )
        return int(rows[0][0])
