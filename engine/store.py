"""The trace store: SQLite in WAL mode, one batching writer, reads through aiosqlite.

Writes are enqueued without waiting (`record`, `update_rollout`, …) and one
writer task commits them in batches (every ``flush_interval`` seconds or every
``batch_size`` rows, one transaction a batch, handed to the writer's own
thread in one hop: `engine.store_writer`). `commit` is a barrier: it
returns once everything enqueued before it is on disk. A rollout's terminal
state is enqueued after its messages and so can never be committed before
them. Reads go through a second connection and see committed data only.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

import aiosqlite
import orjson

from engine import prompt_ids
from engine.errors import ConfigError, StoreNotOpen
from engine.messages import Message
from engine.records import (
    MESSAGE_COLUMNS,
    AttemptRecord,
    RolloutRecord,
    RunRecord,
    TrainStepRecord,
    columns,
    from_row,
    message_from_row,
)
from engine.store_writer import WRITER_PRAGMAS, Batch, SqliteWriter
from engine.tasks import Task

__all__ = [
    "RESULT_STATES",
    "STORE_TRANSITIONS",
    "WRITER_PRAGMAS",
    "AttemptRecord",
    "RolloutRecord",
    "RunRecord",
    "StoreNotOpen",
    "StoreState",
    "TraceStore",
    "TrainStepRecord",
]

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


class StoreState(StrEnum):
    """Where a `TraceStore` is in its life; every public call checks it."""

    NEW = "new"
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"  # flushing what was enqueued; nothing new may be
    CLOSED = "closed"


_S = StoreState
STORE_TRANSITIONS: dict[StoreState, frozenset[StoreState]] = {
    _S.NEW: frozenset({_S.OPENING}),
    _S.OPENING: frozenset({_S.OPEN, _S.CLOSED}),  # a failed open ends closed
    _S.OPEN: frozenset({_S.CLOSING}),
    _S.CLOSING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset({_S.OPENING}),  # a closed store may be opened again
}
_READABLE = frozenset({_S.OPEN, _S.CLOSING})


class TraceStore:
    """Every run, rollout, attempt and message, in one SQLite file.

    Use as an async context manager: ``async with TraceStore("runs.db") as store:``.
    Its life is ``new → opening → open → closing → closed`` (`STORE_TRANSITIONS`):
    writes and `commit` need it open and raise `StoreNotOpen` otherwise (a
    `commit` while it closes waits for the close's flush, which covers it);
    reads need it open or closing.
    """

    def __init__(
        self, path: str | Path, *, flush_interval: float = 0.02, batch_size: int = 2000
    ) -> None:
        self.path = Path(path)
        self.flush_interval = flush_interval
        self.batch_size = batch_size
        self.state = StoreState.NEW
        self._db: SqliteWriter | None = None
        self._reader: aiosqlite.Connection | None = None
        self._batch = Batch()
        self._wake = asyncio.Event()  # something is enqueued
        self._urgent = asyncio.Event()  # flush now: a barrier, a full batch, closing
        self._writer: asyncio.Task[None] | None = None
        self._closed: asyncio.Event | None = None  # set when a close has finished
        self._close_error: BaseException | None = None
        self._failure: BaseException | None = None
        self._nums: dict[str, int] = {}
        self._next_num = 1
        self.rows_written = 0
        self.batches_written = 0

    # ---- lifecycle -------------------------------------------------------

    def _move(self, new: StoreState) -> None:
        if new not in STORE_TRANSITIONS[self.state]:
            raise StoreNotOpen(f"trace store {self.path}: cannot go from {self.state} to {new}")
        self.state = new

    def _not_open(self, what: str) -> StoreNotOpen:
        if self.state in (_S.CLOSING, _S.CLOSED):
            why = (
                "it is closing" if self.state is _S.CLOSING else "it was closed"
            ) + "; what was enqueued before close() is committed, nothing after"
        else:
            why = f"it is {self.state}, not open yet"
        return StoreNotOpen(
            f"trace store {self.path}: {what} needs an open store, and {why} (fix: write "
            "inside `async with TraceStore(...)` or `async with Engine(...)`, before it ends)"
        )

    def _writable(self, what: str) -> None:
        """Checked before every enqueue: the hot path, so kept to two checks."""
        if self.state is not _S.OPEN:
            raise self._not_open(what)
        if self._failure is not None:
            raise RuntimeError(f"trace store writer failed: {self._failure!r}") from self._failure

    async def open(self) -> TraceStore:
        """Open both connections, migrate the schema, start the writer."""
        if self.state is _S.OPEN:
            raise StoreNotOpen(f"trace store {self.path} is already open")
        self._move(_S.OPENING)
        try:
            await self._connect()
        except BaseException:
            await self._disconnect()
            self._move(_S.CLOSED)
            raise
        self._batch = Batch()
        self._wake, self._urgent = asyncio.Event(), asyncio.Event()
        self._closed, self._close_error, self._failure = asyncio.Event(), None, None
        self._writer = asyncio.create_task(self._write_loop(), name="drillyard-store-writer")
        self._writer.add_done_callback(self._writer_ended)
        self._move(_S.OPEN)
        return self

    async def _connect(self) -> None:
        self._db = SqliteWriter(self.path)
        self._next_num = await self._db.open()
        self._reader = await aiosqlite.connect(self.path, isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        await self._reader.execute("PRAGMA busy_timeout=10000")

    async def _disconnect(self) -> None:
        reader, writer, self._reader, self._db = self._reader, self._db, None, None
        try:
            if reader is not None:
                await reader.close()
        finally:
            if writer is not None:
                await writer.close()

    async def close(self) -> None:
        """Flush everything enqueued, stop the writer, close both connections.

        Idempotent; a second close while the first runs waits for it."""
        if self.state in (_S.NEW, _S.CLOSED):
            return
        if self.state is _S.CLOSING:
            assert self._closed is not None
            await self._closed.wait()
            return
        if self.state is _S.OPENING:
            raise StoreNotOpen(f"trace store {self.path}: close() while it is still opening")
        flushed: asyncio.Future[None] | None = None
        if self._writer is not None and not self._writer.done() and self._failure is None:
            flushed = self._barrier()
        self._move(_S.CLOSING)
        try:
            if flushed is not None:
                await flushed
        except BaseException as exc:
            self._close_error = exc
            raise
        finally:
            self._wake.set()
            self._urgent.set()
            if self._writer is not None and not self._writer.done():
                await asyncio.gather(self._writer, return_exceptions=True)
            await self._disconnect()
            self._move(_S.CLOSED)
            assert self._closed is not None
            self._closed.set()

    async def __aenter__(self) -> TraceStore:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await asyncio.shield(self.close())

    # ---- the writer ------------------------------------------------------

    def _enqueued(self) -> None:
        """Called after every enqueue: wake the writer, now if the batch is full."""
        self._wake.set()
        if len(self._batch.messages) >= self.batch_size:
            self._urgent.set()

    def _writer_ended(self, task: asyncio.Task[None]) -> None:
        """However the writer ended (closed, failed, cancelled with its loop), no
        barrier waits for it any more: a commit can never hang on a dead writer."""
        if self.state is not _S.CLOSING and self._failure is None:
            self._failure = (task.exception() if not task.cancelled() else None) or RuntimeError(
                "the writer task stopped (its event loop was cancelled or closed)"
            )
        for fut in self._batch.barriers:
            if not fut.done():
                fut.set_exception(RuntimeError(f"trace store writer stopped: {self._failure!r}"))
        self._batch.barriers.clear()

    async def _write_loop(self) -> None:
        assert self._db is not None
        while True:
            await self._wake.wait()
            if not self._urgent.is_set():
                # gather a batch for up to flush_interval; cut short when urgent
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.flush_interval):
                        await self._urgent.wait()
            self._wake.clear()
            self._urgent.clear()
            batch, self._batch = self._batch, Batch()
            if batch.rows() or batch.barriers:
                try:
                    await self._db.commit(batch)
                except BaseException as exc:
                    self._failure = exc
                    for fut in batch.barriers + self._batch.barriers:
                        if not fut.done():
                            fut.set_exception(RuntimeError(f"trace store write failed: {exc!r}"))
                    raise
                self.rows_written += batch.rows()
                self.batches_written += 1
                for fut in batch.barriers:
                    if not fut.done():
                        fut.set_result(None)
            if self.state is _S.CLOSING and not self._batch.rows() and not self._batch.barriers:
                return

    async def commit(self) -> None:
        """Wait until everything enqueued so far is committed.

        On a store that is closing, waits for the close (its flush covers
        everything enqueued); on one that is not open, raises `StoreNotOpen`."""
        if self.state is _S.CLOSING:
            assert self._closed is not None
            await self._closed.wait()
            if self._close_error is not None:
                raise RuntimeError(
                    f"trace store close failed: {self._close_error!r}"
                ) from self._close_error
            return
        self._writable("commit()")
        await self._barrier()

    def _barrier(self) -> asyncio.Future[None]:
        """A future set once everything enqueued so far is committed."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._batch.barriers.append(fut)
        self._wake.set()
        self._urgent.set()
        return fut

    # ---- enqueue ---------------------------------------------------------

    def record(self, msg: Message) -> None:
        """Enqueue one message."""
        self.append(
            msg.rollout_id, msg.seq, msg.attempt, msg.sender, msg.receiver, msg.category,
            msg.topic, msg.payload, msg.headers, msg.created_at, msg.priority,
        )  # fmt: skip

    def append(
        self,
        rollout_id: str,
        seq: int,
        attempt: int,
        sender: str,
        receiver: str,
        category: str,
        topic: str,
        payload: dict[str, Any],
        headers: dict[str, Any],
        created_at: float,
        priority: int = 0,
    ) -> None:
        """Enqueue one message given by its fields (`record` without the `Message`: the
        recorder's path, which has no use for the object)."""
        self._writable("record()")
        self._batch.messages.append(
            (
                self._nums[rollout_id],
                seq,
                attempt,
                sender,
                receiver,
                str(category),
                topic,
                priority,
                _dumps(headers) if headers else None,
                _dumps(payload),
                created_at,
            )
        )
        self._enqueued()

    def update_rollout(self, rollout_id: str, **fields: Any) -> None:
        """Enqueue new values for a rollout's columns (merged with earlier ones in the batch)."""
        self._writable("update_rollout()")
        if not _ROLLOUT_FIELDS.issuperset(fields):  # no set built on the hot path
            raise ValueError(f"unknown rollout fields: {sorted(set(fields) - _ROLLOUT_FIELDS)}")
        self._batch.rollout_updates.setdefault(rollout_id, {}).update(fields)
        self._enqueued()

    def record_attempt(self, a: AttemptRecord) -> None:
        self._writable("record_attempt()")
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
        self._writable("create_run()")
        self._batch.runs.append(
            (
                "INSERT INTO runs(id, created_at, status, config, code_version) VALUES (?,?,?,?,?)",
                (run_id, time.time(), "running", _dumps(config), code_version),
            )
        )
        self._enqueued()

    def record_train_step(self, run_id: str, step: int, **data: Any) -> None:
        """Enqueue measurements of a training step, merged into what it already holds."""
        self._writable("record_train_step()")
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
        self._writable("set_run_status()")
        finished = time.time() if status != "running" else None
        self._batch.runs.append(
            ("UPDATE runs SET status=?, finished_at=? WHERE id=?", (status, finished, run_id))
        )
        self._enqueued()

    def add_tasks(self, run_id: str, tasks: Iterable[Task]) -> None:
        self._writable("add_tasks()")
        self._batch.tasks.extend(
            (run_id, t.id, i, _dumps(t.to_dict())) for i, t in enumerate(tasks)
        )
        self._enqueued()

    def add_rollout(
        self, rollout_id: str, run_id: str, task_id: str, sample_index: int, backend: str
    ) -> None:
        self._writable("add_rollout()")
        num = self._next_num
        self._next_num += 1
        self._nums[rollout_id] = num
        self._batch.rollout_inserts.append(
            (num, rollout_id, run_id, task_id, sample_index, 0, "queued", 0, time.time(), backend)
        )
        self._enqueued()

    # ---- reads -----------------------------------------------------------

    async def _fetch(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        if self.state not in _READABLE or self._reader is None:
            raise self._not_open("reading")
        async with self._reader.execute(sql, params) as cur:
            return list(await cur.fetchall())

    _RUN_COLS = columns(RunRecord)
    _ROLLOUT_COLS = columns(RolloutRecord)

    async def runs(self) -> list[RunRecord]:
        rows = await self._fetch(f"SELECT {self._RUN_COLS} FROM runs ORDER BY created_at")
        return [RunRecord.from_row(r) for r in rows]

    async def run(self, run_id: str) -> RunRecord:
        rows = await self._fetch(f"SELECT {self._RUN_COLS} FROM runs WHERE id=?", (run_id,))
        if not rows:
            known = ", ".join(r.id for r in await self.runs()) or "none"
            raise ConfigError(f"{self.path}", f"no run '{run_id}' in this store", f"runs: {known}")
        return RunRecord.from_row(rows[0])

    async def tasks(self, run_id: str) -> list[Task]:
        rows = await self._fetch("SELECT data FROM tasks WHERE run_id=? ORDER BY ord", (run_id,))
        return [Task.from_dict(orjson.loads(r["data"])) for r in rows]

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
        return [from_row(RolloutRecord, r) for r in rows]

    async def rollout(self, rollout_id: str) -> RolloutRecord:
        rows = await self._fetch(
            f"SELECT {self._ROLLOUT_COLS} FROM rollouts WHERE id=?", (rollout_id,)
        )
        if not rows:
            raise KeyError(rollout_id)
        return from_row(RolloutRecord, rows[0])

    async def unfinished(self, run_id: str) -> list[RolloutRecord]:
        """Rollouts without a result yet: what `resume` runs again (and may now write to)."""
        states = tuple(RESULT_STATES)
        rows = await self._fetch(
            f"SELECT num, {self._ROLLOUT_COLS} FROM rollouts WHERE run_id=? AND state NOT IN"
            f" ({','.join('?' * len(states))}) ORDER BY task_id, sample_index",
            (run_id, *states),
        )
        for r in rows:
            self._nums[r["id"]] = r["num"]
        return [from_row(RolloutRecord, r) for r in rows]

    async def attempts(self, rollout_id: str) -> list[AttemptRecord]:
        rows = await self._fetch(
            f"SELECT {columns(AttemptRecord)} FROM attempts WHERE rollout_id=? ORDER BY attempt",
            (rollout_id,),
        )
        return [from_row(AttemptRecord, r) for r in rows]

    async def messages(self, rollout_id: str, category: str | None = None) -> list[Message]:
        """A rollout's messages in order (all attempts); model replies with their
        whole prompt token ids (recorded once: `engine.prompt_ids`)."""
        sql = (
            f"SELECT {MESSAGE_COLUMNS} FROM messages m"
            " JOIN rollouts r ON r.num = m.rollout_num WHERE r.id=?"
        )
        params: tuple[Any, ...] = (rollout_id,)
        if category is not None:
            sql += " AND m.category=?"
            params += (category,)
        rows = await self._fetch(sql + " ORDER BY m.seq", params)
        return prompt_ids.expand(message_from_row(r) for r in rows)

    async def next_seqs(self, run_id: str) -> dict[str, int]:
        """For every rollout of a run, the seq its next message gets."""
        rows = await self._fetch(
            "SELECT r.id AS id, COALESCE(MAX(m.seq) + 1, 0) AS next_seq FROM rollouts r"
            " LEFT JOIN messages m ON m.rollout_num = r.num WHERE r.run_id=? GROUP BY r.id",
            (run_id,),
        )
        return {r["id"]: int(r["next_seq"]) for r in rows}

    async def rewards_by_group(self, run_id: str) -> dict[str, list[tuple[str, float | None]]]:
        """For each task (GRPO group): ``[(state, reward), …]`` by sample index."""
        rows = await self._fetch(
            "SELECT task_id, state, reward FROM rollouts WHERE run_id=?"
            " ORDER BY task_id, sample_index",
            (run_id,),
        )
        groups: dict[str, list[tuple[str, float | None]]] = {}
        for r in rows:
            groups.setdefault(r["task_id"], []).append((r["state"], r["reward"]))
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
                "SELECT r.task_id AS task_id, AVG(a.finished_at - a.started_at) AS mean_s,"
                " COUNT(*) AS n FROM rollouts r JOIN attempts a ON a.rollout_id = r.id"
                f" WHERE r.task_id IN ({marks}) AND a.state IN ('done', 'failed', 'timed_out')"
                " AND a.finished_at IS NOT NULL GROUP BY r.task_id",
                tuple(chunk),
            )
            out.update({r["task_id"]: (float(r["mean_s"]), int(r["n"])) for r in rows})
        return out

    async def train_steps(self, run_id: str) -> list[TrainStepRecord]:
        """The run's training steps in order, with everything recorded of each."""
        rows = await self._fetch(
            f"SELECT {columns(TrainStepRecord)} FROM train_steps WHERE run_id=? ORDER BY step",
            (run_id,),
        )
        return [TrainStepRecord.from_row(r) for r in rows]

    async def count_messages(self, run_id: str | None = None) -> int:
        if run_id is None:
            rows = await self._fetch("SELECT COUNT(*) AS n FROM messages")
        else:
            rows = await self._fetch(
                "SELECT COUNT(*) AS n FROM messages m JOIN rollouts r ON r.num = m.rollout_num"
                " WHERE r.run_id=?",
                (run_id,),
            )
        return int(rows[0]["n"])

    async def state_counts(self, run_id: str) -> dict[str, int]:
        """How many of a run's rollouts are in each state."""
        rows = await self._fetch(
            "SELECT state, COUNT(*) AS n FROM rollouts WHERE run_id=?"
            " GROUP BY state ORDER BY state",
            (run_id,),
        )
        return {r["state"]: int(r["n"]) for r in rows}
