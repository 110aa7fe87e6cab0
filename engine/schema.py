"""The trace store's schema, as numbered migrations (``PRAGMA user_version``).

Messages are keyed by the rollout's integer ``num`` (not its text id): an
integer key doubles insert speed, and ingest is the store's hot path.

Add a migration by appending ``(N + 1, "SQL…")``; never edit a released one.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str]] = [
    (
        1,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            created_at REAL NOT NULL,
            finished_at REAL,
            status TEXT NOT NULL,
            config TEXT NOT NULL,
            code_version TEXT NOT NULL
        );
        CREATE TABLE tasks (
            run_id TEXT NOT NULL REFERENCES runs(id),
            task_id TEXT NOT NULL,
            ord INTEGER NOT NULL,
            data TEXT NOT NULL,
            PRIMARY KEY (run_id, task_id)
        ) WITHOUT ROWID;
        CREATE TABLE rollouts (
            num INTEGER PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            run_id TEXT NOT NULL REFERENCES runs(id),
            task_id TEXT NOT NULL,
            sample_index INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            state TEXT NOT NULL,
            reward REAL,
            answer TEXT,
            error TEXT,
            turns INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            started_at REAL,
            finished_at REAL,
            backend TEXT,
            worker TEXT,
            policy_version TEXT,
            UNIQUE (run_id, task_id, sample_index)
        );
        CREATE INDEX rollouts_by_state ON rollouts(run_id, state);
        CREATE TABLE attempts (
            rollout_id TEXT NOT NULL REFERENCES rollouts(id),
            attempt INTEGER NOT NULL,
            state TEXT NOT NULL,
            error TEXT,
            worker TEXT,
            started_at REAL NOT NULL,
            finished_at REAL,
            PRIMARY KEY (rollout_id, attempt)
        ) WITHOUT ROWID;
        CREATE TABLE messages (
            rollout_num INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            attempt INTEGER NOT NULL,
            sender TEXT NOT NULL,
            receiver TEXT NOT NULL,
            category TEXT NOT NULL,
            topic TEXT NOT NULL,
            priority INTEGER NOT NULL,
            headers TEXT,
            payload TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (rollout_num, seq)
        );
        """,
    ),
    (
        2,
        """
        -- the mean duration of a task across runs, for ordering a new run's rollouts
        CREATE INDEX rollouts_by_task ON rollouts(task_id, state);
        """,
    ),
    (
        3,
        """
        -- one row per training step of a run: what the rollout server and the
        -- trainer measured (rollout, training and weight-sync seconds, lag), as JSON
        CREATE TABLE train_steps (
            run_id TEXT NOT NULL REFERENCES runs(id),
            step INTEGER NOT NULL,
            data TEXT NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (run_id, step)
        ) WITHOUT ROWID;
        """,
    ),
    (
        4,
        """
        -- the viewer's pages of a run's rollouts by number (keyset on num, the rowid):
        -- a range of this index, not a sort of the whole run
        CREATE INDEX rollouts_by_run ON rollouts(run_id);
        """,
    ),
]

SCHEMA_VERSION = MIGRATIONS[-1][0]
