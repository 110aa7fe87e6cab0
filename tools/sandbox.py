"""A bubblewrap jail for untrusted code: no network, read-only system, limits.

    async with Jail(workspace, Limits(wall_seconds=10)) as jail:
        result = await jail.run(["python3", "-"], stdin=b"print(6 * 7)")
        print(result.render())

Each run is ``prlimit <rlimits> -- bwrap <namespaces and mounts> -- argv``:

- every namespace unshared (user, pid, net, ipc, uts, cgroup): no network but
  a private loopback; the jail's processes die with its pid namespace, and
  see (and can signal) nothing else; no further user namespaces inside
  (``--disable-userns``, bubblewrap >= 0.8);
- the host's ``/usr`` (and the merged-usr links ``/bin``, ``/lib``, …) and a few
  files of ``/etc`` read-only, with every Python package folder in them covered
  (`tools._hidden`: no site-/dist-packages, nothing of Drillyard's package
  data); a private ``/proc``; ``/`` and ``/dev`` read-only; size-capped tmpfs
  ``/tmp`` and ``/dev/shm``; the workspace read-write at ``/workspace``;
- rlimits for CPU seconds, address space, processes, file size, open files;
  and, where a cgroup can be made (root, writable cgroupfs: see `tools._cgroup`),
  a cgroup per run capping the memory and processes of the whole jail;
- a disk quota on the workspace (bytes and entries), enforced by the engine
  before, during and after each run (`tools._quota`);
- a wall-clock deadline after which the whole process group is killed;
- stdout/stderr kept up to ``output_bytes`` each, the rest counted and dropped.

When the engine runs as root the jail runs as a fresh unprivileged uid (so the
process limit counts the jail's processes only, and root's files are out of
reach); otherwise as the caller, with the process limit raised by the number
of processes the caller already has. Needs ``bwrap`` (Debian: ``bubblewrap``)
and ``prlimit`` (util-linux) on PATH, and user namespaces in the kernel.

What bounds a run's use of the host, with and without a cgroup: the rlimits
(per process), the tmpfs sizes (``tmp_bytes`` + ``shm_bytes`` of RAM at most:
tmpfs pages are not in RLIMIT_AS), the workspace quota and the wall clock hold
everywhere; the cgroup adds a cap on the memory and processes of all the
jail's processes together (tmpfs pages included), where one can be made.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import anyio
import structlog
from anyio.abc import ByteReceiveStream, Process

from engine.errors import ConfigError
from engine.resources import AsyncResource
from tools._cgroup import RunCgroup
from tools._hidden import hidden_paths, holds_project
from tools._quota import QuotaWatch

log = structlog.get_logger("drillyard.sandbox")

INSIDE = "/workspace"
PACKAGES = "/opt/packages"
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "alternatives", "localtime", "mime.types",
        "fonts", "ssl/openssl.cnf", "matplotlibrc")
# bwrap's own processes see this (readable in the jail's /proc/1/environ): nothing of the host's
_LAUNCH_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
               "LANG": "C.UTF-8"}
# joins the run's cgroup(s) (paths before "--"), then execs the rest
_JOIN = ('pid=$$; while [ "$1" != "--" ]; do echo "$pid" > "$1" || exit 125; shift; done; '
         'shift; exec "$@"')
_DROP_AFTER = 64 * 1024 * 1024  # a run printing more than this (kept or not) is killed


class SandboxUnavailable(RuntimeError):
    """The jail cannot run here (a binary is missing, or namespaces are refused)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """What one run may use. Sizes are in bytes."""

    cpu_seconds: int = 20
    memory_bytes: int = 1024 * 1024 * 1024  # address space per process
    processes: int = 64
    file_bytes: int = 64 * 1024 * 1024  # largest file it may write
    open_files: int = 256
    tmp_bytes: int = 64 * 1024 * 1024  # size of the private /tmp
    shm_bytes: int = 16 * 1024 * 1024  # size of the private /dev/shm
    output_bytes: int = 32 * 1024  # kept of stdout, and of stderr
    wall_seconds: float = 30.0
    workspace_bytes: int = 1024 * 1024 * 1024  # disk the workspace may hold, all runs together
    workspace_files: int = 100_000  # files and folders it may hold


