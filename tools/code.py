"""Code execution tools: ``run_python`` and ``run_shell``, locally jailed or on e2b.

Two toolboxes with the same two tools (see `tools._toolbox` for the protocol):

- `LocalCode`: each call runs in a fresh bubblewrap `Jail` (`tools.sandbox`)
  over the rollout's workspace, mounted at ``/workspace``: no network, a
  read-only system, CPU / memory / process / file-size / output limits and a
  wall-clock deadline. Files persist between calls; interpreter state does not.
- `E2BCode`: the same tools in an e2b cloud sandbox (``e2b-code-interpreter``,
  imported lazily) with the attachments uploaded; needs ``E2B_API_KEY``.

Environments registered by name: ``code`` and ``code.local`` (`LocalCodeEnvironment`),
``code.e2b`` (`E2BCodeEnvironment`). To compose with other tools:

    env = ToolboxEnvironment([LocalCode(limits=Limits(wall_seconds=20)), other_toolbox])
"""

from __future__ import annotations

import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import anyio

from engine import registry
from engine.environment import Observation, ToolSpec
from engine.errors import ConfigError
from engine.tasks import TaskView
from tools._toolbox import ToolboxBase, ToolboxEnvironment
from tools.sandbox import INSIDE, Jail, Limits, check_packages


def _spec(name: str, field_name: str, description: str, what: str) -> ToolSpec:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {
            "type": "object",
            "properties": {
                field_name: {"type": "string", "description": what},
                "timeout": {"type": "number", "description": "seconds allowed (capped)"},
            },
            "required": [field_name],
        },
    }}


_WHERE = (f"The task's attached files are in the working directory ({INSIDE}); files written "
          "there persist between calls. No network. Print what you need to see.")
CODE_SPECS: list[ToolSpec] = [
    _spec("run_python", "code", f"Run a Python 3 program in a sandbox and return its output. "
          f"{_WHERE}", "the Python source to run"),
    _spec("run_shell", "command", f"Run a shell (sh) command in a sandbox and return its output. "
          f"{_WHERE}", "the shell command line"),
]


def _arguments(name: str, arguments: dict[str, Any]) -> tuple[str, float | None] | Observation:
    key = "code" if name == "run_python" else "command"
    text = arguments.get(key)
    if not isinstance(text, str) or not text.strip():
        return Observation.error(f'{name} needs {{"{key}": "<non-empty string>"}}')
    timeout = arguments.get("timeout")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or timeout <= 0):
        return Observation.error(f"{name}: timeout must be a positive number of seconds")
    return text, float(timeout) if timeout is not None else None


def _limits(limits: Limits | dict[str, Any] | None) -> Limits:
    if limits is None or isinstance(limits, Limits):
        return limits or Limits()
    known = {f.name for f in fields(Limits)}
    unknown = set(limits) - known
    if unknown:
        raise ConfigError("code limits", f"unknown keys {sorted(unknown)}",
                          f"use some of {sorted(known)}")
    return Limits(**limits)


class LocalCode(ToolboxBase):
    """``run_python`` / ``run_shell`` in a bubblewrap jail over the workspace.

    ``python`` is the interpreter inside the jail (default: the system's
    ``python3`` under /usr, without its site-/dist-packages); ``packages``
    are folders of Python packages the code may import (see `Jail`);
    ``ro_binds`` adds host paths read-only (for example another Python
    installation; its package folders stay covered).
    """

    specs = CODE_SPECS

    def __init__(self, limits: Limits | dict[str, Any] | None = None, *,
                 python: str = "python3", ro_binds: tuple[str, ...] | list[str] = (),
                 packages: tuple[str, ...] | list[str] = ()) -> None:
        self.limits = _limits(limits)
        self.python = python
        self.ro_binds = tuple(ro_binds)
        self.packages = tuple(check_packages(packages))
        self.jail: Jail | None = None

    async def start(self, task: TaskView, workspace: Path) -> None:
        await self.aclose()
        self.jail = Jail(workspace, self.limits, ro_binds=self.ro_binds, packages=self.packages)
        await anyio.to_thread.run_sync(self.jail.prepare)

    async def call(self, name: str, arguments: dict[str, Any]) -> Observation:
        if self.jail is None:
            return Observation.error("the code sandbox has not been started (reset first)")
        parsed = _arguments(name, arguments)
        if isinstance(parsed, Observation):
            return parsed
        text, timeout = parsed
        if name == "run_python":
            result = await self.jail.run([self.python, "-"], stdin=text.encode(),
                                         seconds=timeout)
        elif name == "run_shell":
            result = await self.jail.run(["/bin/sh", "-c", text], seconds=timeout)
        else:
            return Observation.error(f"unknown tool '{name}'")
        info = {"exit_code": result.exit_code, "timed_out": result.timed_out,
                "seconds": round(result.seconds, 3)}
        return Observation(result.render(), is_error=not result.ok, info=info)

    async def aclose(self) -> None:
        if self.jail is not None:
            jail, self.jail = self.jail, None
            await jail.aclose()


