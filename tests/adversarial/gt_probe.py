"""Run by test_ground_truth in a fresh interpreter whose ``gaia`` is the wheel
installed under /usr: every tool of the GAIA toolset tries to reach the answers.

    python -I gt_probe.py SITE_PACKAGES OUT_JSON

Prints nothing; writes ``{"gaia": where gaia was imported from, "needles": [...],
"seen": [{"tool", "arguments", "content"}, ...]}`` to OUT_JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path


async def probe() -> dict[str, object]:
    import gaia
    from engine.policy.toolcalls import make_call
    from gaia.environment import GaiaEnvironment
    from gaia.loader import load_gaia

    metadata = Path(gaia.BUNDLED) / "2023" / "validation" / "metadata.jsonl"
    needles = []
    for line in metadata.read_text().splitlines():
        row = json.loads(line)
        needles.append('"Final answer":' + json.dumps(row["Final answer"], separators=(",", ":")))
        needles.append(row["Annotator Metadata"]["Steps"].splitlines()[-1])
    task = next(t for t in load_gaia(gaia.BUNDLED) if t.attachments)
    env = GaiaEnvironment(tools=["calculator", "files", "search", "code.local", "browser"],
                          tool_config={"code.local": {"limits": {"wall_seconds": 240,
                                                                 "cpu_seconds": 240}}})
    seen: list[dict[str, object]] = []
    grep = ("echo " + _quote(needles[0]) + " > /tmp/control.txt; "
            "grep -rIlsF " + " ".join("-e " + _quote(n) for n in needles)
            + " / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev; echo grep-rc=$?")
    await env.reset(task.view())
    try:
        assert env.server is not None
        url = env.server.url
        calls: list[tuple[str, dict[str, object]]] = [
            ("run_shell", {"command": grep}),
            ("run_shell", {"command": f"ls -la {metadata.parent} 2>&1"}),
            ("run_shell", {"command": "find / -name 'metadata.jsonl' -not -path '/proc/*' "
                                      "2>/dev/null; echo find-done"}),
            ("run_shell", {"command": "python3 -c 'import gaia' 2>&1 | tail -1"}),
            ("run_python", {"code": f"print(open({str(metadata)!r}).read())"}),
            ("read_file", {"path": str(metadata)}),
            ("read_file", {"path": "../../../" + "/".join(metadata.parts[-4:])}),
            ("search", {"query": "Final answer"}),
            ("read_page", {"url": "../2023/validation/metadata.jsonl"}),
            ("browser_goto", {"url": f"file://{metadata}"}),
            ("browser_goto", {"url": f"{url}/../2023/validation/metadata.jsonl"}),
            ("browser_goto", {"url": f"{url}/%2e%2e/2023/validation/metadata.jsonl"}),
            ("browser_goto", {"url": f"{url}/lighthouse.html"}),
        ]
        for name, arguments in calls:
            obs = await env.step(make_call("probe", name, json.dumps(arguments)))
            seen.append({"tool": name, "arguments": arguments, "content": obs.content})
    finally:
        await env.close()
    return {"gaia": gaia.__file__, "metadata": str(metadata), "needles": needles, "seen": seen}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])
    Path(sys.argv[2]).write_text(json.dumps(asyncio.run(probe())))