@dataclass(slots=True)
class RunResult:
    """How a run ended and what it printed."""

    exit_code: int | None
    stdout: str
    stderr: str
    timed_out: bool = False
    dropped_bytes: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    over_quota: bool = False  # the run left the workspace over its quota (or was killed so)

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and not self.over_quota

    def render(self) -> str:
        """The result as text for an agent."""
        parts = []
        if self.stdout:
            parts.append(self.stdout.rstrip("\n"))
        if self.stderr:
            parts.append("[stderr]\n" + self.stderr.rstrip("\n"))
        if self.dropped_bytes:
            parts.append(f"[output truncated: {self.dropped_bytes} more bytes not shown]")
        if self.timed_out:
            parts.append(f"[killed: wall-clock limit reached after {self.seconds:.1f} s]")
        elif self.exit_code not in (0, None):
            parts.append(f"[exit code {self.exit_code}]")
        parts.extend(f"[{note}]" for note in self.notes)
        return "\n".join(parts) if parts else "[no output]"


def check_available() -> None:
    """Raise `SandboxUnavailable` naming what is missing."""
    for binary, package in (("bwrap", "bubblewrap"), ("prlimit", "util-linux")):
        if shutil.which(binary) is None:
            raise SandboxUnavailable(
                f"'{binary}' is not on PATH: install the Debian package '{package}' "
                f"(apt-get install -y {package})")


def check_packages(packages: Sequence[str]) -> list[str]:
    """The real paths of package folders for a jail; ConfigError for one that
    would show the jail Drillyard itself (its package data holds answers)."""
    folders = [os.path.realpath(p) for p in packages]
    for folder in folders:
        why = holds_project(folder)
        if why is not None:
            raise ConfigError("code sandbox packages", f"{folder} cannot be shown to the jail: "
                              f"{why}", "give a folder with only the packages the code needs "
                              "(pip install --target DIR numpy pandas)")
    return folders


