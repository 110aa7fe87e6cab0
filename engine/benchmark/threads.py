"""Where a process's CPU goes, thread by thread (Linux ``/proc``; elsewhere nothing).

The ``--http`` bench reports the engine's CPU per turn for the whole process;
split by thread it says which part is the event loop (the driver, recording,
the HTTP client's Python side), which the store's writer thread, and which
the HTTP client's own runtime (pyreqwest's Tokio thread). Python threads are
named as `threading` names them, the loop's thread ``event loop``, and any
other thread by its kernel name (``/proc/self/task/<tid>/comm``).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from pathlib import Path

TASKS = Path("/proc/self/task")
LOOP_THREAD = "event loop"


@dataclass(frozen=True, slots=True)
class ThreadCpu:
    """One thread's name and CPU seconds so far (user and system)."""

    name: str
    cpu_s: float


def thread_cpu() -> dict[int, ThreadCpu] | None:
    """Every live thread of this process by native id; None where /proc is not there.

    Call it from the event loop's thread: that thread is named `LOOP_THREAD`."""
    try:
        tids = [int(t) for t in os.listdir(TASKS)]
    except OSError:
        return None
    python = {t.native_id: t.name for t in threading.enumerate() if t.native_id is not None}
    python[threading.get_native_id()] = LOOP_THREAD
    out: dict[int, ThreadCpu] = {}
    for tid in tids:
        try:
            name = python.get(tid) or (TASKS / str(tid) / "comm").read_text().strip()
            out[tid] = ThreadCpu(name, _cpu_s(TASKS / str(tid)))
        except OSError:  # the thread ended meanwhile
            continue
    return out


def _cpu_s(task: Path) -> float:
    """A thread's time on a CPU: ``schedstat``'s nanoseconds where the kernel keeps
    them, else ``stat``'s user + system clock ticks (10 ms each)."""
    try:
        return int((task / "schedstat").read_text().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        fields = (task / "stat").read_text().rsplit(")", 1)[1].split()  # names hold ")"
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_thread(
    before: dict[int, ThreadCpu] | None, after: dict[int, ThreadCpu] | None
) -> dict[str, float] | None:
    """CPU seconds spent between two `thread_cpu` samples, summed by thread name
    (a thread started in between counts from zero; one that ended in between is
    not there to count: take the second sample while the threads that matter
    still run); None if either is None."""
    if before is None or after is None:
        return None
    spent: dict[str, float] = {}
    for tid, now in after.items():
        then = before.get(tid)
        used = now.cpu_s
        if then is not None and then.name == now.name:
            used -= then.cpu_s
        spent[now.name] = spent.get(now.name, 0.0) + used
    return dict(sorted(spent.items(), key=lambda kv: -kv[1]))


def per_turn_ms(by_thread: dict[str, float] | None, turns: int) -> dict[str, float] | None:
    """`cpu_by_thread`'s seconds as ms a turn."""
    if by_thread is None:
        return None
    return {name: round(s / turns * 1e3, 4) for name, s in by_thread.items()}
