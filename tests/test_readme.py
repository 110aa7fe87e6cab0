"""The README's embedding example runs as written (against a local
OpenAI-compatible server that answers like a model that uses the tool)."""

from __future__ import annotations

import re
import runpy
from pathlib import Path
from typing import Any

import pytest

from tests.support.chat_server import ChatServer, reply

pytestmark = pytest.mark.anyio
README = Path(__file__).parent.parent / "README.md"


def population_agent(body: dict[str, Any]) -> dict[str, Any]:
    last = body["messages"][-1]
    if last["role"] == "tool":
        return reply(last["content"])
    call = {"id": "c1", "type": "function",
            "function": {"name": "lookup_population", "arguments": '{"city": "Paris"}'}}
    return reply(None, [call])


async def run_example(section: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ChatServer:
    """Run the first Python block of a README section against a local model server."""
    code = re.search(rf"## {section}\n.*?```python\n(.*?)```", README.read_text(), re.DOTALL)
    assert code, f"the README lost its example under '## {section}'"
    async with ChatServer([population_agent]).running() as server:
        source = code.group(1).replace("http://127.0.0.1:8000/v1", server.url)
        source = source.replace("asyncio.run(main())", "")
        script = tmp_path / "example.py"
        script.write_text(source)
        monkeypatch.chdir(tmp_path)
        namespace = runpy.run_path(str(script))
        await namespace["main"]()
    return server


async def test_the_embedding_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    server = await run_example("Embed it", tmp_path, monkeypatch)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "{'done': 8}"
    assert out[1] == "{1: 1.0, 4: 1.0, 8: 1.0}"
    assert len((tmp_path / "trajectories.jsonl").read_text().splitlines()) == 8
    tools = server.requests[0]["tools"][0]["function"]
    assert tools["name"] == "lookup_population" and tools["parameters"]["required"] == ["city"]


async def test_the_bring_your_own_agent_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.support.frameworks import require

    require("agents")
    monkeypatch.setenv("OPENAI_AGENTS_DISABLE_TRACING", "1")  # no trace export off the machine
    server = await run_example("Bring your own agent", tmp_path, monkeypatch)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "{'done': 8}"
    assert out[1] == "{1: 1.0, 4: 1.0, 8: 1.0}"
    first = server.requests[0]
    assert first["tools"][0]["function"]["name"] == "lookup_population"
    assert first["return_token_ids"] is True and first["logprobs"] is True  # asked on its behalf
