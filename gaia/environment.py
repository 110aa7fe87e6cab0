"""The ``gaia`` environment: the GAIA toolset over one rollout's work dir.

Own tools: ``calculator``, ``list_files``/``read_file`` (the task's
attachments, copied into a fresh work dir), ``search``/``read_page`` (the
local web corpus, indexed with SQLite FTS5 and served on loopback while the
environment lives). Other environments registered by name (``code.local``,
``browser``, ``mcp``, …) join the toolset: a toolbox environment
(`tools._toolbox.ToolboxEnvironment`) lends its toolboxes, which then work in
the same work dir; any other environment is driven as it is, with a task
view whose attachments are the work-dir copies. A name ending in ``?`` is
optional: skipped when it is not registered or its extra is missing.

Tools see a task view with no metadata but ``level``, ``file_name`` and
``web_url``: the ground truth and the annotator's steps never reach a tool.
A joined browser is pinned to the environment's own web server (host and
port, exactly), besides any ``allow_hosts`` given in its ``tool_config``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.backend import build_environment
from engine.environment import Environment, EnvSpec, Observation, ToolSpec
from engine.errors import ConfigError, PluginNotFound
from engine.policy.toolcalls import make_call
from engine.tasks import TaskView
from tools._toolbox import Toolbox, ToolboxBase, ToolboxEnvironment
from tools.calculator import calculator_toolbox
from tools.files import FileTools
from tools.search import SearchTools
from tools.webserver import WebServer, acquire_shared, release_shared

WEB_ROOT = Path(__file__).parent / "data" / "web"
OWN_TOOLS = ("calculator", "files", "search")
DEFAULT_TOOLS = (*OWN_TOOLS, "code.local?", "browser?")
FORWARDED_METADATA = ("level", "file_name")


class EnvironmentToolbox(ToolboxBase):
    """Any `Environment` as a toolbox: reset on start with the work-dir copies."""

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.started = False

    @property
    def specs(self) -> list[ToolSpec]:
        return self.env.tools

    async def start(self, task: TaskView, workspace: Path) -> None:
        copies = tuple(str(workspace / Path(a).name) for a in task.attachments)
        self.started = True
        await self.env.reset(TaskView(task.id, task.prompt, copies,
                                      {**task.metadata, "work_dir": str(workspace)}))

    async def call(self, name: str, arguments: dict[str, Any]) -> Observation:
        return await self.env.step(make_call("call", name, arguments))

    async def aclose(self) -> None:
        if self.started:  # the toolbox environment also closes before each start
            self.started = False
            await self.env.close()


def _joined(name: str, config: dict[str, Any]) -> list[Toolbox]:
    env = build_environment(EnvSpec(name, config))
    if isinstance(env, ToolboxEnvironment):
        return list(env.toolboxes)
    return [EnvironmentToolbox(env)]


class GaiaEnvironment(ToolboxEnvironment):
    """Tools for one GAIA rollout. ``tools`` names the toolset (see the module
    doc); ``tool_config`` gives a joined environment its config by name."""

    def __init__(self, tools: list[str] | tuple[str, ...] = DEFAULT_TOOLS,
                 web_root: str | None = None, serve_web: bool = True,
                 search_provider: str = "local", deadline: float = 120.0,
                 tool_config: dict[str, dict[str, Any]] | None = None) -> None:
        self.web_root = Path(web_root) if web_root else WEB_ROOT
        self.serve_web = serve_web
        self.server: WebServer | None = None
        boxes: list[Toolbox] = []
        for entry in tools:
            name, optional = entry.rstrip("?"), entry.endswith("?")
            if name == "calculator":
                boxes.append(calculator_toolbox())
            elif name == "files":
                boxes.append(FileTools(deadline))
            elif name == "search":
                boxes.append(SearchTools(self.web_root, search_provider, deadline))
            else:
                try:
                    boxes += _joined(name, (tool_config or {}).get(name, {}))
                except PluginNotFound:
                    if not optional:
                        raise
        try:
            super().__init__(boxes, deadline=deadline)
        except ValueError as exc:  # two toolboxes offer the same tool name
            raise ConfigError("environment 'gaia'", str(exc),
                              "leave one of them out of tools") from exc

    async def reset(self, task: TaskView) -> Observation:
        await self._release_server()
        if self.serve_web:
            self.server = await acquire_shared(self.web_root)
        for box in self.toolboxes:  # the browser may reach exactly our own server
            pin = getattr(box, "pin", None)
            if callable(pin):
                pin(*([self.server.url] if self.server else []))
        metadata = {k: task.metadata[k] for k in FORWARDED_METADATA if k in task.metadata}
        metadata["web_url"] = self.server.url if self.server else None
        return await super().reset(TaskView(task.id, task.prompt, task.attachments, metadata))

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self._release_server()

    async def _release_server(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            await release_shared(server)
