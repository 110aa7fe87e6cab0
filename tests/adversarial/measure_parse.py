"""What a parse bomb costs the engine after its deadline (a measurement, not a test).

    python -m tests.adversarial.measure_parse sheet|pdf|image [--deadline 4] [--watch 30]

Builds the bomb of `test_parsing`, calls ``read_file`` on it with the given
deadline through `FileTools`, then watches this process (and its children)
for ``--watch`` seconds: prints one JSON line with the seconds the call took,
whether it was an error, the engine's RSS when the call returned and at its
peak afterwards, the CPU seconds the process burned afterwards, and how many
of its threads were still inside a parser at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import psutil

from engine import TaskView
from tests.adversarial.test_parsing import (
    expanding_xlsx,
    huge_image,
    parsing_threads,
    shared_stream_pdf,
)
from tools.files import FileTools

BUILD = {"sheet": (expanding_xlsx, "sales_2023.xlsx"), "pdf": (shared_stream_pdf, "ledger.pdf"),
         "image": (huge_image, "scan.png")}


async def measure(kind: str, deadline: float, watch: float) -> dict[str, object]:
    folder = Path(tempfile.mkdtemp(prefix="drillyard-measure-"))
    build, name = BUILD[kind]
    build(folder / name)
    tools = FileTools(deadline)
    await tools.start(TaskView("t", "q"), folder)
    me = psutil.Process()
    began = time.monotonic()
    obs = await tools.read_file(name)
    took = time.monotonic() - began
    rss_at_return = me.memory_info().rss
    cpu_before = sum(me.cpu_times()[:2])
    peak = rss_at_return
    end = time.monotonic() + watch
    while time.monotonic() < end:
        await asyncio.sleep(0.2)
        peak = max(peak, me.memory_info().rss + sum(
            c.memory_info().rss for c in me.children(recursive=True)))
    return {"kind": kind, "call_s": round(took, 2), "is_error": obs.is_error,
            "answer": obs.content[:120], "rss_at_return_mib": rss_at_return >> 20,
            "peak_after_mib": peak >> 20,
            "cpu_s_after": round(sum(me.cpu_times()[:2]) - cpu_before, 1),
            "threads_still_parsing": len(parsing_threads())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("kind", choices=sorted(BUILD))
    p.add_argument("--deadline", type=float, default=4.0)
    p.add_argument("--watch", type=float, default=30.0)
    args = p.parse_args()
    print(json.dumps(asyncio.run(measure(args.kind, args.deadline, args.watch))), flush=True)
    os._exit(0)  # do not wait for a parser thread an old engine may have left running


if __name__ == "__main__":
    main()
