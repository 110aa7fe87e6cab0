"""The viewer's reads: a read-only connection to the store and one query per question.

Every query is bounded: aggregates run in SQLite, lists are keyset-paginated
(rollouts by ``num``, messages by ``seq``, runs by ``created_at``, groups by
task id), and no query reads a whole run's messages. The connection is opened
with ``mode=ro``, so the viewer can never write to a store a run is writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite
import orjson

from engine.errors import ConfigError
from engine.messages import Message
from engine.recording import TERMINAL, RolloutState
from engine.records import (
    MESSAGE_COLUMNS,
    AttemptRecord,
    RolloutRecord,
    RunRecord,
    columns,
    from_row,
    message_from_row,
)
from engine.resources import AsyncResource
from engine.schema import SCHEMA_VERSION

SCORED_STATES = ("done", "failed", "timed_out")
"""States counted in pass@k's n, as `engine.api.Run.pass_at_k` counts them."""
STATES = tuple(str(s) for s in RolloutState)
"""Every rollout state, in the order pages show them."""
_FAULT_STATES = tuple(sorted(str(s) for s in TERMINAL - {RolloutState.DONE}))
_MARKS = ",".join("?" * len(SCORED_STATES))


@dataclass(slots=True)
class RunRow(RunRecord):
    """A run as the store holds it."""

    @property
    def samples(self) -> int:
        return int(self.config.get("samples") or 1)


@dataclass(slots=True)
class GroupStat:
    """One GRPO group (a task's samples) reduced to what pass@k and the spread need."""

    task_id: str
    rollouts: int
    scored: int  # in SCORED_STATES
    correct: int  # done with reward >= the threshold
    rewarded: int  # scored with a reward
    min_reward: float | None
    max_reward: float | None
    mean_reward: float | None


@dataclass(slots=True)
class ErrorReason:
    """Faults that read alike (digits aside), with how many rollouts ended with one."""

    state: str
    reason: str  # the commonest exact text
    rollouts: int  # rollouts whose final state and error this is
    attempts: int  # attempts that ended so, retried ones included
    variants: int  # distinct exact texts grouped here
    example: str | None  # a rollout id that shows it


@dataclass(slots=True)
class AttemptSpan:
    """One attempt on the timeline."""

    state: str
    worker: str | None
    started_at: float
    finished_at: float | None


@dataclass(slots=True)
class WorkerStat:
    worker: str | None
    attempts: int
    errors: int
    mean_s: float | None
    max_s: float | None


@dataclass(slots=True)
class RolloutRow(RolloutRecord):
    """A rollout as the store holds it, with its number (the key of its messages)."""

    num: int = 0

    @property
    def seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


@dataclass(slots=True)
class RolloutTotals:
    messages: int
    model_replies: int
    tool_calls: int
    prompt_tokens: int | None
    completion_tokens: int | None
    last_seq: int | None


_ROLLOUT_COLS = columns(RolloutRow)
_RUN_COLS = columns(RunRow)
_MESSAGES = f"SELECT {MESSAGE_COLUMNS} FROM messages m JOIN rollouts r ON r.num = m.rollout_num"
_DIGITS = re.compile(r"\d+")


def reason_key(error: str) -> str:
    """What groups fault texts: the first line, digits folded (ports, ids, counts)."""
    first = error.strip().splitlines()[0] if error.strip() else ""
    return _DIGITS.sub("#", first)[:300]


def store_uri(path: Path) -> str:
    """A read-only SQLite URI for ``path``."""
    return "file:" + quote(str(path.resolve())) + "?mode=ro"


