"""Toolboxes: groups of tools with a lifecycle, and the environment that hosts them.

A *toolbox* is what the heavy tools (code sandbox, browser, MCP servers) have in
common, and how they compose into one toolset (for example GAIA's):

    class Toolbox(Protocol):
        specs: list[ToolSpec]                          # OpenAI function specs
        async def start(self, task: TaskView, workspace: Path) -> None
        async def call(self, name: str, arguments: dict) -> Observation
        async def aclose(self) -> None                 # also: async with toolbox

`ToolboxEnvironment(toolboxes)` is an `Environment` over any number of them:
on ``reset`` it makes a fresh per-rollout `Workspace` (a temporary folder
holding copies of the task's attachments, never the ground truth) and starts
every toolbox on it; ``step`` routes a call by tool name under a deadline;
errors of every kind come back as error observations. `FunctionToolbox` wraps
plain Python functions (`engine.toolkit.FunctionTool`) so light tools mix in.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import structlog

from engine.environment import Observation, ToolCall, ToolSpec
from engine.resources import AsyncResource
from engine.tasks import TaskView
from engine.toolkit import FunctionTool
from tools.workspace import remove_tree

log = structlog.get_logger("drillyard.tools")


@runtime_checkable
class Toolbox(Protocol):
    """A group of tools sharing one resource (a jail, a browser, an MCP session)."""

    @property
    def specs(self) -> list[ToolSpec]: ...

    async def start(self, task: TaskView, workspace: Path) -> None: ...

    async def call(self, name: str, arguments: dict[str, Any]) -> Observation: ...

    async def aclose(self) -> None: ...


class ToolboxBase(AsyncResource):
    """Async context manager plumbing shared by the toolboxes."""


class Workspace:
    """A per-rollout temporary folder holding copies of the task's attachments.

    Attachments are copied by base name (the original files, and whatever lies
    beside them, such as a ``metadata.jsonl`` holding answers, stay out of reach).
    `remove` takes the folder away whatever the tools and the agent made of it
    (see `tools.workspace.remove_tree`) and says whether it is gone.
    """

    def __init__(self, task: TaskView, parent: str | Path | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="drillyard-ws-", dir=parent))
        self.attachments: list[Path] = []
        try:
            for src in task.attachments:
                source = Path(src)
                if not source.is_file():
                    raise FileNotFoundError(f"attachment {src} of task {task.id} does not exist")
                dest = self.path / source.name
                shutil.copyfile(source, dest)
                self.attachments.append(dest)
        except BaseException:
            self.remove()
            raise

    def remove(self) -> bool:
        """Remove the folder (blocking: call it in a worker thread); never raises."""
        gone = remove_tree(self.path)
        if not gone:
            log.error("workspace could not be removed", path=str(self.path))
        return gone


class FunctionToolbox(ToolboxBase):
    """Plain Python functions (or `FunctionTool`s) as a toolbox."""

    def __init__(self, functions: Sequence[Callable[..., Any] | FunctionTool]) -> None:
        tools = [f if isinstance(f, FunctionTool) else FunctionTool(f) for f in functions]
        self._tools = {t.name: t for t in tools}

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    async def start(self, task: TaskView, workspace: Path) -> None:
        pass

    async def call(self, name: str, arguments: dict[str, Any]) -> Observation:
        return await self._tools[name](arguments)


class ToolboxEnvironment:
    """An `Environment` over toolboxes, each call under ``deadline`` seconds.

    ``intro`` is the reset observation (default: the task prompt, followed by
    where the attachments are when there are any).
    """

    def __init__(self, toolboxes: Sequence[Toolbox], *, deadline: float = 120.0,
                 intro: str | Callable[[TaskView], str] | None = None,
                 workspace_parent: str | Path | None = None) -> None:
        self.toolboxes = list(toolboxes)
        self.deadline = deadline
        self._intro = intro
        self._parent = workspace_parent
        self._route: dict[str, Toolbox] = {}
        self._specs: list[ToolSpec] = []
        self.workspace: Workspace | None = None
        self._refresh()

    def _refresh(self) -> None:
        self._route.clear()
        self._specs = []
        for box in self.toolboxes:
            for spec in box.specs:
                name = spec["function"]["name"]
                if name in self._route:
                    raise ValueError(f"two toolboxes offer a tool named {name!r}")
                self._route[name] = box
                self._specs.append(spec)

    @property
    def tools(self) -> list[ToolSpec]:
        return list(self._specs)

    async def reset(self, task: TaskView) -> Observation:
        await self._stop()
        self.workspace = Workspace(task, self._parent)
        for box in self.toolboxes:
            await box.start(task, self.workspace.path)
        self._refresh()  # MCP toolboxes learn their tools on start
        if self._intro is not None:
            return Observation(self._intro if isinstance(self._intro, str) else self._intro(task))
        text = task.prompt
        if self.workspace.attachments:
            names = ", ".join(p.name for p in self.workspace.attachments)
            text += f"\n\nAttached files (in the working directory of your tools): {names}"
        return Observation(text)

    async def step(self, call: ToolCall) -> Observation:
        box = self._route.get(call.name)
        if box is None:
            known = ", ".join(self._route) or "none"
            return Observation.error(f"unknown tool '{call.name}'; the tools are: {known}")
        if call.parsed is None:
            return Observation.error(
                f"the arguments of {call.name} are not a JSON object ({call.error or 'invalid'})")
        if self.workspace is None:
            return Observation.error("the environment was not reset")
        try:
            with anyio.fail_after(self.deadline):
                return valid_text(await box.call(call.name, call.parsed))
        except TimeoutError:
            return Observation.error(f"{call.name} did not finish within {self.deadline:g} s")
        except Exception as exc:  # a tool's own fault is the agent's observation
            return valid_text(Observation.error(f"{call.name} raised {type(exc).__name__}: {exc}"))

    async def _stop(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                for box in reversed(self.toolboxes):
                    await box.aclose()
            finally:
                if self.workspace is not None:
                    workspace, self.workspace = self.workspace, None
                    await anyio.to_thread.run_sync(workspace.remove)

    async def close(self) -> None:
        await self._stop()


def _text(value: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (file names that are not UTF-8)
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return value


def valid_text(obs: Observation) -> Observation:
    """The observation with text any JSON encoder (and the trace store) takes:
    bytes a tool passed through from file names appear as ``\\xNN``."""
    info = {k: _text(v) if isinstance(v, str) else v for k, v in obs.info.items()}
    content = _text(obs.content)
    if content is obs.content and info == obs.info:
        return obs
    return replace(obs, content=content, info=info)