class Jail(AsyncResource):
    """Runs commands in a bubblewrap jail over ``workspace`` (mounted at ``/workspace``).

    ``ro_binds`` are extra host paths made visible read-only at the same place
    (their package folders covered, like /usr's); ``packages`` are folders of
    Python packages the code may import (a ``pip install --target`` folder),
    mounted read-only at ``/opt/packages/N`` and put on ``PYTHONPATH`` — refused
    when they hold Drillyard itself; ``env`` adds environment variables.
    """

    def __init__(self, workspace: str | Path, limits: Limits | None = None, *,
                 ro_binds: Sequence[str] = (), packages: Sequence[str] = (),
                 env: dict[str, str] | None = None,
                 use_cgroups: bool = True) -> None:
        check_available()
        self.workspace = Path(workspace).resolve()
        self.limits = limits or Limits()
        self.ro_binds = [str(Path(p)) for p in ro_binds]
        self.packages = check_packages(packages)
        self.env = dict(env or {})
        self.uid: int | None = None
        self.hidden: tuple[str, ...] = ()
        self.prepared = False
        self.use_cgroups = use_cgroups
        self._live: dict[Process, RunCgroup | None] = {}

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self.prepare)
        return self

    def prepare(self) -> None:
        """Pick the jail's uid and hand it the workspace (when running as root); find
        what to hide. Blocking: call it in a worker thread."""
        if not self.workspace.is_dir():
            raise SandboxUnavailable(f"the workspace {self.workspace} is not a folder")
        if os.geteuid() == 0 and self.uid is None:
            for parent in self.workspace.parents:  # bwrap runs as the jail's uid: it must get in
                if not parent.stat().st_mode & 0o001:
                    raise SandboxUnavailable(
                        f"the workspace {self.workspace} cannot be reached by the jail's user: "
                        f"{parent} is not searchable by others; put workspaces under "
                        f"{tempfile.gettempdir()} (tempfile.mkdtemp())")
            self.uid = 1_000_000 + secrets.randbelow(1_000_000_000)
        roots = ["/usr", *(os.path.realpath(p) for p in self.ro_binds)]
        roots += [str(p) for p in _real_tops() if not p.is_symlink()]
        self.hidden = hidden_paths(tuple(roots))
        _disable_userns()
        self.refresh_owner()
        self.prepared = True

    def refresh_owner(self) -> None:
        """Give the jail's uid the workspace and the files the engine put there
        (attachments, screenshots, downloads: regular files of ours with one
        name, at the top). Root only; blocking. Nothing is followed, and nothing
        the jail made is touched, so no host file changes hands through a link."""
        if self.uid is None:
            return
        fd = os.open(self.workspace, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchown(fd, self.uid, self.uid)
            me = os.geteuid()
            with os.scandir(fd) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        info = entry.stat(follow_symlinks=False)
                        if (info.st_uid == me and info.st_nlink == 1
                                and stat.S_ISREG(info.st_mode)):
                            os.chown(entry.name, self.uid, self.uid, dir_fd=fd,
                                     follow_symlinks=False)
        finally:
            os.close(fd)

    def command(self, argv: Sequence[str], file_bytes: int | None = None) -> list[str]:
        """The full ``prlimit … bwrap … argv`` command line (``file_bytes``: the
        largest file the run may write, default the limits')."""
        lim = self.limits
        nproc = lim.processes
        if self.uid is None:  # the count (of threads) is per user: leave room for the caller's
            nproc += _threads_of(os.getuid())
        fsize = lim.file_bytes if file_bytes is None else file_bytes
        cmd = ["prlimit", f"--cpu={lim.cpu_seconds}", f"--as={lim.memory_bytes}",
               f"--nproc={nproc}", f"--fsize={fsize}", f"--nofile={lim.open_files}",
               "--core=0", "--",
               "bwrap", "--unshare-all", "--unshare-user", *_disable_userns(),
               "--die-with-parent", "--new-session",
               "--hostname", "sandbox", "--ro-bind", "/usr", "/usr"]
        for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            host = Path("/") / top
            if host.is_symlink():
                cmd += ["--symlink", os.readlink(host), str(host)]
            elif host.is_dir():
                cmd += ["--ro-bind", str(host), str(host)]
        for name in _ETC:
            if (Path("/etc") / name).exists():
                cmd += ["--ro-bind", f"/etc/{name}", f"/etc/{name}"]
        for path in self.ro_binds:
            cmd += ["--ro-bind", path, path]
        for path in self.hidden:  # an empty read-only folder over each package folder
            cmd += ["--size", "4096", "--tmpfs", path, "--remount-ro", path]
        for i, path in enumerate(self.packages):
            cmd += ["--ro-bind", path, f"{PACKAGES}/{i}"]
        cmd += ["--proc", "/proc", "--dev", "/dev",
                "--size", str(lim.shm_bytes), "--tmpfs", "/dev/shm", "--remount-ro", "/dev",
                "--size", str(lim.tmp_bytes), "--tmpfs", "/tmp",
                "--bind", str(self.workspace), INSIDE, "--remount-ro", "/",
                "--chdir", INSIDE, "--clearenv"]
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": INSIDE, "TMPDIR": "/tmp",
               "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
               "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1", **self.env}
        if self.packages:
            inside = [f"{PACKAGES}/{i}" for i in range(len(self.packages))]
            env["PYTHONPATH"] = ":".join([*inside, *filter(None, [env.get("PYTHONPATH")])])
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        return [*cmd, "--", *argv]

    async def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
                  seconds: float | None = None) -> RunResult:
        """Run ``argv`` in the jail (for at most ``seconds``, capped by the limits);
        never raises for what the code inside does."""
        wall = min(seconds, self.limits.wall_seconds) if seconds else self.limits.wall_seconds
        keep = self.limits.output_bytes
        await anyio.to_thread.run_sync(self.refresh_owner if self.prepared else self.prepare)
        quota = QuotaWatch(self.workspace, self.limits.workspace_bytes,
                           self.limits.workspace_files)
        file_bytes = await quota.begin(self.limits.file_bytes)
        started = time.monotonic()
        command, cgroup = self.command(argv, file_bytes), None
        if self.uid is not None and self.use_cgroups and shutil.which("setpriv"):
            cgroup = RunCgroup.create(self.limits.memory_bytes, self.limits.processes)
        if cgroup is not None:  # join the cgroup as root, then drop to the jail's uid
            command = ["/bin/sh", "-c", _JOIN, "sh", *map(str, cgroup.procs), "--", "setpriv",
                       f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", "--",
                       *command]
        try:
            proc = await anyio.open_process(
                command, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                env=_LAUNCH_ENV, cwd="/", start_new_session=True,
                user=self.uid if cgroup is None else None,
                group=self.uid if cgroup is None else None,
                extra_groups=[] if self.uid is not None and cgroup is None else None)
        except BaseException:
            if cgroup is not None:
                cgroup.remove()
            raise
        self._live[proc] = cgroup
        out, err = bytearray(), bytearray()
        dropped = 0
        timed_out = flooded = False

        async def pump(stream: ByteReceiveStream | None, buf: bytearray) -> None:
            nonlocal dropped, flooded
            if stream is None:
                return
            async for chunk in stream:
                room = keep - len(buf)
                buf += chunk[:max(room, 0)]
                dropped += max(len(chunk) - max(room, 0), 0)
                if dropped > _DROP_AFTER:
                    flooded = True
                    _kill(proc)
                    return

        async def feed() -> None:
            if proc.stdin is None or stdin is None:
                return
            try:
                await proc.stdin.send(stdin)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                pass
            finally:
                await proc.stdin.aclose()

        try:
            async with anyio.create_task_group() as watching:
                watching.start_soon(quota.watch, lambda: _kill(proc))
                try:
                    with anyio.move_on_after(wall) as scope:
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(feed)
                            tg.start_soon(pump, proc.stdout, out)
                            tg.start_soon(pump, proc.stderr, err)
                        await proc.wait()
                    timed_out = scope.cancelled_caught
                finally:
                    watching.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                oom_kills = await self._reap(proc)
        over_quota = await quota.end()
        notes = ["killed: output flood"] if flooded else []
        if (proc.returncode is not None and proc.returncode < 0 and not timed_out
                and not quota.breach):
            notes.append(f"killed by signal {signal.Signals(-proc.returncode).name}")
        if proc.returncode == 1 and not out and err.startswith(b"bwrap:"):
            notes.append("the jail itself failed to start")
        if oom_kills:
            notes.append(f"killed: out of memory (the jail may use {self.limits.memory_bytes} "
                         "bytes in all)")
        if over_quota:
            notes.append(over_quota)
        return RunResult(
            exit_code=None if timed_out else proc.returncode,
            stdout=out.decode("utf-8", "replace"), stderr=err.decode("utf-8", "replace"),
            timed_out=timed_out, dropped_bytes=dropped, seconds=time.monotonic() - started,
            notes=notes, over_quota=over_quota is not None)

    async def _reap(self, proc: Process) -> int:
        """Kill what is left of a run; return how many of its processes died of OOM."""
        if proc.returncode is None:
            _kill(proc)
        await proc.wait()
        await proc.aclose()
        cgroup = self._live.pop(proc, None)
        oom_kills = 0
        if cgroup is not None:
            oom_kills = cgroup.oom_kills()
            with anyio.move_on_after(10):
                while cgroup.pids():
                    cgroup.kill_all()
                    await anyio.sleep(0.005)
            cgroup.remove()
        if self.uid is not None and not self._live:
            await _sweep(self.uid)
        return oom_kills

    async def aclose(self) -> None:
        """Kill every run still going."""
        with anyio.CancelScope(shield=True):
            for proc in list(self._live):
                await self._reap(proc)