class E2BCode(ToolboxBase):
    """The same tools in an e2b sandbox (``pip install 'drillyard[e2b]'``, ``E2B_API_KEY``)."""

    specs = CODE_SPECS

    def __init__(self, limits: Limits | dict[str, Any] | None = None, *,
                 template: str | None = None, api_key: str | None = None) -> None:
        self.limits = _limits(limits)
        self.template = template
        self.api_key = api_key or os.environ.get("E2B_API_KEY")
        if not self.api_key:
            raise ConfigError("code.e2b", "the environment variable E2B_API_KEY is not set",
                              "export E2B_API_KEY=<your e2b key>, or use code.local")
        self.sandbox: Any = None
        self.home = "/home/user"

    async def start(self, task: TaskView, workspace: Path) -> None:
        try:
            from e2b_code_interpreter import AsyncSandbox
        except ModuleNotFoundError as exc:
            raise ConfigError("code.e2b", f"needs the package '{exc.name}'",
                              "pip install 'drillyard[e2b]'") from exc
        await self.aclose()
        self.sandbox = await AsyncSandbox.create(
            template=self.template, timeout=int(self.limits.wall_seconds * 20) + 60,
            api_key=self.api_key)
        async for path in anyio.Path(workspace).iterdir():
            if not await path.is_symlink() and await path.is_file():
                await self.sandbox.files.write(f"{self.home}/{path.name}", await path.read_bytes())

    async def call(self, name: str, arguments: dict[str, Any]) -> Observation:
        if self.sandbox is None:
            return Observation.error("the e2b sandbox has not been started (reset first)")
        parsed = _arguments(name, arguments)
        if isinstance(parsed, Observation):
            return parsed
        text, timeout = parsed
        wall = min(timeout or self.limits.wall_seconds, self.limits.wall_seconds)
        keep = self.limits.output_bytes
        if name == "run_python":
            run = await self.sandbox.run_code(text, timeout=wall)
            out = "".join(run.logs.stdout) + "".join(str(r.text or "") for r in run.results)
            err = "".join(run.logs.stderr)
            if run.error is not None:
                err += f"{run.error.name}: {run.error.value}\n{run.error.traceback}"
            body = _clip(out, keep) + ("\n[stderr]\n" + _clip(err, keep) if err else "")
            return Observation(body or "[no output]", is_error=run.error is not None)
        from e2b.sandbox.commands.command_handle import CommandExitException

        try:
            res = await self.sandbox.commands.run(text, cwd=self.home, timeout=wall)
        except CommandExitException as exc:
            res = exc
        body = _clip(res.stdout or "", keep)
        if res.stderr:
            body += "\n[stderr]\n" + _clip(res.stderr, keep)
        if res.exit_code:
            body += f"\n[exit code {res.exit_code}]"
        return Observation(body or "[no output]", is_error=bool(res.exit_code))

    async def aclose(self) -> None:
        if self.sandbox is not None:
            sandbox, self.sandbox = self.sandbox, None
            await sandbox.kill()


def _clip(text: str, keep: int) -> str:
    raw = text.encode()
    if len(raw) <= keep:
        return text
    return raw[:keep].decode("utf-8", "ignore") + f"\n[output truncated: {len(raw) - keep} bytes]"


class LocalCodeEnvironment(ToolboxEnvironment):
    """Environment ``code.local`` (also ``code``): `LocalCode` over a per-rollout workspace."""

    def __init__(self, limits: dict[str, Any] | None = None, python: str = "python3",
                 ro_binds: list[str] | None = None, deadline: float | None = None,
                 packages: list[str] | None = None) -> None:
        box = LocalCode(limits, python=python, ro_binds=tuple(ro_binds or ()),
                        packages=tuple(packages or ()))
        super().__init__([box], deadline=deadline or box.limits.wall_seconds + 30)


class E2BCodeEnvironment(ToolboxEnvironment):
    """Environment ``code.e2b``: `E2BCode` (needs ``E2B_API_KEY``)."""

    def __init__(self, limits: dict[str, Any] | None = None, template: str | None = None,
                 deadline: float | None = None) -> None:
        box = E2BCode(limits, template=template)
        super().__init__([box], deadline=deadline or box.limits.wall_seconds + 60)


registry.register("environments", "code", LocalCodeEnvironment)
registry.register("environments", "code.local", LocalCodeEnvironment)
registry.register("environments", "code.e2b", E2BCodeEnvironment)
