"""A small hand-written domain for the stateful tests: notes with CRUD tools, an
author function that writes and then raises, and one task with two user turns."""

from __future__ import annotations

import copy
from typing import Any

from engine.tasks import Task


def _spec(name: str, description: str, props: dict[str, Any], required: list[str]) -> Any:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": props, "required": required}}}


TEXT = {"type": "string", "description": "the note's text"}
NOTE_ID = {"type": "string", "description": "id of the note"}
CRUD = {"kind": "crud", "table": "notes", "key": "note_id"}


def shred_note(state: dict[str, Any], note_id: str) -> Any:
    """Writes, then fails: the write must not survive."""
    state["notes"][note_id]["text"] = "shredded"
    raise RuntimeError(f"the shredder jammed on {note_id}")


DOMAIN: dict[str, Any] = {
    "name": "notes",
    "state": "json",
    "tools": [
        {"spec": _spec("create_note", "Create a note.", {"note_id": NOTE_ID, "text": TEXT},
                       ["note_id", "text"]), "impl": {**CRUD, "op": "create"}},
        {"spec": _spec("get_note", "Read a note.", {"note_id": NOTE_ID}, ["note_id"]),
         "impl": {**CRUD, "op": "read"}},
        {"spec": _spec("update_note", "Change a note's text.", {"note_id": NOTE_ID, "text": TEXT},
                       ["note_id"]), "impl": {**CRUD, "op": "update"}},
        {"spec": _spec("shred_note", "Shred a note.", {"note_id": NOTE_ID}, ["note_id"]),
         "impl": {"kind": "python", "ref": "tests.scaler.notes:shred_note"}},
    ],
}
INITIAL = {"notes": {"n-1": {"note_id": "n-1", "text": "a"},
                     "n-2": {"note_id": "n-2", "text": "b"}}}
GOLD_CALLS = [
    {"name": "create_note", "arguments": {"note_id": "n-3", "text": "c"}},
    {"name": "update_note", "arguments": {"note_id": "n-1", "text": "z"}},
    {"name": "get_note", "arguments": {"note_id": "n-3"}},
]


def final_state() -> dict[str, Any]:
    state = copy.deepcopy(INITIAL)
    state["notes"]["n-3"] = {"note_id": "n-3", "text": "c"}
    state["notes"]["n-1"]["text"] = "z"
    return state


def task(task_id: str = "notes-0") -> Task:
    """Create n-3 and change n-1 (turn 1), then read n-3 (turn 2, from the simulated user)."""
    return Task(task_id, "Please create note n-3 saying 'c', then change n-1 to 'z'.",
                {"calls": GOLD_CALLS, "final_state": final_state()},
                metadata={"domain": "notes", "initial_state": INITIAL,
                          "user_turns": ["One more thing: please also read note n-3."]})
