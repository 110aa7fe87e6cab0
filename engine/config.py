"""Run configuration for the CLI: a TOML file and/or flags, validated whole
before anything starts; every error names the file, the field and the fix.

    store = "runs/arith.db"
    samples = 4
    scorer = "arithmetic"
    [tasks]
    builtin = "arithmetic"   # or: file = "tasks.jsonl"
    count = 20
    [environment]
    name = "arithmetic"
    [policy]
    kind = "openai"          # or "oracle" (the built-in scripted arithmetic solver)
    base_url = "http://127.0.0.1:8000/v1"   # or a list: one MultiServerPolicy over them
    model = "tiny"
    [agent]
    max_turns = 6
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from engine.agent import Agent, AnyAgent, AppAgent, function_by_name
from engine.errors import ConfigError
from engine.policy.base import Policy, SamplingParams
from engine.policy.multi import MultiServerPolicy
from engine.policy.openai import OpenAIPolicy
from engine.tasks import Task, load_tasks


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TasksConfig(_Strict):
    file: Path | None = None
    builtin: Literal["arithmetic"] | None = None
    count: int = Field(default=20, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _one_source(self) -> TasksConfig:
        if (self.file is None) == (self.builtin is None):
            raise ValueError(
                'give exactly one of tasks.file = "x.jsonl" or tasks.builtin = "arithmetic"'
            )
        return self


class EnvironmentConfig(_Strict):
    name: str = "arithmetic"
    config: dict[str, Any] = Field(default_factory=dict)


def server_urls(value: str | list[str]) -> list[str]:
    """Model server URLs from one string (comma-separated) or a list of them."""
    parts = [value] if isinstance(value, str) else value
    return [u.strip() for part in parts for u in part.split(",") if u.strip()]


class PolicyConfig(_Strict):
    kind: Literal["openai", "oracle"] = "oracle"
    base_url: str | list[str] | None = None  # several: a MultiServerPolicy over them
    model: str | None = None
    api_key_env: str | None = None
    max_in_flight: int = Field(default=64, ge=1)
    timeout: float = Field(default=120.0, gt=0)
    retries: int = Field(default=4, ge=0)
    exact_tokens: bool = False
    # the HTTP client (engine.policy.transport); unset: $DRILLYARD_HTTP_CLIENT, else auto,
    # which takes pyreqwest where installed (`pip install 'drillyard[fast]'`), else aiohttp
    http_client: Literal["auto", "aiohttp", "pyreqwest"] | None = None
    latency: float = Field(default=0.0, ge=0)
    mistake_rate: float = Field(default=0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _openai_needs_url(self) -> PolicyConfig:
        if self.base_url is not None:
            urls = server_urls(self.base_url)
            repeated = sorted({u for u in urls if urls.count(u) > 1})
            if repeated:
                raise ValueError(f"base_url lists {', '.join(repeated)} twice: list each once")
            self.base_url = (urls[0] if len(urls) == 1 else urls) if urls else None
        if self.kind == "openai" and not (self.base_url and self.model):
            raise ValueError(
                'kind = "openai" needs base_url = "http://host:port/v1" (or a list of'
                ' several servers of the model) and model = "name"'
            )
        return self


class AgentConfig(_Strict):
    system_prompt: str | None = None
    max_turns: int = Field(default=8, ge=1)
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None
    logprobs: bool = False
    return_token_ids: bool = False
    extra: dict[str, Any] = Field(default_factory=dict)


class RunConfig(_Strict):
    store: Path = Path("drillyard.db")
    backend: str = "inprocess"
    backend_options: dict[str, Any] = Field(default_factory=dict)
    samples: int = Field(default=1, ge=1)
    scorer: str = "exact"
    ks: list[int] = Field(default_factory=lambda: [1])
    max_rollouts: int = Field(default=64, ge=1)
    shards: int = Field(default=1, ge=1)  # engine processes (`engine.shards`)
    max_model_requests: int = Field(default=64, ge=1)
    max_attempts: int = Field(default=3, ge=1)
    step_timeout: float = Field(default=120.0, gt=0)
    rollout_timeout: float | None = Field(default=None, gt=0)
    order: Literal["given", "longest_first"] = "given"
    tasks: TasksConfig
    environment: EnvironmentConfig = Field(default_factory=EnvironmentConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)

    @model_validator(mode="before")
    @classmethod
    def _needs_tasks(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tasks" not in data:
            raise ValueError(
                'no tasks: give exactly one of tasks.file = "x.jsonl" (--tasks FILE)'
                ' or tasks.builtin = "arithmetic" (--arithmetic N)'
            )
        return data

    def load_tasks(self) -> list[Task]:
        if self.tasks.builtin == "arithmetic":
            from engine.envs.arithmetic import arithmetic_tasks

            return arithmetic_tasks(self.tasks.count, self.tasks.seed)
        assert self.tasks.file is not None
        return load_tasks(self.tasks.file)

    def build_agent(self) -> Agent:
        a = self.agent
        sampling = SamplingParams(
            temperature=a.temperature,
            top_p=a.top_p,
            max_tokens=a.max_tokens,
            seed=a.seed,
            logprobs=a.logprobs,
            return_token_ids=a.return_token_ids,
            extra=a.extra,
        )
        return Agent(
            build_policy(self.policy.model_dump()),
            system_prompt=a.system_prompt,
            max_turns=a.max_turns,
            sampling=sampling,
        )


def build_policy(desc: dict[str, Any]) -> Policy:
    """A policy from its JSON description (a config's [policy], or a stored run's)."""
    kind = desc.get("kind")
    if kind == "openai":
        key_env = desc.get("api_key_env")
        urls = server_urls(desc["base_url"])
        common: dict[str, Any] = {
            "api_key": os.environ.get(key_env) if key_env else None,
            "max_in_flight": desc.get("max_in_flight", 64),
            "timeout": desc.get("timeout", 120.0),
            "retries": desc.get("retries", 4),
            "exact_tokens": desc.get("exact_tokens", False),
            "http_client": desc.get("http_client"),
        }
        if len(urls) > 1:
            return MultiServerPolicy(urls, desc["model"], **common)
        return OpenAIPolicy(urls[0], desc["model"], **common)
    if kind == "oracle":
        from engine.envs.arithmetic import CalculatorOracle

        return CalculatorOracle(
            latency=desc.get("latency", 0.0), mistake_rate=desc.get("mistake_rate", 0.0)
        )
    raise ConfigError(
        "policy.kind",
        f"cannot build a policy of kind {kind!r} from a description",
        'use kind = "openai" or "oracle", or run from Python with your own Agent',
    )


def _function(desc: dict[str, Any], hook: str, fix: str) -> Any:
    name = desc.get(hook)
    if not name:
        return None
    try:
        return function_by_name(name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(
            f"agent.{hook}", f"the run's {hook} function {name} cannot be imported: {exc}", fix
        ) from exc


def agent_from_description(desc: dict[str, Any]) -> AnyAgent:
    """Rebuild the agent a run was started with (see `Agent.describe`, `AppAgent.describe`)."""
    if desc.get("kind") == "function":
        fix = "install the package that defines it, or resume from Python with your AppAgent"
        solve = _function(desc, "solve", fix)
        if solve is None:
            raise ConfigError(
                "agent.solve",
                "the run's solve function was not a module-level function",
                "resume from Python: engine.resume(run_id, solve, policy=...)",
            )
        return AppAgent(
            solve,
            build_policy(desc["policy"]),
            name=desc.get("name", "agent"),
            request_extra=_function(desc, "request_extra", fix),
            token_ids=desc.get("token_ids", True),
        )
    s = desc.get("sampling", {})
    sampling = SamplingParams(
        temperature=s.get("temperature", 1.0),
        top_p=s.get("top_p", 1.0),
        max_tokens=s.get("max_tokens"),
        seed=s.get("seed"),
        logprobs=s.get("logprobs", False),
        top_logprobs=s.get("top_logprobs"),
        return_token_ids=s.get("return_token_ids", False),
        stop=tuple(s.get("stop", ())),
        extra=s.get("extra", {}),
    )
    fix = "install the package that defines it, or resume from Python with your Agent"
    hooks: dict[str, Any] = {}
    for hook in ("answer_from", "render_task"):
        fn = _function(desc, hook, fix)
        if fn is not None:
            hooks[hook] = fn
    return Agent(
        build_policy(desc["policy"]),
        system_prompt=desc.get("system_prompt"),
        max_turns=desc.get("max_turns", 8),
        sampling=sampling,
        name=desc.get("name", "agent"),
        text_tool=desc.get("text_tool"),
        **hooks,
    )


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> RunConfig:
    """Read a TOML config (optional), apply flag overrides (dotted keys), validate."""
    data: dict[str, Any] = {}
    where = str(path) if path else "flags"
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(str(p), "config file not found", "check the path")
        try:
            data = tomllib.loads(p.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(
                str(p), f"not valid TOML: {exc}", "fix the syntax at that line"
            ) from exc
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"field '{'.'.join(str(p) for p in e['loc']) or '(top)'}': {e['msg']}"
            for e in exc.errors()
        )
        raise ConfigError(
            where, problems, "see `python -m engine run --help` and engine/config.py"
        ) from exc
