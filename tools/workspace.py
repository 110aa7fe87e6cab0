"""A rollout's work dir as hostile input: confined opens, bounded walks, sure removal.

Code in the jail owns the work dir, so anything in it may be a symlink, a FIFO,
a socket, a tree thousands of folders deep, or half a million files. The
engine therefore touches it only through these functions, all blocking and
meant for a worker thread (`anyio.to_thread`), never the event loop:

- `open_inside` / `read_inside`: a file by a relative name, every folder on the
  way opened with ``O_NOFOLLOW`` relative to the one before (no symlink is
  followed, no ``..``), the file itself ``O_NONBLOCK`` (a FIFO never blocks the
  open) and then checked to be a regular file with one name (a hard link could
  lead outside);
- `write_inside`: a new file written under a temporary name and renamed into
  place, refused when the name holds anything but a regular file;
- `scan`: an iterative walk holding one folder open at a time, stopped after
  ``max_entries``; it counts disk use (the workspace quota) and lists files;
- `remove_tree`: iterative, as deep as the tree goes, through unreadable and
  unwritable folders, FIFOs and sockets; it reports whether the tree is gone.

`resolve_inside` remains for host paths; `bounded` and `in_thread` run a tool's
work under a deadline.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import anyio

from engine.environment import Observation

T = TypeVar("T")

MAX_DEPTH = 64
"""Folders below the work dir the file tools go (the quota's scan goes all the way)."""
_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_BATCH = 4096


class OutsideWorkspace(ValueError):
    """A path that resolves outside the rollout's work dir."""


class NotAFile(ValueError):
    """A name in the work dir that is not a plain regular file (FIFO, socket, link, …)."""


def resolve_inside(root: Path, name: str) -> Path:
    """The real path of ``name`` (relative to ``root``), refused if it is outside."""
    if not name or "\x00" in name:
        raise OutsideWorkspace("give a file name from list_files")
    root = root.resolve()
    path = (root / name).resolve()
    if path != root and root not in path.parents:
        raise OutsideWorkspace(f"'{name}' is outside the work dir; only its files can be read")
    return path


def parts_of(name: str) -> list[str]:
    """The folders and file of a relative name; refuse absolute paths, ``..`` and NUL."""
    if not name or "\x00" in name:
        raise OutsideWorkspace("give a file name from list_files")
    if name.startswith("/"):
        raise OutsideWorkspace(f"'{shown(name)}' is outside the work dir; give a name relative "
                               "to it (as list_files shows)")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise OutsideWorkspace(f"'{shown(name)}' leads out of the work dir ('..'); only its "
                               "files can be read")
    if not parts:
        raise OutsideWorkspace("give a file name from list_files")
    if len(parts) > MAX_DEPTH + 1:
        raise OutsideWorkspace(f"'{shown(name, 80)}' is more than {MAX_DEPTH} folders deep; "
                               "the file tools do not go that far")
    return parts


def shown(name: str, limit: int = 300) -> str:
    """A file name as text an agent (and the trace store) can hold: bytes that are
    not UTF-8 appear as ``\\xNN``; long names are cut."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return text if len(text) <= limit else text[:limit] + "…"


def _open_dir(name: str, dir_fd: int) -> int:
    try:
        return os.open(name, _DIR, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (20, 40):  # ENOTDIR, ELOOP: a file or a symlink on the way
            raise NotAFile(f"'{shown(name)}' is not a folder") from None
        raise


def open_inside(root: Path, name: str) -> tuple[int, os.stat_result]:
    """An open fd of the regular file ``root/name`` and its stat; raise
    `OutsideWorkspace`, `NotAFile` or `FileNotFoundError`."""
    parts = parts_of(name)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            inner = _open_dir(part, fd)
            os.close(fd)
            fd = inner
        try:
            file_fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                              | os.O_NOCTTY | os.O_CLOEXEC, dir_fd=fd)
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: the name is a symlink
                raise NotAFile(f"'{shown(name)}' is a symbolic link; read the file it names "
                               "instead (list_files shows the files)") from None
            if exc.errno == 6:  # ENXIO: a socket
                raise NotAFile(f"'{shown(name)}' is not a regular file") from None
            raise
    finally:
        os.close(fd)
    info = os.fstat(file_fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"'{shown(name)}' is not a regular file"
    elif info.st_nlink > 1:
        problem = (f"'{shown(name)}' has {info.st_nlink} names (hard links); only files with "
                   "one name are read, so nothing outside the work dir is read through a link")
    if problem:
        os.close(file_fd)
        raise NotAFile(problem)
    return file_fd, info


def read_fd(fd: int, size: int, max_bytes: int, label: str) -> bytes:
    """Up to ``max_bytes`` of an open regular file, refused when it is (or grows) larger."""
    if size > max_bytes:
        raise ValueError(f"{label} is {size} bytes, more than the {max_bytes} limit")
    chunks, total = [], 0
    while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise ValueError(f"{label} grew past the {max_bytes} bytes limit while read")
    return b"".join(chunks)


def read_inside(root: Path, name: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``root/name`` (see `open_inside`)."""
    fd, info = open_inside(root, name)
    try:
        return read_fd(fd, info.st_size, max_bytes, shown(name))
    finally:
        os.close(fd)


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of a host file that must be regular (the last name is not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (6, 40):
            raise NotAFile(f"{path.name} is not a regular file") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotAFile(f"{path.name} is not a regular file")
        return read_fd(fd, info.st_size, max_bytes, path.name)
    finally:
        os.close(fd)


def write_inside(root: Path, name: str, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` as ``root/name`` (a plain name): to a fresh temporary file,
    then renamed over the name. Never follows a link, never opens a FIFO."""
    if not name or "/" in name or name in (".", "..") or "\x00" in name:
        raise ValueError(f"'{shown(name)}' is not a plain file name")
    dir_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    tmp = f".{name[:200]}.{secrets.token_hex(4)}.part"
    try:
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISREG(os.lstat(name, dir_fd=dir_fd).st_mode):
                raise NotAFile(f"'{shown(name)}' exists and is not a regular file")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=dir_fd)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        try:
            os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)


@dataclass(slots=True)
class Scan:
    """What a walk of a work dir found. ``bytes`` is disk use (allocated blocks)."""

    bytes: int = 0
    entries: int = 0
    depth: int = 0
    files: list[str] = field(default_factory=list)
    more_files: int = 0  # regular files seen but not listed
    complete: bool = True  # False: stopped at max_entries, or the tree moved under it
    unreadable: int = 0  # folders that could not be opened


def _ident(fd: int) -> tuple[int, int]:
    info = os.fstat(fd)
    return info.st_dev, info.st_ino


def scan(root: Path, *, max_entries: int, list_files: int = 0,
         list_depth: int = MAX_DEPTH) -> Scan:
    """Walk ``root`` without following links, one folder open at a time (the
    walk climbs back with ``..``, checked to be the folder it came from).

    Counts entries and their disk use, and lists up to ``list_files`` regular
    files (relative names, at most ``list_depth`` folders deep)."""
    out = Scan()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stack: list[tuple[list[str], tuple[int, int]]] = []
    path: list[str] = []
    try:
        pending = _read_entries(fd, path, out, list_files, list_depth)
        while out.complete:
            if out.entries > max_entries:
                out.complete = False
            elif pending:
                name = pending.pop()
                try:
                    child = os.open(name, _DIR, dir_fd=fd)
                except OSError:
                    out.unreadable += 1
                    continue
                stack.append((pending, _ident(fd)))
                path.append(name)
                os.close(fd)
                fd = child
                out.depth = max(out.depth, len(path))
                pending = _read_entries(fd, path, out, list_files, list_depth)
            elif stack:
                pending, expected = stack.pop()
                path.pop()
                parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = parent
                if _ident(fd) != expected:  # the tree was moved while walked: stop here
                    out.complete = False
            else:
                break
    finally:
        os.close(fd)
    out.files.sort()
    return out


def _read_entries(fd: int, path: list[str], out: Scan, list_files: int,
                  list_depth: int) -> list[str]:
    """Count the entries of one folder; list its files; return its subfolders."""
    folders: list[str] = []
    try:
        entries = os.scandir(fd)
    except OSError:
        out.unreadable += 1
        return folders
    with entries:
        for entry in entries:
            out.entries += 1
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            out.bytes += info.st_blocks * 512
            if stat.S_ISDIR(info.st_mode):
                folders.append(entry.name)
            elif stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                if len(out.files) < list_files and len(path) < list_depth:
                    out.files.append(shown("/".join([*path, entry.name]), 1000))
                else:
                    out.more_files += 1
    return folders


def remove_tree(path: Path) -> bool:
    """Remove ``path`` and everything under it, however deep, whatever it holds;
    True when it is gone. Never raises: what cannot be removed stays and the
    answer is False. Call it when nothing else writes in the tree."""
    with contextlib.suppress(OSError):
        parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if stat.S_ISDIR(os.lstat(path.name, dir_fd=parent).st_mode):
                _empty(parent, path.name)
                os.rmdir(path.name, dir_fd=parent)
            else:
                os.unlink(path.name, dir_fd=parent)
        finally:
            os.close(parent)
    return not os.path.lexists(path)


def _open_for_removal(name: str, dir_fd: int) -> int | None:
    """Open a folder to empty it, making it readable first if it is not (not root)."""
    for _ in range(2):
        try:
            return os.open(name, _DIR, dir_fd=dir_fd)
        except FileNotFoundError:
            return None
        except PermissionError:
            handle = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC,
                             dir_fd=dir_fd)
            try:
                os.chmod(f"/proc/self/fd/{handle}", 0o700)
            finally:
                os.close(handle)
        except OSError as exc:
            if exc.errno in (20, 40):  # no longer a folder: remove it as a file
                os.unlink(name, dir_fd=dir_fd)
                return None
            raise
    return os.open(name, _DIR, dir_fd=dir_fd)


def _clear(fd: int) -> list[str]:
    """Unlink every non-folder in an open folder; return its subfolders. What
    cannot be unlinked is left (the folder then stays, and so does the tree)."""
    if os.geteuid() != 0:  # our own folder, maybe made read-only: unlink needs write
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o700)
    folders: set[str] = set()
    stuck: set[str] = set()
    while True:
        batch = []
        with os.scandir(fd) as entries:
            for entry in entries:
                if entry.name in folders or entry.name in stuck:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    folders.add(entry.name)
                else:
                    batch.append(entry.name)
                if len(batch) >= _BATCH:
                    break
        if not batch:
            return sorted(folders)
        for name in batch:
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError:
                stuck.add(name)


def _empty(parent: int, name: str) -> None:
    """Empty the folder ``name`` (in ``parent``), one folder open at a time."""
    fd = _open_for_removal(name, parent)
    if fd is None:
        return
    stack: list[tuple[list[str], str, tuple[int, int]]] = []
    try:
        pending = _clear(fd)
        while True:
            if pending:
                child_name = pending.pop()
                try:
                    child = _open_for_removal(child_name, fd)
                except OSError:
                    continue  # left in place: the removal reports the tree as not gone
                if child is None:
                    continue
                stack.append((pending, child_name, _ident(fd)))
                os.close(fd)
                fd = child
                pending = _clear(fd)
            elif stack:
                pending, child_name, expected = stack.pop()
                up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
                os.close(fd)
                fd = up
                if _ident(fd) != expected:
                    raise OSError(f"the tree moved while it was removed (at {child_name!r})")
                with contextlib.suppress(OSError):
                    os.rmdir(child_name, dir_fd=fd)
            else:
                return
    finally:
        os.close(fd)


async def bounded(fn: Callable[[], Awaitable[T]], deadline: float, what: str) -> T | Observation:
    """Await ``fn()`` under a deadline; past it, an error observation instead."""
    try:
        with anyio.fail_after(deadline):
            return await fn()
    except TimeoutError:
        return Observation.error(f"{what} did not finish within {deadline:g}s")


async def in_thread(fn: Callable[..., T], *args: Any, deadline: float,
                    what: str) -> T | Observation:
    """Run blocking work (a query, a walk of the work dir) in a worker thread under
    a deadline. The thread cannot be killed: give it only bounded work (parsing
    runs in a child process: `tools.parsing`)."""
    return await bounded(
        lambda: anyio.to_thread.run_sync(lambda: fn(*args), abandon_on_cancel=True), deadline, what
    )
