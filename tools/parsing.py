"""Run a file reader in a killable child process with memory and CPU limits.

    text = parse(read_pdf, data, "report.pdf", deadline=60)   # blocking
    text = await parse_async(read_pdf, data, "report.pdf", deadline=60)

A reader parses bytes an agent may have crafted (a sheet that expands to
millions of cells, a PDF whose pages share one huge stream, an image of 80
megapixels). In a thread such work cannot be stopped: the deadline would
answer the agent while the thread kept parsing and the engine grew. Here the
bytes go to a private temporary folder and a fresh interpreter
(`tools._parse_child`) reads them under ``RLIMIT_AS`` / ``RLIMIT_CPU`` /
``RLIMIT_FSIZE``, in its own session: at the deadline (or when the caller is
cancelled) the whole process group is killed, tesseract included, and the
memory is the kernel's again. At most `PARSE_SLOTS` children run at once.

A reader must be a module-level function (the child imports it by name);
`READERS` in `tools.readers` maps suffixes to them.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from engine.agent import function_name
from tools._parse_child import BOOT
from tools.readers import ReaderUnavailable
from tools.workspace import read_regular, remove_tree

PARSE_SLOTS = max(1, min(4, os.cpu_count() or 1))
_SLOTS = threading.BoundedSemaphore(PARSE_SLOTS)
_ENV_KEEP = ("PATH", "TESSDATA_PREFIX", "LD_LIBRARY_PATH")


@dataclass(frozen=True, slots=True)
class ParseLimits:
    """What one parse may use. Sizes are in bytes."""

    memory_bytes: int = 2 * 1024 ** 3  # address space of the child (and of tesseract)
    cpu_seconds: int = 120
    text_bytes: int = 64 * 1024 ** 2  # the text it may hand back


LIMITS = ParseLimits()
children_started = 0  # how many parser children this process has started (a statistic)


class ReaderNotImportable(ValueError):
    """A reader the child cannot import by name (a lambda, a local function)."""


class _Job:
    """One child parse; `run` blocks (in a worker thread), `kill` ends it from anywhere."""

    def __init__(self, reader: Callable[[Path], str], data: bytes, name: str,
                 deadline: float, limits: ParseLimits) -> None:
        target = function_name(reader)
        if target is None or target.startswith("__main__:"):
            raise ReaderNotImportable(
                f"the reader {reader!r} for {Path(name).suffix!r} files cannot be run in the "
                "parser process: make it a module-level function of an importable module")
        self.target, self.data, self.name = target, data, name
        self.deadline, self.limits = deadline, limits
        self.proc: subprocess.Popen[bytes] | None = None
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._cancelled = False
        self._reaped = False

    def kill(self) -> None:
        """Stop the parse (the caller gave up on it)."""
        with self._lock:
            self._cancelled = True
            self._kill_group()

    def _kill_group(self) -> None:
        # only while the child is unreaped (alive or a zombie): its pid, the id of
        # its process group, cannot have been reused
        if self.proc is not None and not self._reaped:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def run(self) -> str:
        try:
            if not _SLOTS.acquire(timeout=self.deadline):
                raise TimeoutError(f"no parser slot was free within {self.deadline:g}s")
            try:
                return self._run()
            finally:
                _SLOTS.release()
        finally:
            self.done.set()

    def _run(self) -> str:
        global children_started
        folder = Path(tempfile.mkdtemp(prefix="drillyard-parse-"))
        try:
            source = folder / (Path(self.name).name or "input")
            out = folder / "text.out"
            source.write_bytes(self.data)
            lim = self.limits
            argv = [sys.executable, "-I", "-c", BOOT, json.dumps(sys.path), self.target,
                    str(source), str(out), str(lim.memory_bytes), str(lim.cpu_seconds),
                    str(lim.text_bytes)]
            env = {k: os.environ[k] for k in _ENV_KEEP if k in os.environ}
            env.update(LANG="C.UTF-8", HOME=str(folder), TMPDIR=str(folder),
                       OMP_THREAD_LIMIT="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
            with open(folder / "err.out", "wb") as err, self._lock:
                if self._cancelled:
                    raise TimeoutError("cancelled before it started")
                self.proc = subprocess.Popen(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                             stdout=subprocess.DEVNULL, stderr=err,
                                             start_new_session=True)
                children_started += 1
            ended = _wait_unreaped(self.proc.pid, self.deadline)
            with self._lock:
                self._kill_group()  # at the deadline; and whatever it started (tesseract)
                code = self.proc.wait()
                self._reaped = True
            if not ended:
                raise TimeoutError(f"reading {self.name} did not finish within "
                                   f"{self.deadline:g}s")
            if self._cancelled:
                raise TimeoutError(f"reading {self.name} was stopped")
            return self._result(code, out, folder / "err.out")
        finally:
            remove_tree(folder)

    def _result(self, code: int, out: Path, err: Path) -> str:
        lim = self.limits
        if code == 0:
            data = read_regular(out, lim.text_bytes)
            return data.decode("utf-8", "replace")
        message = read_regular(err, 64 * 1024).decode("utf-8", "replace")
        kind, _, detail = message.partition("\n")
        if code == 2 and kind == "ReaderUnavailable":
            raise ReaderUnavailable(detail)
        if code == 2 and kind == "ValueError":
            raise ValueError(detail)
        if code == 2:
            raise ValueError(f"{kind}: {detail}" if detail else kind)
        if code == 3:
            raise ValueError(f"reading {self.name} needs more memory than the "
                             f"{lim.memory_bytes} bytes a reader may use")
        if code in (-signal.SIGXCPU, -signal.SIGKILL):
            raise ValueError(f"reading {self.name} used more than the {lim.cpu_seconds} CPU "
                             "seconds a reader may use")
        if code == -signal.SIGXFSZ:
            raise ValueError(f"the text of {self.name} is longer than the {lim.text_bytes} "
                             "bytes a reader may hand back")
        why = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        raise ValueError(f"the reader of {self.name} died ({why})")


def _wait_unreaped(pid: int, seconds: float) -> bool:
    """Wait until ``pid`` exits, leaving it a zombie (not reaped); False at the timeout."""
    fd = os.pidfd_open(pid)
    try:
        return bool(select.select([fd], [], [], seconds)[0])
    finally:
        os.close(fd)


def parse(reader: Callable[[Path], str], data: bytes, name: str, *, deadline: float = 60.0,
          limits: ParseLimits = LIMITS) -> str:
    """The text ``reader`` makes of ``data`` (a file named ``name``), parsed in a
    child process; blocks. Raises ValueError for what cannot be read and
    TimeoutError past ``deadline`` seconds (the child is killed by then)."""
    return _Job(reader, data, name, deadline, limits).run()


async def parse_async(reader: Callable[[Path], str], data: bytes, name: str, *,
                      deadline: float = 60.0, limits: ParseLimits = LIMITS) -> str:
    """`parse` in a worker thread; cancelling the caller kills the child at once."""
    job = _Job(reader, data, name, deadline, limits)
    try:
        return await anyio.to_thread.run_sync(job.run, abandon_on_cancel=True)
    except anyio.get_cancelled_exc_class():
        job.kill()
        with anyio.CancelScope(shield=True):  # the thread removes the child's folder
            await anyio.to_thread.run_sync(job.done.wait, deadline)
        raise