async def _sweep(uid: int, patience: float = 10.0) -> None:
    """Kill every process of the jail's own uid and wait until they are gone.

    The pid namespace dies with bwrap, but the kernel tears it down
    asynchronously; this makes "the run is over" mean "nothing of it is left".
    """
    with anyio.move_on_after(patience):
        while pids := _pids_of(uid):
            for pid in pids:
                try:
                    fd = os.pidfd_open(pid)
                except OSError:
                    continue
                try:  # the pidfd pins the process: check it is still the jail's, then kill
                    if os.stat(f"/proc/{pid}").st_uid == uid:
                        signal.pidfd_send_signal(fd, signal.SIGKILL)
                except OSError:
                    pass
                finally:
                    os.close(fd)
            await anyio.sleep(0.005)


def _pids_of(uid: int) -> list[int]:
    """Live (not zombie) processes of ``uid``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid != uid:
                    continue
                with open(f"/proc/{entry.name}/stat", "rb") as f:
                    state = f.read().rpartition(b")")[2].split()[0]
            except (OSError, IndexError):
                continue
            if state not in (b"Z", b"X"):
                found.append(int(entry.name))
    return found


def _threads_of(uid: int) -> int:
    count = 0
    for pid in _pids_of(uid):
        with contextlib.suppress(OSError):
            count += len(os.listdir(f"/proc/{pid}/task"))
    return count


def _real_tops() -> list[Path]:
    return [Path("/") / top for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
            if (Path("/") / top).exists()]


@functools.cache
def _disable_userns() -> tuple[str, ...]:
    """``--disable-userns`` where this bubblewrap has it (0.8 and later)."""
    try:
        shown = subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        shown = None
    if shown is not None and "--disable-userns" in shown.stdout + shown.stderr:
        return ("--disable-userns",)
    log.warning("this bubblewrap has no --disable-userns (0.8 or later has it): code in the "
                "jail may make user namespaces of its own")
    return ()


def _kill(proc: Process) -> None:
    """SIGKILL the run's process group (bwrap; its pid namespace goes with it)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
