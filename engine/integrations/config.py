"""Configuration of a training job's link to Drillyard: the colocate feed inside
the trainer and the rollout server beside it (`engine.integrations.rollout_server`).

``DRILLYARD_SWIFT_CONFIG`` names a JSON or TOML file with any of the fields
of `FeedConfig`; single ``DRILLYARD_*`` variables override it::

    DRILLYARD_STORE=train.db            trace store (SQLite file)
    DRILLYARD_RUN_ID=grpo-1             the run every turn lands in (default: new)
    DRILLYARD_ENV=secret_word           registered environment name
    DRILLYARD_ENV_CONFIG='{"...": 1}'   its config (JSON)
    DRILLYARD_SCORER=exact              registered scorer name
    DRILLYARD_BACKEND=inprocess         where environments run
    DRILLYARD_BACKEND_OPTIONS='{}'      backend options (JSON)
    DRILLYARD_TEXT_TOOL=say             send plain replies to this tool
    DRILLYARD_SYSTEM_PROMPT='...'       system prompt of every sample
    DRILLYARD_CURRICULUM=webarena       turn-budget preset, or JSON
    DRILLYARD_MAX_ATTEMPTS=3            environment attempts before a sample is masked
    DRILLYARD_TIMINGS=timings.jsonl     per-step rollout / training seconds

The rollout server (server mode) also reads::

    DRILLYARD_POLICY_URLS=http://127.0.0.1:8000/v1[,…]   the vLLM servers of the policy
    DRILLYARD_MODEL=qwen                model name they serve
    DRILLYARD_MAX_TURNS=8               turn budget (the curriculum's, when one is set)
    DRILLYARD_MAX_ROLLOUTS=256          rollouts in flight
    DRILLYARD_MAX_STALENESS=1           policy versions a rollout may lag its training step
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from engine.errors import ConfigError

CONFIG_VAR = "DRILLYARD_SWIFT_CONFIG"

_VARS: dict[str, tuple[str, str]] = {
    # env var -> (field, kind)
    "DRILLYARD_STORE": ("store", "str"),
    "DRILLYARD_RUN_ID": ("run_id", "str"),
    "DRILLYARD_ENV": ("environment", "str"),
    "DRILLYARD_ENV_CONFIG": ("env_config", "json"),
    "DRILLYARD_SCORER": ("scorer", "str"),
    "DRILLYARD_BACKEND": ("backend", "str"),
    "DRILLYARD_BACKEND_OPTIONS": ("backend_options", "json"),
    "DRILLYARD_TEXT_TOOL": ("text_tool", "str"),
    "DRILLYARD_SYSTEM_PROMPT": ("system_prompt", "str"),
    "DRILLYARD_CURRICULUM": ("curriculum", "json_or_str"),
    "DRILLYARD_MAX_ATTEMPTS": ("max_attempts", "int"),
    "DRILLYARD_RETRY_BACKOFF": ("retry_backoff", "float"),
    "DRILLYARD_STEP_TIMEOUT": ("step_timeout", "float"),
    "DRILLYARD_TIMINGS": ("timings", "str"),
    "DRILLYARD_POLICY_URLS": ("policy_urls", "csv"),
    "DRILLYARD_MODEL": ("model", "str"),
    "DRILLYARD_MAX_TURNS": ("max_turns", "int"),
    "DRILLYARD_MAX_ROLLOUTS": ("max_rollouts", "int"),
    "DRILLYARD_MAX_STALENESS": ("max_staleness", "int"),
}


@dataclass(slots=True)
class FeedConfig:
    """Where turns are recorded, which environment and scorer, how faults are retried."""

    store: str = "drillyard-train.db"
    run_id: str | None = None
    environment: str = "arithmetic"
    env_config: dict[str, Any] = field(default_factory=dict)
    scorer: str = "exact"
    backend: str = "inprocess"
    backend_options: dict[str, Any] = field(default_factory=dict)
    text_tool: str | None = None
    system_prompt: str | None = None
    curriculum: Any = None
    max_attempts: int = 3
    retry_backoff: float = 0.2
    step_timeout: float = 120.0
    timings: str | None = None
    # server mode: the rollout server generates with the policy on these vLLM servers
    policy_urls: list[str] = field(default_factory=list)
    model: str | None = None
    api_key: str | None = None
    max_turns: int | None = None
    max_rollouts: int = 256
    max_model_requests: int = 256
    max_staleness: int = 1
    sync_timeout: float = 600.0
    host: str = "127.0.0.1"
    port: int = 8000

    def __post_init__(self) -> None:
        for name in ("max_attempts", "max_rollouts", "max_model_requests"):
            if getattr(self, name) < 1:
                raise ConfigError(name, f"must be >= 1, got {getattr(self, name)}")
        if self.max_staleness < 0:
            raise ConfigError("max_staleness", f"must be >= 0, got {self.max_staleness}")
        if self.max_turns is not None and self.max_turns < 1:
            raise ConfigError("max_turns", f"must be >= 1, got {self.max_turns}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str = "config") -> FeedConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(where, f"unknown field(s) {unknown}", f"known: {sorted(known)}")
        return cls(**dict(data))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FeedConfig:
        """The file named by ``DRILLYARD_SWIFT_CONFIG`` (if any), then ``DRILLYARD_*`` overrides."""
        env = os.environ if environ is None else environ
        data: dict[str, Any] = {}
        path = env.get(CONFIG_VAR)
        if path:
            data.update(_read_file(Path(path)))
        for var, (name, kind) in _VARS.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            data[name] = _parse(var, raw, kind)
        return cls.from_mapping(data, path or "DRILLYARD_* variables")


def _read_file(path: Path) -> dict[str, Any]:
    where = f"{CONFIG_VAR}={path}"
    if not path.is_file():
        raise ConfigError(where, "file not found", "point it at a .json or .toml file")
    text = path.read_text()
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        fix = "use JSON (.json) or TOML (.toml)"
        raise ConfigError(where, f"cannot parse: {exc}", fix) from exc
    if not isinstance(data, dict):
        raise ConfigError(where, "the file must hold one object (a table)")
    section = data.get("drillyard", data)  # a [drillyard] table, or the top level
    if not isinstance(section, dict):
        raise ConfigError(where, "[drillyard] must be a table")
    return section


def _parse(var: str, raw: str, kind: str) -> Any:
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "json":
            return json.loads(raw)
        if kind == "json_or_str":
            return json.loads(raw) if raw.lstrip()[:1] in "{[" else raw
        if kind == "csv":
            return [part.strip() for part in raw.split(",") if part.strip()]
    except ValueError as exc:
        raise ConfigError(var, f"cannot read {raw!r}: {exc}", f"give a valid {kind}") from exc
    return raw
