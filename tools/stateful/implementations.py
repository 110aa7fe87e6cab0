"""How a stateful tool runs: the spec author's Python function, the CRUD
generator, or policy-written code run in the bubblewrap jail.

An implementation is named in a domain file as one of

    {"kind": "python", "ref": "package.module:function"}   # fn(state, **arguments)
    {"kind": "crud", "op": "...", "table": "...", "key": "..."}   # tools.stateful.crud
    {"kind": "code", "source": "def <tool>(state, **arguments): ..."}

and called as ``await impl(state, arguments)``. Each call is one transaction
of the `State`: an exception leaves the state as it was and becomes the
agent's error observation. ``code`` runs in a fresh `tools.sandbox.Jail` per
call (no network, read-only system, CPU/memory/time limits) with the state
and arguments as JSON on stdin; it prints the result and the new state back.
Untrusted code never runs in the engine's process.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.agent import function_by_name
from engine.errors import ConfigError
from tools.sandbox import Jail, Limits
from tools.stateful.crud import run_crud
from tools.stateful.state import State

KINDS = ("python", "crud", "code")
_MARK = "@@drillyard-result@@"
_RUNNER = '''
import json, sys
_input = json.loads(sys.stdin.readline())
_ns = {}
exec(compile(_input["source"], "<tool %s>" % _input["name"], "exec"), _ns)
_fn = _ns.get(_input["name"])
if not callable(_fn):
    _out = {"ok": False, "error": "the code defines no function named %s" % _input["name"]}
else:
    try:
        _result = _fn(_input["state"], **_input["arguments"])
        _out = {"ok": True, "result": _result, "state": _input["state"]}
    except Exception as _exc:
        _out = {"ok": False, "error": "%s: %s" % (type(_exc).__name__, _exc)}
try:
    _text = json.dumps(_out)
except (TypeError, ValueError) as _exc:
    _text = json.dumps({"ok": False, "error": "the result is not JSON: %s" % _exc})
print("''' + _MARK + '''" + _text)
'''


class ToolFailed(RuntimeError):
    """The tool's implementation failed; the message is what the agent sees."""


@dataclass
class PythonImplementation:
    ref: str
    fn: Any = field(init=False, repr=False)

    def __post_init__(self) -> None:
        try:
            self.fn = function_by_name(self.ref)
        except (ImportError, AttributeError, ValueError) as exc:
            raise ConfigError(f"implementation {self.ref}", f"cannot be imported: {exc}",
                              "give module:function of an importable function") from exc

    async def __call__(self, state: State, arguments: dict[str, Any]) -> Any:
        return state.call(lambda handle: self.fn(handle, **arguments))


@dataclass
class CrudImplementation:
    descriptor: dict[str, Any]

    async def __call__(self, state: State, arguments: dict[str, Any]) -> Any:
        return state.call(lambda handle: run_crud(self.descriptor, handle, arguments))


@dataclass
class JailedImplementation:
    """Policy-written (or any untrusted) code, one jailed run per call."""

    name: str
    source: str
    limits: Limits = field(default_factory=lambda: Limits(wall_seconds=10, cpu_seconds=5,
                                                          memory_bytes=512 * 1024 * 1024))
    python: str = "python3"

    async def run(self, state: Any, arguments: dict[str, Any]) -> dict[str, Any]:
        """Run the code on a state document; ``{"ok", "result", "state"}`` or ``{"ok": False,
        "error"}``. Never raises for what the code does."""
        workspace = Path(tempfile.mkdtemp(prefix="drillyard-tool-"))
        try:
            payload = json.dumps({"name": self.name, "source": self.source, "state": state,
                                  "arguments": arguments})
            async with Jail(workspace, self.limits) as jail:
                run = await jail.run([self.python, "-c", _RUNNER], stdin=payload.encode() + b"\n")
        finally:
            shutil.rmtree(workspace, ignore_errors=True)
        for line in reversed(run.stdout.splitlines()):
            if line.startswith(_MARK):
                out: dict[str, Any] = json.loads(line[len(_MARK):])
                return out
        return {"ok": False, "error": f"the code printed no result ({run.render()[-500:]})"}

    async def __call__(self, state: State, arguments: dict[str, Any]) -> Any:
        out = await self.run(state.snapshot(), arguments)
        if not out.get("ok"):
            raise ToolFailed(str(out.get("error")))
        state.replace(out.get("state"))
        return out.get("result")


Implementation = PythonImplementation | CrudImplementation | JailedImplementation


def build_implementation(tool: str, impl: Any) -> Implementation:
    """The implementation a domain file names for ``tool``; ConfigError naming the tool."""
    if not isinstance(impl, dict) or impl.get("kind") not in KINDS:
        raise ConfigError(f"tool {tool}", f"implementation {impl!r} is not one of {KINDS}",
                          '{"kind": "python", "ref": "module:function"}, {"kind": "crud", ...} '
                          'or {"kind": "code", "source": "..."}')
    kind = impl["kind"]
    if kind == "python":
        return PythonImplementation(str(impl.get("ref", "")))
    if kind == "crud":
        missing = [k for k in ("op", "table", "key") if not impl.get(k)]
        if missing:
            raise ConfigError(f"tool {tool}", f"crud implementation lacks {missing}", None)
        return CrudImplementation(dict(impl))
    source = impl.get("source")
    if not isinstance(source, str) or not source.strip():
        raise ConfigError(f"tool {tool}", "code implementation has no source", None)
    return JailedImplementation(tool, source)
