"""The GAIA loader on the bundled set and on broken files."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import pytest

from engine import Task, TaskFileError
from gaia import BUNDLED
from gaia.loader import annotator_steps, load_gaia, metadata_file
from tests.gaia.conftest import row

Writer = Callable[..., Path]
KINDS = {".xlsx", ".csv", ".pdf", ".docx", ".pptx", ".png", ".txt", ".py", ".json", ".xml"}


def test_the_bundled_set(bundled: list[Task]) -> None:
    levels = [t.metadata["level"] for t in bundled]
    assert len(bundled) >= 30 and set(levels) == {1, 2, 3}
    assert all(t.ground_truth for t in bundled)
    with_files = [t for t in bundled if t.attachments]
    assert {Path(t.attachments[0]).suffix for t in with_files} == KINDS
    for t in with_files:
        path = Path(t.attachments[0])
        assert path.is_file() and path.name == t.metadata["file_name"]
    assert all(t.metadata["_annotator"]["Steps"] for t in bundled)
    assert len({t.id for t in bundled}) == len(bundled)
    size = sum(p.stat().st_size for p in BUNDLED.rglob("*") if p.is_file()
               and {"web", "2023"} & set(p.parts))
    assert size < 2_000_000


def test_the_root_can_be_the_dataset_the_split_folder_or_the_file() -> None:
    file = BUNDLED / "2023" / "validation" / "metadata.jsonl"
    assert metadata_file(BUNDLED) == file
    assert metadata_file(file.parent) == file
    assert metadata_file(file) == file
    assert [t.id for t in load_gaia(file.parent)] == [t.id for t in load_gaia(BUNDLED)]


def test_annotator_steps_is_a_start_order_hint(bundled: list[Task]) -> None:
    steps = [annotator_steps(t) for t in bundled]
    assert all(s is not None and s >= 1 for s in steps)
    by_level = {lvl: [s for t, s in zip(bundled, steps, strict=True)
                      if t.metadata["level"] == lvl] for lvl in (1, 2, 3)}  # fmt: skip
    assert max(by_level[1]) <= min(by_level[3])  # level 3 tasks take more steps
    assert annotator_steps(Task("t", "q", "a")) is None
    odd = {"_annotator": {"Number of steps": "a few"}}
    assert annotator_steps(Task("t", "q", "a", metadata=odd)) is None


def test_filters(bundled: list[Task]) -> None:
    assert {t.metadata["level"] for t in load_gaia(BUNDLED, levels=[3])} == {3}
    assert [t.id for t in load_gaia(BUNDLED, limit=4)] == [t.id for t in bundled[:4]]


def test_test_split_question_mark_is_unknown(write_gaia: Writer) -> None:
    root = write_gaia([row("a", answer="?"), row("b", answer="?", level="2")], split="test")
    tasks = load_gaia(root, "test")
    assert [t.ground_truth for t in tasks] == [None, None]
    assert [t.metadata["level"] for t in tasks] == [1, 2]
    assert tasks[0].metadata["split"] == "test"


def test_malformed_lines_are_reported_with_file_line_and_field(write_gaia: Writer) -> None:
    root = write_gaia([
        row("ok"),
        '{"task_id": "broken", ',
        row("lvl", level=4),
        row("", question="x"),
        row("q", question=""),
        "[1, 2]",
        row("ok"),
        row("ann", **{"Annotator Metadata": "steps"}),
        {k: v for k, v in row("nofa").items() if k != "Final answer"},
        {**row("lst"), "Final answer": ["a"]},
    ])
    with pytest.raises(TaskFileError) as info:
        load_gaia(root)
    text = str(info.value)
    path = root / "2023" / "validation" / "metadata.jsonl"
    assert f"{path}:2: not valid JSON" in text
    assert f"{path}:3: field 'Level': 4 is not 1, 2 or 3" in text
    assert f"{path}:4: field 'task_id'" in text
    assert f"{path}:5: field 'Question'" in text
    assert f"{path}:6: expected a JSON object, got list" in text
    assert f"{path}:7: duplicate task_id 'ok' (first at {path}:1)" in text
    assert f"{path}:8: field 'Annotator Metadata'" in text
    assert f"{path}:9: field 'Final answer': missing (write \"?\" when unknown)" in text
    assert f"{path}:10: field 'Final answer': expected a string, got list" in text
    assert "9 bad line(s)" in text and "fix:" in text


def test_missing_attachments_are_all_reported_before_a_run(write_gaia: Writer) -> None:
    root = write_gaia([row("a", file_name="there.txt"), row("b", file_name="gone.xlsx"),
                       row("c", file_name="lost.pdf")], files={"there.txt": b"hi"})
    with pytest.raises(TaskFileError) as info:
        load_gaia(root)
    text = str(info.value)
    assert "2 missing attachment(s)" in text
    assert "metadata.jsonl:2: attachment 'gone.xlsx' not found" in text
    assert "metadata.jsonl:3: attachment 'lost.pdf' not found" in text


def test_an_attachment_may_not_point_outside_the_split_folder(write_gaia: Writer) -> None:
    root = write_gaia([row("a", file_name="../../secret.txt")])
    (root / "secret.txt").write_text("x")
    with pytest.raises(TaskFileError, match="points outside"):
        load_gaia(root)


def test_no_data_and_empty_data(tmp_path: Path, write_gaia: Writer) -> None:
    with pytest.raises(TaskFileError, match=r"no 2023/validation/metadata.jsonl"):
        load_gaia(tmp_path)
    with pytest.raises(TaskFileError, match="holds no tasks"):
        load_gaia(write_gaia([]))


@pytest.mark.skipif(importlib.util.find_spec("pyarrow") is None, reason="pyarrow not installed")
def test_parquet_metadata(tmp_path: Path) -> None:  # pragma: no cover - needs pyarrow
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "2023" / "validation"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row("p1", answer="7"), row("p2", answer="?")]),
                   folder / "metadata.parquet")
    tasks = load_gaia(tmp_path)
    assert [(t.id, t.ground_truth) for t in tasks] == [("p1", "7"), ("p2", None)]


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "2023" / "validation"
    folder.mkdir(parents=True)
    (folder / "metadata.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(__import__("sys").modules, "pyarrow.parquet", None)
    with pytest.raises(TaskFileError, match="reading parquet needs pyarrow"):
        load_gaia(tmp_path)
