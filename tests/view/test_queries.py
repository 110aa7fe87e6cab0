"""The viewer's reads: keyset pages that cover everything once, grouped fault reasons,
pass@k ks, and stores it refuses. Stores are written through the real TraceStore."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine import Category, ConfigError, Message, TraceStore
from engine.schema import SCHEMA_VERSION
from engine.store import AttemptRecord
from engine.view import StoreReader
from engine.view.queries import reason_key
from engine.view.summary import ks_for, parse_ks, slice_keys

pytestmark = pytest.mark.anyio


async def write_store(path: Path, runs: int, rollouts: int, messages: int) -> None:
    async with TraceStore(path) as store:
        for run in range(runs):
            run_id = f"run{run:03d}"
            store.create_run(run_id, {"samples": 2}, "test")
            for i in range(rollouts):
                rid = f"{run_id}.{i}"
                store.add_rollout(rid, run_id, f"t{i // 2}", i % 2, "inprocess")
                for seq in range(messages):
                    store.record(Message(run_id, rid, seq, 1, "a", "b", Category.STATE, "x"))
                error = f"lost worker 10.0.0.{i}:80{i}" if i % 3 == 0 else None
                state = "error" if error else "done"
                store.record_attempt(AttemptRecord(rid, 1, state, error, "w", 1.0, 2.0))
                store.update_rollout(
                    rid, state=state, error=error, reward=1.0 if not error else None
                )
        await store.commit()


async def test_keyset_pages_cover_every_row_once_in_order(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await write_store(path, runs=3, rollouts=250, messages=7)
    async with StoreReader(path) as q:
        runs, cursor = [], None
        while page := await q.runs(before=cursor, limit=2):
            runs += [r.id for r in page]
            cursor = (page[-1].created_at, page[-1].id)
        assert runs == ["run002", "run001", "run000"]  # newest first
        nums: list[int] = []
        after = 0
        while page := await q.rollouts("run001", after=after, limit=64):
            nums += [r.num for r in page]
            after = page[-1].num
        assert nums == sorted(nums) and len(nums) == len(set(nums)) == 250
        assert {r.run_id for r in await q.rollouts("run001", after=nums[0] - 1)} == {"run001"}
        errors = await q.rollouts("run001", state="error", limit=1000)
        assert len(errors) == 84 and all(r.state == "error" for r in errors)
        seqs: list[int] = []
        last = -1
        while page := await q.messages(nums[5], after=last, limit=3):
            seqs += [m.seq for m in page]
            last = page[-1].seq
        assert seqs == list(range(7))


async def test_faults_group_by_reason_with_digits_folded(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    await write_store(path, runs=1, rollouts=30, messages=1)
    async with StoreReader(path) as q:
        (lost,) = await q.error_reasons("run000")
    assert (lost.state, lost.rollouts, lost.attempts, lost.variants) == ("error", 10, 10, 10)
    assert lost.reason.startswith("lost worker 10.0.0.") and lost.example is not None
    assert reason_key("lost worker 10.0.0.1:801\ntrace") == "lost worker #.#.#.#:#"


def test_ks_go_up_to_the_samples() -> None:
    assert ks_for(1) == [1] and ks_for(6) == [1, 2, 4, 6] and ks_for(8) == [1, 2, 4, 8]
    assert parse_ks("3,9,x", 8) == [1, 2, 4, 8]  # bad input falls back
    assert parse_ks("3,5", 8) == [3, 5] and parse_ks("9", 8) == [1, 2, 4, 8]
    meta = {f"t{i}": {"level": 1 + i % 3, "id": f"x{i}", "tags": ["a"]} for i in range(9)}
    assert slice_keys(meta) == ["level"]  # not an id-like key, not a list


async def test_what_is_not_a_store_is_refused_and_never_created(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no trace store at this path"):
        await StoreReader(tmp_path / "missing.db").open()
    assert not (tmp_path / "missing.db").exists()
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises(ConfigError, match="not a trace store"):
        await StoreReader(junk).open()
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE x (a)").connection.close()
    with pytest.raises(ConfigError, match="no schema version"):
        await StoreReader(empty).open()
    newer = tmp_path / "newer.db"
    db = sqlite3.connect(newer)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(ConfigError, match="this drillyard knows"):
        await StoreReader(newer).open()


async def test_a_store_written_before_the_viewers_index_still_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    await write_store(path, runs=1, rollouts=10, messages=2)
    db = sqlite3.connect(path)
    db.execute("DROP INDEX rollouts_by_run")
    db.execute("PRAGMA user_version=2")
    db.close()
    async with StoreReader(path) as q:  # read-only: it does not migrate, it reads
        assert len(await q.rollouts("run000")) == 10
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    db.close()
