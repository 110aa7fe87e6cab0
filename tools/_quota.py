"""The workspace quota of a jail: disk bytes and entries, enforced by the engine.

No filesystem quota is assumed (none exists on a plain temp dir, and loop
mounts or project quotas need root and setup): the tools layer enforces it.

- Before a run the work dir is measured (`tools.workspace.scan`, in a worker
  thread); the run's largest file (``RLIMIT_FSIZE``) is capped at what is left
  of the quota, so no single write takes the work dir past it, and a work dir
  already full can have files deleted but nothing written.
- While the run lasts the work dir is measured again and again (every
  `INTERVAL` seconds, or four times as long as a measure takes) and the run is
  killed as soon as it holds more than the quota (or than at its start, when
  it started over).
- After the run a work dir over its quota makes the run an error observation
  that says what to delete.

What holds: at most quota + what the run writes between two measures (files
each capped as above), on any machine, with or without cgroups.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from tools.workspace import Scan, scan

INTERVAL = 0.05


@dataclass(frozen=True, slots=True)
class Usage:
    bytes: int
    entries: int
    readable: bool  # False: the walk stopped (too many entries) or met unreadable folders

    def over(self, bytes_: int, entries: int) -> str | None:
        """Why this usage breaks a limit of ``bytes_`` and ``entries``, or None."""
        if self.entries > entries:
            return f"holds more than {entries} files and folders"
        if self.bytes > bytes_:
            return f"holds {self.bytes} bytes, more than {bytes_}"
        if not self.readable:
            return "holds folders the engine cannot read (make them readable)"
        return None


def measure(workspace: Path, max_entries: int) -> Usage:
    found: Scan = scan(workspace, max_entries=max_entries)
    return Usage(found.bytes, found.entries, found.complete and not found.unreadable)


class QuotaWatch:
    """The quota as one run sees it: `begin`, `watch` while it runs, `end`."""

    def __init__(self, workspace: Path, max_bytes: int, max_entries: int) -> None:
        self.workspace = workspace
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.start: Usage | None = None
        self.breach: str | None = None

    async def _measure(self) -> Usage:
        return await anyio.to_thread.run_sync(measure, self.workspace, self.max_entries + 1)

    async def begin(self, file_bytes: int) -> int:
        """Measure the work dir; return the largest file the run may write."""
        self.start = await self._measure()
        return max(0, min(file_bytes, self.max_bytes - self.start.bytes))

    async def watch(self, kill: Callable[[], None]) -> None:
        """Measure until cancelled; kill the run when it takes the work dir over the quota."""
        assert self.start is not None
        ceiling_bytes = max(self.max_bytes, self.start.bytes)
        ceiling_entries = max(self.max_entries, self.start.entries)
        interval = INTERVAL
        while True:
            await anyio.sleep(interval)
            began = time.monotonic()
            usage = await self._measure()
            interval = max(INTERVAL, 4 * (time.monotonic() - began))
            why = usage.over(ceiling_bytes, ceiling_entries)
            if why is not None and (usage.readable or self.start.readable):
                self.breach = why
                kill()
                return

    async def end(self) -> str | None:
        """A note for the agent when the run left the work dir over its quota."""
        usage = await self._measure()
        why = self.breach or usage.over(self.max_bytes, self.max_entries)
        if why is None:
            return None
        verb = "killed: the work dir" if self.breach else "the work dir now"
        return (f"{verb} {why} (its quota: {self.max_bytes} bytes in {self.max_entries} files "
                "and folders); delete files before writing more")
