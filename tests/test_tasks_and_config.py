"""Bad input gets an error naming the file, the line or field, and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine import ConfigError, PluginNotFound, TaskFileError, load_tasks
from engine.config import load_config
from engine.registry import declare, names, resolve


def test_a_good_task_file_loads_with_attachments(tmp_path: Path) -> None:
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    f = tmp_path / "tasks.jsonl"
    f.write_text(
        '{"id": 1, "prompt": "sum a+b", "answer": "3", "attachments": ["data.csv"],'
        ' "metadata": {"level": 2}}\n\n{"id": "x", "prompt": "p"}\n'
    )
    tasks = load_tasks(f)
    assert [t.id for t in tasks] == ["1", "x"]
    assert tasks[0].ground_truth == "3" and tasks[0].metadata == {"level": 2}
    assert Path(tasks[0].attachments[0]).read_text().startswith("a,b")
    assert "answer" not in repr(tasks[0].view())


def test_every_bad_line_is_named(tmp_path: Path) -> None:
    f = tmp_path / "tasks.jsonl"
    f.write_text(
        "\n".join(
            [
                '{"id": 1, "prompt": "ok"}',
                '{"id": 2, "prompt": "broken"',
                '{"id": 3}',
                '{"id": 4, "prompt": "p", "colour": "red"}',
                '{"id": 1, "prompt": "dup"}',
                '{"id": 5, "prompt": "p", "attachments": ["missing.pdf"]}',
                "[1, 2]",
            ]
        )
    )
    with pytest.raises(TaskFileError) as err:
        load_tasks(f)
    text = str(err.value)
    assert f"{f}:2: not valid JSON" in text
    assert f"{f}:3: field 'prompt'" in text
    assert f"{f}:4: field 'colour'" in text
    assert f"{f}:5: duplicate task id '1'" in text
    assert f"{f}:6: attachment 'missing.pdf' not found" in text
    assert f"{f}:7: expected a JSON object" in text
    assert "fix:" in text


def test_missing_and_empty_task_files(tmp_path: Path) -> None:
    with pytest.raises(TaskFileError, match="not found"):
        load_tasks(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(TaskFileError, match="no tasks"):
        load_tasks(tmp_path / "empty.jsonl")


def test_config_errors_name_the_field(tmp_path: Path) -> None:
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("samples = \n")
    with pytest.raises(ConfigError, match=r"bad.toml: not valid TOML.*line 1"):
        load_config(bad_toml)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('samples = 2\nsampels = 3\n[tasks]\nbuiltin = "arithmetic"\n')
    with pytest.raises(ConfigError, match=r"field 'sampels': Extra inputs"):
        load_config(unknown)
    no_url = tmp_path / "nourl.toml"
    no_url.write_text('[tasks]\nbuiltin = "arithmetic"\n[policy]\nkind = "openai"\n')
    with pytest.raises(ConfigError, match="needs base_url"):
        load_config(no_url)
    with pytest.raises(ConfigError, match=r"exactly one of tasks\.file"):
        load_config(None, {"samples": 2})
    cfg = load_config(None, {"tasks.builtin": "arithmetic", "samples": 4, "tasks.count": 3})
    assert cfg.samples == 4 and len(cfg.load_tasks()) == 3
    assert cfg.order == "given"
    with pytest.raises(ConfigError, match=r"field 'order'.*'given' or 'longest_first'"):
        load_config(None, {"tasks.builtin": "arithmetic", "order": "fastest"})


def test_unknown_plugin_names_list_the_known_ones() -> None:
    with pytest.raises(PluginNotFound) as err:
        resolve("backends", "nope")
    assert "inprocess" in str(err.value) and "register" in str(err.value)
    assert "arithmetic" in names("environments")


def test_a_plugin_whose_extra_is_missing_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "needs_missing_dep.py").write_text("import drillyard_missing_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    declare("backends", "needs-extra", "needs_missing_dep:Backend", extra="k8s")
    with pytest.raises(PluginNotFound) as err:
        resolve("backends", "needs-extra")
    assert "pip install 'drillyard[k8s]'" in str(err.value)
    assert "drillyard_missing_dependency_xyz" in str(err.value)
