"""Errors Drillyard raises, each naming what was wrong and how to fix it."""

from __future__ import annotations


class DrillyardError(Exception):
    """Base class of every error Drillyard raises on purpose."""


class ConfigError(DrillyardError):
    """A config file, a flag or an argument is wrong; nothing has started."""

    def __init__(self, where: str, problem: str, fix: str | None = None) -> None:
        self.where, self.problem, self.fix = where, problem, fix
        text = f"{where}: {problem}"
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class StoreNotOpen(DrillyardError, RuntimeError):
    """The trace store was used while not open (before `open`, or after `close` began)."""


class TaskFileError(ConfigError):
    """A task file holds a line the engine cannot read."""


class PluginNotFound(ConfigError):
    """A backend, environment or scorer name is unknown or its extra is not installed."""


class InfraError(DrillyardError):
    """The infrastructure failed (not the agent): the attempt is retried.

    Raised for a model server that stays down, a worker that died, a lost
    connection. The rollout is marked ``error`` for this attempt and run again,
    up to the scheduler's attempt limit.
    """


class PolicyError(InfraError):
    """The model server failed after all retries (connection refused, 5xx, 429, timeout)."""


class EnvironmentLost(InfraError):
    """The environment (or the worker hosting it) went away mid-rollout."""


class AgentFailed(DrillyardError):
    """The agent ended without a scorable answer: its own fault, not the infrastructure's.

    The rollout is ``failed`` with reward 0 and is not retried (turn limit, no
    answer, an exception in an app's own agent code). ``detail`` may hold a
    traceback for the record.
    """

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason)
        self.detail = detail


class NotRetryable(DrillyardError):
    """A fault that another attempt cannot fix (for example a scorer that raises)."""


class ShardError(DrillyardError):
    """A shard process failed with an error; ``detail`` is its traceback."""

    def __init__(self, index: int, detail: str, *, starting: bool = False) -> None:
        last = detail.strip().splitlines()[-1] if detail.strip() else "no traceback"
        after = (
            "(it could not start: its store, its backend or what it imports)"
            if starting
            else "(the run is left interrupted: engine.resume(run_id, agent) finishes it "
            "once the cause is fixed)"
        )
        super().__init__(f"shard {index} failed: {last} {after}")
        self.index, self.detail = index, detail
