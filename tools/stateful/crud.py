"""Implementations for create/read/update/delete-shaped tool specs, over either state.

A spec is CRUD-shaped when its name is ``<verb>_<entity>`` with a verb of

    create add new register    → create a row (its key given, or the next free integer)
    get read fetch show view lookup → read one row by key
    list search find           → the rows whose fields equal the given arguments
    update set change edit modify   → change the given fields of one row
    delete remove              → delete one row by key

and, except for create and list, a key parameter ``<entity>_id`` (or ``id``).
The table is the entity's plural (``order`` → ``orders``); its key field is the
key parameter's name. `crud_descriptor` recognises a spec, `run_crud` executes a
call on a `JsonState` document (``{table: {key: row}}``) or a SQLite connection.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from engine.environment import ToolSpec

VERBS = {
    "create": "create", "add": "create", "new": "create", "register": "create",
    "get": "read", "read": "read", "fetch": "read", "show": "read", "view": "read",
    "lookup": "read",
    "list": "list", "search": "list", "find": "list",
    "update": "update", "set": "update", "change": "update", "edit": "update",
    "modify": "update",
    "delete": "delete", "remove": "delete",
}
_NAME = re.compile(r"^(?P<verb>[a-z]+)_(?P<entity>[a-z][a-z0-9_]*)$")


def singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 3:
        return word[:-3] + "y"
    if word.endswith("sses") or word.endswith("xes"):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def plural(word: str) -> str:
    if word.endswith("y") and word[-2:-1] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "ch", "sh")):
        return word + "es"
    return word + "s"


def crud_descriptor(spec: ToolSpec) -> dict[str, Any] | None:
    """``{"kind": "crud", "op", "table", "key"}`` for a CRUD-shaped spec, else None."""
    fn = spec.get("function", spec)
    match = _NAME.match(str(fn.get("name", "")))
    if match is None or match["verb"] not in VERBS:
        return None
    op = VERBS[match["verb"]]
    entity = singular(match["entity"].split("_by_")[0])
    props = (fn.get("parameters") or {}).get("properties") or {}
    key = next((k for k in (f"{entity}_id", "id") if k in props), None)
    if key is None:
        if op in ("read", "update", "delete"):
            return None
        key = f"{entity}_id"
    return {"kind": "crud", "op": op, "table": plural(entity), "key": key}


def run_crud(desc: dict[str, Any], state: Any, args: dict[str, Any]) -> Any:
    """Execute one call of a CRUD tool on ``state`` (a dict document or a SQLite
    connection). Raises KeyError/ValueError with the reason the agent sees."""
    if isinstance(state, sqlite3.Connection):
        return _run_sql(desc, state, args)
    op, table_name, key = desc["op"], desc["table"], desc["key"]
    entity = singular(table_name)
    table = state.setdefault(table_name, {})
    given = {k: v for k, v in args.items() if v is not None}
    if op == "create":
        k = str(given[key]) if key in given else str(_next_key(table))
        if k in table:
            raise ValueError(f"{entity} {k} already exists")
        row = {**given, key: given.get(key, _typed(k))}
        table[k] = row
        return row
    if op == "list":
        rows = [table[k] for k in sorted(table, key=_order)]
        return [r for r in rows if all(r.get(f) == v for f, v in given.items())]
    if key not in given:
        raise ValueError(f"{key} is required")
    k = str(given[key])
    if k not in table:
        raise KeyError(f"no {entity} with {key} {given[key]!r}")
    if op == "read":
        return table[k]
    if op == "update":
        changes = {f: v for f, v in given.items() if f != key}
        if not changes:
            raise ValueError(f"nothing to update: give the fields of the {entity} to change")
        table[k].update(changes)
        return table[k]
    del table[k]  # delete
    return {"deleted": given[key]}


def _order(k: str) -> tuple[int, Any]:
    return (0, int(k)) if k.isdigit() else (1, k)


def _next_key(table: dict[str, Any]) -> int:
    numbers = [int(k) for k in table if k.isdigit()]
    return max(numbers, default=0) + 1


def _typed(k: str) -> Any:
    return int(k) if k.isdigit() else k


def _run_sql(desc: dict[str, Any], db: sqlite3.Connection, args: dict[str, Any]) -> Any:
    op, table, key = desc["op"], desc["table"], desc["key"]
    entity = singular(table)
    given = {k: v for k, v in args.items() if v is not None}

    def one(value: Any) -> dict[str, Any] | None:
        row = db.execute(f'SELECT * FROM "{table}" WHERE "{key}" = ?', (value,)).fetchone()
        return dict(row) if row is not None else None

    if op == "create":
        if key in given and one(given[key]) is not None:
            raise ValueError(f"{entity} {given[key]} already exists")
        cols = ", ".join(f'"{c}"' for c in given)
        marks = ", ".join("?" for _ in given)
        cur = db.execute(f'INSERT INTO "{table}" ({cols}) VALUES ({marks})', list(given.values()))
        made = one(given[key]) if key in given else dict(db.execute(
            f'SELECT * FROM "{table}" WHERE rowid = ?', (cur.lastrowid,)).fetchone())
        return made
    if op == "list":
        where = " AND ".join(f'"{c}" = ?' for c in given) or "1"
        rows = db.execute(f'SELECT * FROM "{table}" WHERE {where} ORDER BY "{key}"',
                          list(given.values()))
        return [dict(r) for r in rows]
    if key not in given:
        raise ValueError(f"{key} is required")
    row = one(given[key])
    if row is None:
        raise KeyError(f"no {entity} with {key} {given[key]!r}")
    if op == "read":
        return row
    if op == "update":
        changes = {f: v for f, v in given.items() if f != key}
        if not changes:
            raise ValueError(f"nothing to update: give the fields of the {entity} to change")
        sets = ", ".join(f'"{c}" = ?' for c in changes)
        db.execute(f'UPDATE "{table}" SET {sets} WHERE "{key}" = ?',
                   [*changes.values(), given[key]])
        return one(given[key])
    db.execute(f'DELETE FROM "{table}" WHERE "{key}" = ?', (given[key],))
    return {"deleted": given[key]}
