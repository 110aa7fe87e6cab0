"""The trace store's write side: one sqlite3 connection on one thread of its own.

`TraceStore` gathers writes into a `Batch` on the event loop; `SqliteWriter`
commits a whole batch in one transaction with one hop to its thread (the
statements of a batch run back to back there, not one loop round trip each).
Opening (pragmas, numbered migrations) and closing run on that thread too, so
the connection is only ever touched by it.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from engine.errors import ConfigError
from engine.schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")

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

_INSERT_TASKS = "INSERT OR IGNORE INTO tasks(run_id, task_id, ord, data) VALUES (?,?,?,?)"
_INSERT_ROLLOUTS = (
    "INSERT INTO rollouts(num, id, run_id, task_id, sample_index, attempt, state,"
    " turns, created_at, backend) VALUES (?,?,?,?,?,?,?,?,?,?)"
)
_UPSERT_ATTEMPTS = (
    "INSERT INTO attempts(rollout_id, attempt, state, error, worker, started_at,"
    " finished_at) VALUES (?,?,?,?,?,?,?)"
    " ON CONFLICT(rollout_id, attempt) DO UPDATE"
    " SET state=excluded.state, error=excluded.error, worker=excluded.worker,"
    " finished_at=excluded.finished_at"
)
INSERT_MESSAGES = (
    "INSERT INTO messages(rollout_num, seq, attempt, sender, receiver, category,"
    " topic, priority, headers, payload, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


def _settle(fut: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if fut.done():  # the caller was cancelled meanwhile
        return
    if error is not None:
        fut.set_exception(error)
    else:
        fut.set_result(result)


class Batch:
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


_Job = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]] | None


class SqliteWriter:
    """The store's writing connection, used only from its own thread.

    The thread is a daemon of its own (not an executor's): it still takes work
    while the interpreter exits, so a store closed from an ``atexit`` hook (a
    trainer's plugin) still commits what it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="drillyard-store-writer",
                                        daemon=True)  # fmt: skip
        self._thread.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, args, fut = job
            try:
                result, error = fn(*args), None
            except BaseException as exc:
                result, error = None, exc
            # a closed loop (RuntimeError): nobody waits for this any more
            with contextlib.suppress(RuntimeError):
                fut.get_loop().call_soon_threadsafe(_settle, fut, result, error)

    async def _run(self, fn: Callable[..., Any], *args: Any) -> Any:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._jobs.put((fn, args, fut))
        return await fut

    async def open(self) -> int:
        """Connect, apply the pragmas and migrations; the next free rollout number."""
        next_num: int = await self._run(self._open)
        return next_num

    async def commit(self, batch: Batch) -> None:
        """Commit ``batch`` in one transaction (rolled back whole on failure)."""
        await self._run(self._commit, batch)

    async def close(self) -> None:
        """Close the connection and stop the thread."""
        try:
            await self._run(self._close)
        finally:
            self._jobs.put(None)

    # ---- on the writer's thread --------------------------------------------

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            for pragma in WRITER_PRAGMAS:
                db.execute(f"PRAGMA {pragma}")
            self._migrate(db)
            (top,) = db.execute("SELECT COALESCE(MAX(num), 0) FROM rollouts").fetchone()
        except BaseException:
            db.close()
            raise
        self._db = db
        return int(top) + 1

    def _migrate(self, db: sqlite3.Connection) -> None:
        (current,) = db.execute("PRAGMA user_version").fetchone()
        if current > SCHEMA_VERSION:
            raise ConfigError(
                str(self.path),
                f"store has schema version {current}, this drillyard knows {SCHEMA_VERSION}",
                "upgrade drillyard to read this store",
            )
        for version, script in MIGRATIONS:
            if version > current:
                db.executescript(f"BEGIN;\n{script}\nPRAGMA user_version={version};\nCOMMIT;")

    def _commit(self, b: Batch) -> None:
        db = self._db
        assert db is not None, "the writer is not open"
        db.execute("BEGIN IMMEDIATE")  # the write lock now, waited for: shards share the file
        try:
            for sql, params in b.runs:
                db.execute(sql, params)
            if b.tasks:
                db.executemany(_INSERT_TASKS, b.tasks)
            if b.rollout_inserts:
                db.executemany(_INSERT_ROLLOUTS, b.rollout_inserts)
            if b.attempts:
                db.executemany(_UPSERT_ATTEMPTS, list(b.attempts.values()))
            if b.messages:
                db.executemany(INSERT_MESSAGES, b.messages)
            # one statement per set of updated columns, not one per rollout
            by_columns: dict[tuple[str, ...], list[tuple[Any, ...]]] = {}
            for rollout_id, fields in b.rollout_updates.items():
                by_columns.setdefault(tuple(fields), []).append((*fields.values(), rollout_id))
            for columns, rows in by_columns.items():
                cols = ", ".join(f"{k}=?" for k in columns)
                db.executemany(f"UPDATE rollouts SET {cols} WHERE id=?", rows)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()
