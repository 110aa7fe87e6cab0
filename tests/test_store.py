"""The trace store: schema versions, the batching writer, the read queries."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from engine import Category, ConfigError, Message, Task, TraceStore
from engine.errors import StoreNotOpen
from engine.schema import MIGRATIONS, SCHEMA_VERSION
from engine.store import STORE_TRANSITIONS, StoreState

pytestmark = pytest.mark.anyio


async def test_a_new_store_is_migrated_to_the_current_schema(store_path: Path) -> None:
    async with TraceStore(store_path):
        pass
    conn = sqlite3.connect(store_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"runs", "tasks", "rollouts", "attempts", "messages"} <= tables
    assert conn.execute("PRAGMA page_size").fetchone()[0] == 8192
    conn.close()


async def test_a_store_of_an_older_schema_is_migrated_and_keeps_its_rows(
    store_path: Path,
) -> None:
    conn = sqlite3.connect(store_path)
    conn.executescript(MIGRATIONS[0][1])  # a store written by schema version 1
    conn.execute("INSERT INTO runs VALUES ('old', 0, 0, 'finished', '{}', 'v1')")
    conn.execute("INSERT INTO rollouts(num, id, run_id, task_id, sample_index, attempt, state,"
                 " created_at) VALUES (1, 'old.0', 'old', 't1', 0, 1, 'done', 0)")  # fmt: skip
    conn.execute("INSERT INTO attempts VALUES ('old.0', 1, 'done', NULL, 'w', 10.0, 12.5)")
    conn.commit()
    conn.execute("PRAGMA user_version=1")
    conn.close()
    async with TraceStore(store_path) as store:
        assert (await store.run("old")).status == "finished"
        assert await store.task_durations(["t1", "t2"]) == {"t1": (2.5, 1)}
    conn = sqlite3.connect(store_path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "rollouts_by_task" in indexes
    conn.close()


async def test_a_store_from_a_newer_drillyard_is_refused(store_path: Path) -> None:
    conn = sqlite3.connect(store_path)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(ConfigError, match="upgrade drillyard"):
        async with TraceStore(store_path):
            pass


async def test_writes_are_batched_and_visible_after_commit(store_path: Path) -> None:
    async with TraceStore(store_path, flush_interval=60) as store:
        store.create_run("r", {"samples": 2}, "test")
        store.add_tasks(
            "r", [Task("t1", "p1", "a1", metadata={"level": 1}), Task("t2", "p2", "a2")]
        )
        store.add_rollout("r.0", "r", "t1", 0, "inprocess")
        store.add_rollout("r.1", "r", "t1", 1, "inprocess")
        for seq in range(5):
            store.record(
                Message("r", "r.0", seq, 1, "a", "b", Category.MODEL_REPLY, "t", {"i": seq})
            )
        store.update_rollout("r.0", state="done", reward=1.0)
        store.update_rollout("r.1", state="failed", reward=0.0)
        assert store.rows_written == 0  # nothing flushed yet: a 60 s batching window
        await store.commit()
        assert store.batches_written == 1
        assert [m.payload["i"] for m in await store.messages("r.0")] == [0, 1, 2, 3, 4]
        assert [m.id for m in await store.messages("r.0")][:2] == ["r.0:0", "r.0:1"]
        assert [r.id for r in await store.rollouts("r", state="done")] == ["r.0"]
        assert await store.rewards_by_group("r") == {"t1": [("done", 1.0), ("failed", 0.0)]}
        assert [t.ground_truth for t in await store.tasks("r")] == ["a1", "a2"]
        assert (await store.next_seqs("r")) == {"r.0": 5, "r.1": 0}
        assert (await store.run("r")).config == {"samples": 2}
        with pytest.raises(ConfigError, match="no run 'nope'"):
            await store.run("nope")


async def test_close_flushes_what_was_enqueued(store_path: Path) -> None:
    async with TraceStore(store_path, flush_interval=60) as store:
        store.create_run("r", {}, "test")
        store.add_rollout("r.0", "r", "t", 0, "x")
        store.record(Message("r", "r.0", 0, 1, "a", "b", Category.STATE, "starting"))
    async with TraceStore(store_path) as store:
        assert len(await store.messages("r.0")) == 1
        assert await store.count_messages("r") == 1


# ---- the store's life: new → opening → open → closing → closed -------------------


def _one_message(store: TraceStore, seq: int = 0) -> None:
    store.record(Message("r", "r.0", seq, 1, "a", "b", Category.STATE, "starting"))


async def test_a_commit_on_a_closed_store_raises_at_once_instead_of_waiting(
    store_path: Path,
) -> None:
    store = TraceStore(store_path)
    async with store:
        store.create_run("r", {}, "test")
        store.add_rollout("r.0", "r", "t", 0, "x")
    assert store.state is StoreState.CLOSED
    with anyio.fail_after(1):
        with pytest.raises(StoreNotOpen, match=r"commit\(\) needs an open store.*was closed"):
            await store.commit()
    for write in (
        lambda: _one_message(store),
        lambda: store.update_rollout("r.0", state="done"),
        lambda: store.create_run("r2", {}, "test"),
        lambda: store.add_rollout("r.1", "r", "t", 1, "x"),
        lambda: store.set_run_status("r", "finished"),
    ):
        with pytest.raises(StoreNotOpen, match="was closed"):
            write()
    with pytest.raises(StoreNotOpen, match="reading needs an open store"):
        await store.runs()


async def test_a_store_not_yet_open_refuses_writes_reads_and_commits(store_path: Path) -> None:
    store = TraceStore(store_path)
    assert store.state is StoreState.NEW
    with pytest.raises(StoreNotOpen, match="it is new, not open yet"):
        store.create_run("r", {}, "test")
    with anyio.fail_after(1):
        with pytest.raises(StoreNotOpen, match="not open yet"):
            await store.commit()
    with pytest.raises(StoreNotOpen, match="not open yet"):
        await store.rollouts("r")
    await store.close()  # closing a store never opened is nothing to do
    assert store.state is StoreState.NEW


async def test_a_write_while_closing_raises_and_a_commit_while_closing_waits_for_the_flush(
    store_path: Path,
) -> None:
    store = TraceStore(store_path, flush_interval=60)
    await store.open()
    store.create_run("r", {}, "test")
    store.add_rollout("r.0", "r", "t", 0, "x")
    _one_message(store)
    outcomes: list[str] = []

    async def meanwhile() -> None:
        assert store.state is StoreState.CLOSING
        try:
            _one_message(store, 1)
        except StoreNotOpen as exc:
            outcomes.append(f"write refused: {exc}")
        await store.commit()  # returns once the close has flushed what came before it
        outcomes.append(f"commit returned with the store {store.state}")

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.close)
        while store.state is not StoreState.CLOSING:  # the close has begun
            await anyio.lowlevel.checkpoint()
        tg.start_soon(meanwhile)
    assert outcomes[0].startswith("write refused") and "is closing" in outcomes[0]
    assert outcomes[1] == "commit returned with the store closed"
    async with TraceStore(store_path) as again:
        assert [m.seq for m in await again.messages("r.0")] == [0]


async def test_a_closed_store_opens_again_and_keeps_numbering(store_path: Path) -> None:
    store = TraceStore(store_path)
    async with store:
        store.create_run("r", {}, "test")
        store.add_rollout("r.0", "r", "t", 0, "x")
        _one_message(store)
    async with store:
        assert store.state is StoreState.OPEN
        store.add_rollout("r.1", "r", "t", 1, "x")
        store.record(Message("r", "r.1", 0, 1, "a", "b", Category.STATE, "starting"))
        await store.commit()
        assert [m.rollout_id for m in await store.messages("r.1")] == ["r.1"]
        assert [m.rollout_id for m in await store.messages("r.0")] == ["r.0"]
        with pytest.raises(StoreNotOpen, match="already open"):
            await store.open()
    await store.close()  # twice is fine
    assert store.state is StoreState.CLOSED
    assert [(a, b) for a, b in STORE_TRANSITIONS.items() if StoreState.CLOSED in b] == [
        (StoreState.OPENING, frozenset({StoreState.OPEN, StoreState.CLOSED})),
        (StoreState.CLOSING, frozenset({StoreState.CLOSED})),
    ]


def test_a_store_whose_event_loop_ended_raises_on_commit_instead_of_hanging(
    store_path: Path,
) -> None:
    """Opened under one `asyncio.run`, used under another: the first loop's end
    took the writer with it, so a commit must fail fast, not wait forever."""
    store = TraceStore(store_path)
    asyncio.run(store.open())

    async def later() -> str:
        with anyio.fail_after(1):
            try:
                await store.commit()
            except RuntimeError as exc:
                return str(exc)
            finally:
                await store.close()
        return "committed"

    assert "writer task stopped" in asyncio.run(later())
    assert store.state is StoreState.CLOSED
