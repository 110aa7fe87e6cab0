"""Tool implementations for synthesis, and the policy-written kind checked in the jail.

For each spec, in order: the author's function (``x-implementation``), the
CRUD generator (a ``<verb>_<entity>`` spec, `tools.stateful.crud`), else code
written by a policy (any OpenAI-compatible model through `engine.Policy`):
the model gets the spec and an example state and answers with a Python
function; the code is run in the bubblewrap jail on sampled calls, and kept
only when at least one call succeeds and every run returns JSON and leaves the
state a JSON object. The kept code runs in the jail on every call later too.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from engine.errors import ConfigError
from engine.policy.base import Policy, SamplingParams
from scaler.specs import SpecEntry
from tools.stateful.crud import crud_descriptor
from tools.stateful.implementations import JailedImplementation, build_implementation

_CODE = re.compile(r"```(?:python|py)?\s*\n(.*?)```", re.DOTALL)
PROMPT = """Implement this tool as a Python function over a JSON state.

Tool (OpenAI function spec):
{spec}

The state is a dict of tables, each a dict of rows by key, for example:
{example}

Write `def {name}(state, **arguments)` that reads and changes `state` in place and
returns a JSON-serialisable result; raise an exception with a clear message when
the call cannot be done. Standard library only. Answer with one ```python block."""


class ImplementationRejected(ValueError):
    """No implementation could be made for a tool; names the tool and why."""

    def __init__(self, tool: str, reason: str) -> None:
        super().__init__(f"tool {tool}: {reason}")
        self.tool, self.reason = tool, reason


@dataclass(frozen=True, slots=True)
class Made:
    """A tool's implementation as a domain file names it, and its kind."""

    impl: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.impl["kind"])


def known_implementation(entry: SpecEntry) -> Made | None:
    """The author's function or the CRUD generator, when either applies."""
    if entry.implementation:
        made = Made({"kind": "python", "ref": entry.implementation})
        try:
            build_implementation(entry.name, made.impl)
        except ConfigError as exc:
            raise ImplementationRejected(entry.name, exc.problem) from exc
        return made
    desc = crud_descriptor(entry.spec)
    return Made(desc) if desc is not None else None


def extract_code(text: str | None) -> str | None:
    if not text:
        return None
    blocks = _CODE.findall(text)
    return blocks[-1] if blocks else None


def _example(state: dict[str, Any]) -> str:
    small = {t: dict(list(rows.items())[:2]) for t, rows in state.items()}
    return json.dumps(small, indent=1)


async def check_code(name: str, source: str, state: dict[str, Any],
                     probes: list[dict[str, Any]]) -> str | None:
    """Run ``source`` in the jail on each probe; None when it passes, else why not."""
    impl = JailedImplementation(name, source)
    ok = 0
    last = "no probe calls"
    for args in probes:
        out = await impl.run(json.loads(json.dumps(state)), args)
        if out.get("ok"):
            if not isinstance(out.get("state"), dict):
                return "the code left a state that is not a JSON object"
            ok += 1
        else:
            last = str(out.get("error"))
            if "defines no function" in last or last.startswith("SyntaxError"):
                return last
    return None if ok else f"every sampled call failed (last: {last})"


async def write_implementation(policy: Policy, entry: SpecEntry, state: dict[str, Any],
                               probes: list[dict[str, Any]], *, attempts: int = 2,
                               sampling: SamplingParams | None = None) -> Made:
    """Ask ``policy`` for code implementing ``entry`` and check it in the jail."""
    prompt = PROMPT.format(spec=json.dumps(entry.spec, indent=1), example=_example(state),
                           name=entry.name)
    messages: list[dict[str, Any]] = [{"role": "user", "content": prompt}]
    why = "no attempt"
    for _ in range(attempts):
        reply = (await policy.complete(messages, None, sampling or SamplingParams(), 1))[0]
        source = extract_code(reply.content)
        if source is None:
            why = "the model's answer holds no ```python block"
        else:
            problem = await check_code(entry.name, source, state, probes)
            if problem is None:
                return Made({"kind": "code", "source": source})
            why = f"the model's code was rejected: {problem}"
        messages += [{"role": "assistant", "content": reply.content or ""},
                     {"role": "user", "content": f"That did not work: {why}. Try again."}]
    raise ImplementationRejected(entry.name, why)

