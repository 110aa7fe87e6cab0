"""Read GAIA in its official layout into `engine.Task`s.

    DIR/2023/validation/metadata.jsonl   (or metadata.parquet, read with pyarrow)
    DIR/2023/validation/<attachments>
    DIR/2023/test/metadata.jsonl

Each row: ``task_id``, ``Question``, ``Level`` (1-3, int or digit string),
``Final answer`` ("?" on the test split: unknown, kept as None),
``file_name`` ("" when none; resolved to a path beside the metadata file),
``Annotator Metadata`` (kept as ``metadata["_annotator"]``, driver-only). Every bad line is
reported with its file, line number, field and a fix; every missing
attachment is reported before a run can start.

`Task.metadata` holds ``level``, ``split``, ``file_name`` and ``_annotator``.
The annotator's steps may spell out the answer: the ``gaia`` environment
forwards only ``level`` and ``file_name`` to its tools.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from engine.errors import TaskFileError
from engine.tasks import Task

UNKNOWN_ANSWER = "?"
SPLITS = ("validation", "test")
_FIX = ('each line: {"task_id": "...", "Question": "...", "Level": 1, "Final answer": "...", '
        '"file_name": "", "Annotator Metadata": {...}}')


def metadata_file(root: str | Path, split: str = "validation", year: str = "2023") -> Path:
    """Find the metadata file: ``root`` may be the dataset folder (holding
    ``2023/``), the split folder, or the metadata file itself."""
    root = Path(root)
    if root.is_file():
        return root
    for folder in (root / year / split, root / split, root):
        for name in ("metadata.jsonl", "metadata.parquet"):
            if (folder / name).is_file():
                return folder / name
    raise TaskFileError(str(root), f"no {year}/{split}/metadata.jsonl (or .parquet) under it",
                        "point --data at the GAIA download (the folder holding 2023/) "
                        "or at the split folder")


def _rows(path: Path) -> Iterable[tuple[int, Any]]:
    """(line number, parsed row or the error text) for each non-empty row."""
    if path.suffix == ".parquet":
        try:
            pq = importlib.import_module("pyarrow.parquet")
        except ImportError as exc:
            raise TaskFileError(str(path), "reading parquet needs pyarrow",
                                "pip install pyarrow, or use metadata.jsonl") from exc
        yield from enumerate(pq.read_table(str(path)).to_pylist(), start=1)
        return
    for lineno, raw in enumerate(path.read_bytes().splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            yield lineno, orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            yield lineno, f"not valid JSON ({exc})"


def _level(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 1 <= value <= 3 else None
    if isinstance(value, str) and value.strip() in ("1", "2", "3"):
        return int(value.strip())
    return None


def _task(row: dict[str, Any], where: str, folder: Path, split: str,
          problems: list[str], missing: list[str]) -> Task | None:
    bad = len(problems)
    task_id, question = row.get("task_id"), row.get("Question")
    if not isinstance(task_id, str) or not task_id.strip():
        problems.append(f"{where}: field 'task_id': missing or not a non-empty string")
    if not isinstance(question, str) or not question.strip():
        problems.append(f"{where}: field 'Question': missing or not a non-empty string")
    level = _level(row.get("Level"))
    if level is None:
        problems.append(f"{where}: field 'Level': {row.get('Level')!r} is not 1, 2 or 3")
    answer = row.get("Final answer")
    if answer is None:
        problems.append(f"{where}: field 'Final answer': missing (write \"?\" when unknown)")
    elif not isinstance(answer, str | int | float) or isinstance(answer, bool):
        problems.append(f"{where}: field 'Final answer': expected a string, got "
                        f"{type(answer).__name__}")
    file_name = row.get("file_name") or ""
    if not isinstance(file_name, str):
        problems.append(f"{where}: field 'file_name': expected a string, got "
                        f"{type(file_name).__name__}")
        file_name = ""
    annotator = row.get("Annotator Metadata") or {}
    if not isinstance(annotator, dict):
        problems.append(f"{where}: field 'Annotator Metadata': expected an object")
    if len(problems) > bad:
        return None
    attachments: tuple[str, ...] = ()
    if file_name:
        path = (folder / file_name).resolve()
        if folder.resolve() not in path.parents:
            problems.append(f"{where}: field 'file_name': {file_name!r} points outside {folder}")
            return None
        if not path.is_file():
            missing.append(f"{where}: attachment '{file_name}' not found at {path}")
        attachments = (str(path),)
    truth = None if str(answer).strip() == UNKNOWN_ANSWER else str(answer)
    metadata = {"level": level, "split": split, "file_name": file_name, "_annotator": annotator}
    return Task(str(task_id), str(question), truth, attachments, metadata)


def annotator_steps(task: Task) -> float | None:
    """The annotator's "Number of steps" for a task, or None: a start-order hint
    (``engine.run(..., order=annotator_steps)`` starts the most steps first)."""
    annotator = task.metadata.get("_annotator")
    raw = annotator.get("Number of steps") if isinstance(annotator, dict) else None
    try:
        steps = float(str(raw).strip())
    except ValueError:
        return None
    return steps if math.isfinite(steps) and steps > 0 else None


def load_gaia(root: str | Path, split: str = "validation", *, year: str = "2023",
              levels: Iterable[int] | None = None, limit: int | None = None) -> list[Task]:
    """GAIA tasks of one split, checked whole: bad lines and missing
    attachments raise `TaskFileError` listing each with file and line."""
    path = metadata_file(root, split, year)
    folder = path.parent
    tasks: list[Task] = []
    problems: list[str] = []
    missing: list[str] = []
    seen: dict[str, str] = {}
    for lineno, row in _rows(path):
        where = f"{path}:{lineno}"
        if isinstance(row, str):
            problems.append(f"{where}: {row}; each line must be one JSON object")
            continue
        if not isinstance(row, dict):
            problems.append(f"{where}: expected a JSON object, got {type(row).__name__}")
            continue
        task = _task(row, where, folder, split, problems, missing)
        if task is None:
            continue
        if task.id in seen:
            problems.append(f"{where}: duplicate task_id '{task.id}' (first at {seen[task.id]})")
            continue
        seen[task.id] = where
        tasks.append(task)
    if problems:
        raise TaskFileError(str(path), _listing(problems, "bad line(s)"), _FIX)
    if missing:
        raise TaskFileError(str(path), _listing(missing, "missing attachment(s)"),
                            "download the attachments beside metadata.jsonl, or fix file_name")
    if not tasks:
        raise TaskFileError(str(path), "the file holds no tasks", _FIX)
    if levels is not None:
        wanted = set(levels)
        tasks = [t for t in tasks if t.metadata["level"] in wanted]
    return tasks[:limit] if limit is not None else tasks


def _listing(items: list[str], what: str) -> str:
    shown = "\n  ".join(items[:20])
    more = f"\n  … and {len(items) - 20} more" if len(items) > 20 else ""
    return f"{len(items)} {what}:\n  {shown}{more}"
