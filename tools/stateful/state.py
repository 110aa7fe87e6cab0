"""The per-rollout state a stateful environment's tools read and write.

Two kinds, one interface:

- `JsonState`: a JSON document ``{table: {key: row}}`` (any JSON object works;
  tables of rows are what the CRUD generator and the diff understand);
- `SqliteState`: an in-memory SQLite database built from a schema (``CREATE
  TABLE …`` statements) and the task's rows, one fresh database per reset.

Both give a fresh copy on every `reset` (rollouts never see each other's
writes), run each tool call as a transaction (`call`: a call that raises
leaves the state as it was), and describe the state as plain JSON
(`snapshot`) so a scorer can compare it with the gold state. `diff` names what
one call changed; the environment records it with the call.
"""

from __future__ import annotations

import copy
import json
import sqlite3
from collections.abc import Callable
from typing import Any

from engine.errors import ConfigError

Snapshot = dict[str, Any]


def canonical(value: Any) -> Any:
    """``value`` as plain JSON (tuples → lists, keys → strings), for comparison."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


class JsonState:
    """A JSON document; tools get the live ``dict`` and may change it in place."""

    kind = "json"

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def reset(self, initial: Any) -> None:
        if initial is None:
            initial = {}
        if not isinstance(initial, dict):
            raise ConfigError("initial_state", f"a JSON state must be an object, got "
                              f"{type(initial).__name__}", 'give {"table": {"key": {...}}}')
        self.data = canonical(initial)

    @property
    def handle(self) -> dict[str, Any]:
        return self.data

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(document)``; on an exception the document is put back."""
        before = copy.deepcopy(self.data)
        try:
            result = fn(self.data)
            self.data = canonical(self.data)  # a tool must leave plain JSON behind
        except BaseException:
            self.data = before
            raise
        return result

    def replace(self, document: Any) -> None:
        """Take a whole new document (from an implementation run in the jail)."""
        if not isinstance(document, dict):
            raise TypeError(f"the state must stay a JSON object, got {type(document).__name__}")
        self.data = canonical(document)

    def snapshot(self) -> Snapshot:
        copy_: Snapshot = canonical(self.data)
        return copy_

    def close(self) -> None:
        self.data = {}


class SqliteState:
    """An in-memory SQLite database per rollout: ``schema`` is SQL, rows come
    from the task's initial state ``{table: [row, …]}``; tools get the
    `sqlite3.Connection`."""

    kind = "sqlite"

    def __init__(self, schema: str) -> None:
        if not schema.strip():
            raise ConfigError("domain state", "a sqlite state needs a schema",
                              'set "schema": "CREATE TABLE …;" in the domain')
        self.schema = schema
        self.db: sqlite3.Connection | None = None

    def reset(self, initial: Any) -> None:
        self.close()
        db = sqlite3.connect(":memory:", isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            db.executescript(self.schema)
        except sqlite3.Error as exc:
            db.close()
            raise ConfigError("domain schema", f"the SQL does not run: {exc}", None) from exc
        for table, rows in (initial or {}).items():
            for row in rows:
                cols = ", ".join(f'"{c}"' for c in row)
                marks = ", ".join("?" for _ in row)
                db.execute(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', list(row.values()))
        self.db = db

    @property
    def handle(self) -> sqlite3.Connection:
        if self.db is None:
            raise RuntimeError("the state was not reset")
        return self.db

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(connection)`` inside a savepoint; an exception rolls it back."""
        db = self.handle
        db.execute("SAVEPOINT tool_call")
        try:
            result = fn(db)
        except BaseException:
            db.execute("ROLLBACK TO tool_call")
            db.execute("RELEASE tool_call")
            raise
        db.execute("RELEASE tool_call")
        if isinstance(result, sqlite3.Row):
            result = dict(result)
        elif isinstance(result, list) and result and isinstance(result[0], sqlite3.Row):
            result = [dict(r) for r in result]
        return result

    def replace(self, document: Any) -> None:
        raise ConfigError("domain state", "an implementation run in the jail needs a JSON state",
                          'use "state": "json" for a domain with policy-written tools')

    def snapshot(self) -> Snapshot:
        db = self.handle
        out: Snapshot = {}
        names = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' "
            "ORDER BY name")]
        for name in names:
            rows = [dict(r) for r in db.execute(f'SELECT * FROM "{name}"')]
            out[name] = sorted(canonical(rows), key=lambda r: json.dumps(r, sort_keys=True))
        return out

    def close(self) -> None:
        if self.db is not None:
            self.db.close()
            self.db = None


State = JsonState | SqliteState


def make_state(kind: str, schema: str | None = None) -> State:
    if kind == "json":
        return JsonState()
    if kind == "sqlite":
        return SqliteState(schema or "")
    raise ConfigError("domain state", f"unknown state kind {kind!r}", 'use "json" or "sqlite"')


def _rows(table: Any) -> list[str]:
    """A table's rows as canonical JSON strings (a dict of rows or a list of rows)."""
    if isinstance(table, dict):
        return sorted(json.dumps({"key": k, "row": v}, sort_keys=True) for k, v in table.items())
    if isinstance(table, list):
        return sorted(json.dumps(r, sort_keys=True) for r in table)
    return [json.dumps(table, sort_keys=True)]


def diff(before: Snapshot, after: Snapshot) -> list[dict[str, Any]]:
    """What changed between two snapshots, table by table: rows added and removed
    (an updated row is one of each). Empty when the call only read."""
    changes: list[dict[str, Any]] = []
    for table in sorted(set(before) | set(after)):
        old, new = _rows(before.get(table, {})), _rows(after.get(table, {}))
        if old == new:
            continue
        added = sorted(set(new) - set(old))
        removed = sorted(set(old) - set(new))
        changes.append({"table": table, "added": [json.loads(r) for r in added],
                        "removed": [json.loads(r) for r in removed]})
    return changes
