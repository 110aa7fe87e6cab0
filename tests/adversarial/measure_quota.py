"""How far past its quota a run gets before the engine kills it (a measurement).

    python -m tests.adversarial.measure_quota [--quota-mib 64] [--chunk-mb 16]

One rollout of ``code.local`` whose run writes ``--chunk-mb`` MB files until it
is stopped, with ``workspace_bytes`` at ``--quota-mib``; prints one JSON line:
what the work dir held after the run (``du -sb``) and by how much that is over
the quota (the writes of one watch interval, each file capped at what was left).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from gaia.environment import GaiaEnvironment
from tests.adversarial.conftest import Hostile, hostile_rollout

MiB = 1 << 20


async def measure(tmp: Path, quota_mib: int, chunk_mb: int) -> dict[str, Any]:
    held: list[int] = []

    def du(h: Hostile) -> tuple[str, dict[str, Any]]:
        out = subprocess.run(["du", "-sb", str(h.workspace)], capture_output=True, text=True)
        held.append(int(out.stdout.split()[0]))
        return "run_shell", {"command": "true"}

    limits = {"workspace_bytes": quota_mib * MiB, "wall_seconds": 60}
    write = (f"for i in $(seq 1 400); do head -c {chunk_mb}000000 /dev/zero > big$i || break; "
             "done")
    h = await hostile_rollout(tmp / "trace.db", lambda: GaiaEnvironment(
        tools=["code.local"], serve_web=False, tool_config={"code.local": {"limits": limits}}),
        [("run_shell", {"command": write}), du])
    return {"quota_mib": quota_mib, "chunk_mb": chunk_mb, "held_mib": round(held[0] / MiB, 1),
            "over_mib": round(held[0] / MiB - quota_mib, 1),
            "note": h.results[0]["content"].splitlines()[-1]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quota-mib", type=int, default=64)
    p.add_argument("--chunk-mb", type=int, default=16)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="drillyard-quota-"))
    tmp.chmod(0o755)  # reachable by the jail's uid
    tempfile.tempdir = str(tmp)
    try:
        print(json.dumps(asyncio.run(measure(tmp, args.quota_mib, args.chunk_mb))))
    finally:
        subprocess.run(["rm", "-rf", str(tmp)], check=False)


if __name__ == "__main__":
    main()
