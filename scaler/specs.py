"""Tool specs in: a folder (or one file) of OpenAI function schemas.

Each ``*.json`` file holds one spec or a list of them, either bare
(``{"name", "description", "parameters"}``) or wrapped (``{"type":
"function", "function": {...}}``). A spec may name its author's Python
implementation in ``"x-implementation": "package.module:function"`` (called as
``fn(state, **arguments)``). Every spec is checked: a name, a description, and
``parameters`` that is valid JSON schema (checked against the JSON Schema
meta-schema with ``jsonschema``) and an object schema. A bad spec is reported
with its file and name, and left out; the others go on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.environment import ToolSpec
from engine.errors import ConfigError
from tools.stateful.environment import check_schema

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True)
class SpecEntry:
    """One accepted tool spec, where it came from, and its author's implementation."""

    spec: ToolSpec
    source: str
    implementation: str | None = None

    @property
    def name(self) -> str:
        return str(self.spec["function"]["name"])

    @property
    def parameters(self) -> dict[str, Any]:
        params: dict[str, Any] = self.spec["function"]["parameters"]
        return params


@dataclass(slots=True)
class SpecSet:
    tools: list[SpecEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    read: int = 0  # specs found, good or bad


def _entries(data: Any) -> list[Any]:
    return data if isinstance(data, list) else [data]


def check_spec(raw: Any, where: str) -> SpecEntry:
    """One spec as a `SpecEntry`, or ConfigError naming ``where`` and the problem."""
    if not isinstance(raw, dict):
        raise ConfigError(where, f"a spec must be a JSON object, got {type(raw).__name__}")
    fn = raw.get("function") if raw.get("type") == "function" else raw
    if not isinstance(fn, dict):
        raise ConfigError(where, '"function" must be an object')
    name = fn.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(where, f"bad tool name {name!r}", "letters, digits, _ (max 64)")
    where = f"{where}: spec {name}"
    if not isinstance(fn.get("description"), str) or not fn["description"].strip():
        raise ConfigError(where, "has no description", "describe what the tool does")
    params = fn.get("parameters", {"type": "object", "properties": {}})
    check_schema(where, params)
    if params.get("type") != "object":
        raise ConfigError(where, 'parameters must be an object schema ("type": "object")')
    impl = fn.get("x-implementation")
    if impl is not None and (not isinstance(impl, str) or ":" not in impl):
        raise ConfigError(where, f"x-implementation {impl!r} is not module:function")
    clean = {k: v for k, v in fn.items() if not k.startswith("x-")}
    clean["parameters"] = params
    return SpecEntry({"type": "function", "function": clean}, where.split(": spec")[0], impl)


def load_specs(path: str | Path) -> SpecSet:
    """Every spec under ``path`` (a folder of ``*.json`` files or one file), with
    the problems of those left out. Names must be unique across the set."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(str(path), "no such file or folder", "point at the spec set")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise ConfigError(str(path), "holds no *.json spec files")
    out = SpecSet()
    seen: dict[str, str] = {}
    for file in files:
        try:
            data = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            out.problems.append(f"{file}: not readable as JSON ({exc})")
            continue
        for i, raw in enumerate(_entries(data)):
            out.read += 1
            try:
                entry = check_spec(raw, f"{file.name}#{i}")
            except ConfigError as exc:
                out.problems.append(str(exc))
                continue
            if entry.name in seen:
                out.problems.append(f"{file.name}#{i}: spec {entry.name}: name already used in "
                                    f"{seen[entry.name]} (left out)")
                continue
            seen[entry.name] = file.name
            out.tools.append(entry)
    return out
