"""What the trace store holds, as named records: one dataclass per kind of row.

Rows are read by column name, never by position: a query's rows come as
`sqlite3.Row` and `from_row` fills a record's fields from the columns of the
same names (JSON columns decoded by the caller). `columns` writes the select
list for a record, so a query and its record cannot drift apart. The store
(`engine.store`) and the viewer (`engine.view.queries`) read through these.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from dataclasses import dataclass
from typing import Any, Self, TypeVar

import orjson

from engine.messages import Category, Message

T = TypeVar("T")


@dataclass(slots=True)
class RunRecord:
    """One run: how it was started (``config``), its status and times."""

    id: str
    created_at: float
    finished_at: float | None
    status: str
    config: dict[str, Any]
    code_version: str

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Self:
        return from_row(cls, row, config=orjson.loads(row["config"]))


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

    @classmethod
    def queued(cls, rollout_id: str, run_id: str, task_id: str, sample_index: int) -> RolloutRecord:
        """The record of a rollout just added to the store (`TraceStore.add_rollout`)."""
        return cls(
            id=rollout_id,
            run_id=run_id,
            task_id=task_id,
            sample_index=sample_index,
            attempt=0,
            state="queued",
            reward=None,
            answer=None,
            error=None,
            turns=0,
            created_at=time.time(),
            started_at=None,
            finished_at=None,
            backend=None,
            worker=None,
            policy_version=None,
        )


@dataclass(slots=True)
class AttemptRecord:
    """One attempt of a rollout: how it ended, where it ran, when."""

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

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Self:
        return from_row(cls, row, data=orjson.loads(row["data"]))


_FIELDS: dict[type[Any], tuple[str, ...]] = {}


def field_names(cls: type[Any]) -> tuple[str, ...]:
    """A record class's field names, in order."""
    names = _FIELDS.get(cls)
    if names is None:
        names = _FIELDS[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def columns(cls: type[Any], table: str = "") -> str:
    """The select list of a record: its fields as columns (of ``table``, when given)."""
    prefix = f"{table}." if table else ""
    return ", ".join(prefix + name for name in field_names(cls))


def from_row(cls: type[T], row: sqlite3.Row, **decoded: Any) -> T:
    """A record from a row's columns of the same names; ``decoded`` overrides columns
    (the JSON ones, once parsed). A missing column raises IndexError naming it."""
    return cls(**{n: decoded[n] if n in decoded else row[n] for n in field_names(cls)})


MESSAGE_COLUMNS = (
    "r.run_id AS run_id, r.id AS rollout_id, m.seq AS seq, m.attempt AS attempt,"
    " m.sender AS sender, m.receiver AS receiver, m.category AS category, m.topic AS topic,"
    " m.payload AS payload, m.headers AS headers, m.priority AS priority,"
    " m.created_at AS created_at"
)
"""The select list of a `Message`, from ``messages m JOIN rollouts r ON r.num = m.rollout_num``."""


def message_from_row(row: sqlite3.Row) -> Message:
    """A `Message` from a row selected with `MESSAGE_COLUMNS`."""
    headers = row["headers"]
    return from_row(
        Message,
        row,
        category=Category(row["category"]),
        payload=orjson.loads(row["payload"]),
        headers=orjson.loads(headers) if headers else {},
    )