class StoreReader(AsyncResource):
    """A read-only view of a trace store: ``async with StoreReader("runs.db") as q:``.

    ``snapshot()`` runs a page's queries in one read transaction, so the
    numbers on a page agree with each other while a run keeps writing.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> StoreReader:
        await self.open()
        return self

    async def open(self) -> None:
        if not self.path.is_file():
            raise ConfigError(
                str(self.path),
                "no trace store at this path",
                "pass --store with the file a run wrote (default drillyard.db)",
            )
        try:
            db = await aiosqlite.connect(store_uri(self.path), uri=True, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(str(self.path), f"cannot open the store: {exc}") from exc
        db.row_factory = sqlite3.Row
        try:
            await db.execute("PRAGMA busy_timeout=10000")
            version = await self._scalar_on(db, "PRAGMA user_version")
        except sqlite3.DatabaseError as exc:
            await db.close()
            raise ConfigError(str(self.path), f"not a trace store: {exc}") from exc
        if not version or int(version) > SCHEMA_VERSION:
            await db.close()
            problem = (
                "not a Drillyard trace store (no schema version)"
                if not version
                else f"store has schema version {version}, this drillyard knows {SCHEMA_VERSION}"
            )
            raise ConfigError(
                str(self.path),
                problem,
                "open a store a run wrote, with the drillyard that wrote it or a newer one",
            )
        self._db = db

    async def aclose(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    @contextlib.asynccontextmanager
    async def snapshot(self) -> AsyncIterator[None]:
        """One read transaction for the queries inside (pages are served one at a time)."""
        async with self._lock:
            db = self._conn()
            await db.execute("BEGIN")
            try:
                yield
            finally:
                await db.execute("COMMIT")

    def _conn(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("the store reader is not open: use `async with StoreReader(...)`")
        return self._db

    @staticmethod
    async def _scalar_on(db: aiosqlite.Connection, sql: str, params: Iterable[Any] = ()) -> Any:
        async with db.execute(sql, tuple(params)) as cur:
            row = await cur.fetchone()
        return row[0] if row is not None else None

    async def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        async with self._conn().execute(sql, tuple(params)) as cur:
            return list(await cur.fetchall())

    # ---- runs ------------------------------------------------------------

    async def runs(
        self, *, before: tuple[float, str] | None = None, limit: int = 50
    ) -> list[RunRow]:
        """Runs, newest first, ``limit`` at a time (keyset: ``(created_at, id) < before``)."""
        cursor = before if before is not None else (float("inf"), "")
        rows = await self._rows(
            f"SELECT {_RUN_COLS} FROM runs"
            " WHERE (created_at, id) < (?, ?) ORDER BY created_at DESC, id DESC LIMIT ?",
            (*cursor, limit),
        )
        return [RunRow.from_row(r) for r in rows]

    async def run(self, run_id: str) -> RunRow | None:
        rows = await self._rows(f"SELECT {_RUN_COLS} FROM runs WHERE id=?", (run_id,))
        return RunRow.from_row(rows[0]) if rows else None

    async def run_ids(self, limit: int = 500) -> list[str]:
        """Run ids, newest first (for choosing a run to compare with)."""
        rows = await self._rows("SELECT id FROM runs ORDER BY created_at DESC LIMIT ?", (limit,))
        return [r["id"] for r in rows]

    async def state_counts(self, run_ids: list[str]) -> dict[str, dict[str, int]]:
        """Per run: rollouts in each state (index-only, on ``rollouts_by_state``)."""
        out: dict[str, dict[str, int]] = {rid: {} for rid in run_ids}
        for start in range(0, len(run_ids), 500):
            chunk = run_ids[start : start + 500]
            rows = await self._rows(
                "SELECT run_id, state, COUNT(*) AS n FROM rollouts"
                f" WHERE run_id IN ({','.join('?' * len(chunk))}) GROUP BY run_id, state",
                chunk,
            )
            for r in rows:
                out[r["run_id"]][r["state"]] = r["n"]
        return out

    # ---- groups, pass@k, rewards ------------------------------------------

    async def group_stats(self, run_id: str, threshold: float = 1.0) -> list[GroupStat]:
        """Every group (task) of a run, by task id, reduced in SQLite."""
        rows = await self._rows(
            "SELECT task_id, COUNT(*) AS rollouts,"
            f" SUM(state IN ({_MARKS})) AS scored,"
            " SUM(state = 'done' AND reward >= ?) AS correct,"
            f" COUNT(reward) FILTER (WHERE state IN ({_MARKS})) AS rewarded,"
            f" MIN(reward) FILTER (WHERE state IN ({_MARKS})) AS min_reward,"
            f" MAX(reward) FILTER (WHERE state IN ({_MARKS})) AS max_reward,"
            f" AVG(reward) FILTER (WHERE state IN ({_MARKS})) AS mean_reward"
            " FROM rollouts WHERE run_id=? GROUP BY task_id ORDER BY task_id",
            (*SCORED_STATES, threshold, *SCORED_STATES * 4, run_id),
        )
        return [
            GroupStat(
                task_id=r["task_id"],
                rollouts=r["rollouts"],
                scored=r["scored"] or 0,
                correct=r["correct"] or 0,
                rewarded=r["rewarded"] or 0,
                min_reward=r["min_reward"],
                max_reward=r["max_reward"],
                mean_reward=r["mean_reward"],
            )
            for r in rows
        ]

    async def task_metadata(self, run_id: str) -> dict[str, dict[str, Any]]:
        """Per task, its public metadata (keys starting with ``_`` are driver-only)."""
        rows = await self._rows(
            "SELECT task_id, json_extract(data, '$.metadata') AS meta FROM tasks WHERE run_id=?",
            (run_id,),
        )
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            meta = orjson.loads(r["meta"]) if r["meta"] else {}
            out[r["task_id"]] = {k: v for k, v in meta.items() if not k.startswith("_")}
        return out

    async def task(self, run_id: str, task_id: str) -> dict[str, Any] | None:
        """A task as stored, ground truth included: only for a page that was asked for it."""
        rows = await self._rows(
            "SELECT data FROM tasks WHERE run_id=? AND task_id=?", (run_id, task_id)
        )
        return dict(orjson.loads(rows[0]["data"])) if rows else None

    async def group(self, run_id: str, task_id: str, limit: int = 256) -> list[RolloutRow]:
        """The samples of one group, by sample index."""
        rows = await self._rows(
            f"SELECT {_ROLLOUT_COLS} FROM rollouts WHERE run_id=? AND task_id=?"
            " ORDER BY sample_index LIMIT ?",
            (run_id, task_id, limit),
        )
        return [from_row(RolloutRow, r) for r in rows]

    # ---- faults ------------------------------------------------------------

    async def error_reasons(self, run_id: str) -> list[ErrorReason]:
        """Faults of a run grouped by state and `reason_key`, commonest first."""
        marks = ",".join("?" * len(_FAULT_STATES))
        final = await self._rows(
            "SELECT state, error, COUNT(*) AS n, MIN(id) AS example FROM rollouts"
            f" WHERE run_id=? AND state IN ({marks}) GROUP BY state, error",
            (run_id, *_FAULT_STATES),
        )
        tried = await self._rows(
            "SELECT a.state, a.error, COUNT(*) AS n, MIN(a.rollout_id) AS example"
            " FROM rollouts r JOIN attempts a ON a.rollout_id = r.id"
            f" WHERE r.run_id=? AND a.state IN ({marks}) GROUP BY a.state, a.error",
            (run_id, *_FAULT_STATES),
        )
        groups: dict[tuple[str, str], ErrorReason] = {}
        texts: dict[tuple[str, str], dict[str, int]] = {}
        for rows, field in ((final, "rollouts"), (tried, "attempts")):
            for r in rows:
                text = r["error"] or "(no reason recorded)"
                key = (r["state"], reason_key(text))
                g = groups.setdefault(key, ErrorReason(r["state"], text, 0, 0, 0, r["example"]))
                setattr(g, field, getattr(g, field) + r["n"])
                seen = texts.setdefault(key, {})
                seen[text] = seen.get(text, 0) + r["n"]
        for key, g in groups.items():
            seen = texts[key]
            g.reason = max(seen, key=lambda t: (seen[t], t))
            g.variants = len(seen)
        return sorted(groups.values(), key=lambda g: (-g.rollouts, -g.attempts, g.state, g.reason))

    # ---- time --------------------------------------------------------------

    async def attempt_spans(self, run_id: str, limit: int = 20_000) -> list[AttemptSpan]:
        """A run's attempts for the timeline: all of them, or the first ``limit`` by start."""
        sql = (
            "SELECT a.state, a.worker, a.started_at, a.finished_at FROM rollouts r"
            " JOIN attempts a ON a.rollout_id = r.id WHERE r.run_id=?"
        )
        if await self.attempt_count(run_id) > limit:  # else no sort: the chart sorts by worker
            sql += " ORDER BY a.started_at LIMIT ?"
        rows = await self._rows(sql, (run_id, limit) if "LIMIT" in sql else (run_id,))
        return [
            AttemptSpan(r["state"], r["worker"], r["started_at"], r["finished_at"]) for r in rows
        ]

    async def attempt_count(self, run_id: str) -> int:
        return int(
            await self._scalar_on(
                self._conn(),
                "SELECT COUNT(*) FROM rollouts r JOIN attempts a ON a.rollout_id = r.id"
                " WHERE r.run_id=?",
                (run_id,),
            )
        )

    async def finished_times(self, run_id: str, start: float, bucket: float) -> dict[int, int]:
        """Attempts that ended per ``bucket`` seconds since ``start`` (bucket index -> count)."""
        rows = await self._rows(
            "SELECT CAST((a.finished_at - ?) / ? AS INTEGER) AS b, COUNT(*) AS n"
            " FROM rollouts r JOIN attempts a ON a.rollout_id = r.id"
            " WHERE r.run_id=? AND a.finished_at IS NOT NULL GROUP BY b",
            (start, bucket, run_id),
        )
        return {int(r["b"]): int(r["n"]) for r in rows}

    async def time_range(self, run_id: str) -> tuple[float | None, float | None]:
        """The first attempt's start and the last attempt's end (or start) of a run."""
        rows = await self._rows(
            "SELECT MIN(a.started_at) AS lo, MAX(COALESCE(a.finished_at, a.started_at)) AS hi"
            " FROM rollouts r JOIN attempts a ON a.rollout_id = r.id WHERE r.run_id=?",
            (run_id,),
        )
        return (rows[0]["lo"], rows[0]["hi"]) if rows else (None, None)

    async def workers(self, run_id: str) -> list[WorkerStat]:
        rows = await self._rows(
            "SELECT a.worker, COUNT(*) AS attempts, SUM(a.state = 'error') AS errors,"
            " AVG(a.finished_at - a.started_at) AS mean_s,"
            " MAX(a.finished_at - a.started_at) AS max_s"
            " FROM rollouts r JOIN attempts a ON a.rollout_id = r.id WHERE r.run_id=?"
            " GROUP BY a.worker ORDER BY a.worker",
            (run_id,),
        )
        return [WorkerStat(**dict(r)) for r in rows]

    # ---- rollouts ----------------------------------------------------------

    async def rollouts(
        self,
        run_id: str,
        *,
        after: int | None = None,
        limit: int = 100,
        state: str | Sequence[str] | None = None,
        task_id: str | None = None,
    ) -> list[RolloutRow]:
        """A page of a run's rollouts by number (keyset: ``num > after``), or of one
        task's rollouts (a group) by sample index (``sample_index > after``)."""
        key = "num" if task_id is None else "sample_index"
        sql = f"SELECT {_ROLLOUT_COLS} FROM rollouts WHERE run_id=?"
        params: list[Any] = [run_id]
        if after is not None:
            sql += f" AND {key} > ?"
            params.append(after)
        if state is not None:
            states = (state,) if isinstance(state, str) else tuple(state)
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params.extend(states)
        if task_id is not None:
            sql += " AND task_id=?"
            params.append(task_id)
        rows = await self._rows(sql + f" ORDER BY {key} LIMIT ?", (*params, limit))
        return [from_row(RolloutRow, r) for r in rows]

    async def rollout(self, rollout_id: str) -> RolloutRow | None:
        rows = await self._rows(f"SELECT {_ROLLOUT_COLS} FROM rollouts WHERE id=?", (rollout_id,))
        return from_row(RolloutRow, rows[0]) if rows else None

    async def attempts(self, rollout_id: str) -> list[AttemptRecord]:
        rows = await self._rows(
            f"SELECT {columns(AttemptRecord)} FROM attempts WHERE rollout_id=? ORDER BY attempt",
            (rollout_id,),
        )
        return [from_row(AttemptRecord, r) for r in rows]

    async def messages(
        self, rollout_num: int, *, after: int = -1, limit: int = 500
    ) -> list[Message]:
        """A page of a rollout's messages in order (keyset: ``seq > after``)."""
        rows = await self._rows(
            f"{_MESSAGES} WHERE m.rollout_num=? AND m.seq > ? ORDER BY m.seq LIMIT ?",
            (rollout_num, after, limit),
        )
        return [message_from_row(r) for r in rows]

    async def message(self, rollout_num: int, seq: int) -> Message | None:
        sql = f"{_MESSAGES} WHERE m.rollout_num=? AND m.seq=?"
        rows = await self._rows(sql, (rollout_num, seq))
        return message_from_row(rows[0]) if rows else None

    async def rollout_totals(self, rollout_num: int) -> RolloutTotals:
        """Message and token counts of one rollout (all attempts)."""
        rows = await self._rows(
            "SELECT COUNT(*) AS messages,"
            " SUM(category = 'model_reply') AS model_replies,"
            " SUM(category = 'tool_call') AS tool_calls,"
            " SUM(CASE WHEN category = 'model_reply'"
            "     THEN json_extract(payload, '$.usage.prompt_tokens') END) AS prompt_tokens,"
            " SUM(CASE WHEN category = 'model_reply'"
            "     THEN json_extract(payload, '$.usage.completion_tokens') END)"
            "     AS completion_tokens,"
            " MAX(seq) AS last_seq FROM messages WHERE rollout_num=?",
            (rollout_num,),
        )
        r = rows[0]
        return RolloutTotals(
            messages=r["messages"],
            model_replies=r["model_replies"] or 0,
            tool_calls=r["tool_calls"] or 0,
            prompt_tokens=r["prompt_tokens"],
            completion_tokens=r["completion_tokens"],
            last_seq=r["last_seq"],
        )
