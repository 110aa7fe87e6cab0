"""File tools: ``list_files`` and ``read_file`` over a rollout's work dir.

The readers (pdf, xlsx, xls, csv/tsv, docx, pptx, plain text, images with
OCR) are in `tools.readers`; each runs in a child process with memory and
CPU limits that is killed at the deadline (`tools.parsing`). Files are read
through `tools.workspace`: never following a link, never opening a FIFO or
a device, at most `MAX_FILE_BYTES`; Office files that would unpack to more
than `MAX_UNPACKED_BYTES` or hold more than `MAX_ZIP_MEMBERS` members (zip
bombs) are refused; long text is returned a page at a time. Texts are cached
by content, so the k samples of a task parse an attachment once.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import anyio

from engine.environment import Observation, ToolSpec
from engine.tasks import TaskView
from engine.toolkit import FunctionTool
from tools._toolbox import ToolboxBase
from tools.parsing import ParseLimits, parse, parse_async
from tools.readers import (
    IMAGE_SUFFIXES,
    MAX_CHARS,
    MAX_FILE_BYTES,
    MAX_IMAGE_PIXELS,
    MAX_PAGES,
    MAX_ROWS,
    MAX_UNPACKED_BYTES,
    MAX_ZIP_MEMBERS,
    READERS,
    TEXT_SUFFIXES,
    ZIP_SUFFIXES,
    ReaderUnavailable,
    check_zip,
    ocr_available,
    read_csv,
    read_docx,
    read_image,
    read_pdf,
    read_pptx,
    read_text,
    read_xls,
    read_xlsx,
)
from tools.workspace import (
    MAX_DEPTH,
    NotAFile,
    OutsideWorkspace,
    read_inside,
    read_regular,
    scan,
    shown,
)

__all__ = [
    "IMAGE_SUFFIXES", "MAX_CHARS", "MAX_FILE_BYTES", "MAX_IMAGE_PIXELS", "MAX_PAGES",
    "MAX_ROWS", "MAX_UNPACKED_BYTES", "MAX_ZIP_MEMBERS", "READERS", "TEXT_SUFFIXES",
    "ZIP_SUFFIXES", "FileTools", "ReaderUnavailable", "check_zip", "extract_text",
    "ocr_available", "page", "read_csv", "read_docx", "read_image", "read_pdf", "read_pptx",
    "read_text", "read_xls", "read_xlsx", "text_of", "text_of_async",
]

LIST_FILES = 500  # names list_files shows
LIST_ENTRIES = 50_000  # entries it looks at before it stops

_CACHE: OrderedDict[tuple[str, str], str] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_ENTRIES = 64


def _reader_for(name: str) -> Any:
    suffix = Path(name).suffix.lower()
    reader = READERS.get(suffix)
    if reader is None:
        raise ValueError(f"no reader for '{suffix}' files; readable: "
                         f"{', '.join(sorted(READERS))}")
    return reader


def _cached(data: bytes, name: str) -> tuple[tuple[str, str], str | None]:
    key = (hashlib.sha256(data).hexdigest(), Path(name).suffix.lower())
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return key, _CACHE[key]
    return key, None


def _remember(key: tuple[str, str], text: str) -> str:
    with _CACHE_LOCK:
        _CACHE[key] = text
        while len(_CACHE) > CACHE_ENTRIES:
            _CACHE.popitem(last=False)
    return text


def text_of(data: bytes, name: str, *, deadline: float = 60.0,
            limits: ParseLimits | None = None) -> str:
    """The text of a file's bytes by its name's suffix (cached by content); blocks.
    Raises ValueError for what cannot be read, TimeoutError past the deadline."""
    reader = _reader_for(name)
    key, text = _cached(data, name)
    if text is not None:
        return text
    return _remember(key, parse(reader, data, name, deadline=deadline,
                                **({"limits": limits} if limits else {})))


async def text_of_async(data: bytes, name: str, *, deadline: float = 60.0,
                        limits: ParseLimits | None = None) -> str:
    """`text_of` for the event loop: the parse is killed when the caller is cancelled."""
    reader = _reader_for(name)
    key, text = _cached(data, name)
    if text is not None:
        return text
    return _remember(key, await parse_async(reader, data, name, deadline=deadline,
                                            **({"limits": limits} if limits else {})))


def extract_text(path: Path, deadline: float = 60.0) -> str:
    """The text of one host file by its suffix (blocking); raise ValueError for
    what cannot be read. The file must be regular and at most `MAX_FILE_BYTES`."""
    _reader_for(path.name)
    return text_of(read_regular(path, MAX_FILE_BYTES), path.name, deadline=deadline)


_NONE = "no files are attached to this task"


class FileTools(ToolboxBase):
    """Toolbox: ``list_files`` and ``read_file`` over the rollout's work dir."""

    def __init__(self, deadline: float = 60.0, limits: ParseLimits | None = None) -> None:
        self.deadline = deadline
        self.limits = limits
        self.root: Path | None = None
        self._tools = {t.name: t for t in (FunctionTool(self.list_files, "list_files"),
                                           FunctionTool(self.read_file, "read_file"))}

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self._tools.values()]

    async def start(self, task: TaskView, workspace: Path) -> None:
        self.root = workspace

    async def call(self, name: str, arguments: dict[str, Any]) -> Observation:
        return await self._tools[name](arguments)

    async def list_files(self) -> str:
        """List the files attached to the task (names to pass to read_file)."""
        return await anyio.to_thread.run_sync(self._listing) if self.root else _NONE

    def _listing(self) -> str:
        assert self.root is not None
        found = scan(self.root, max_entries=LIST_ENTRIES, list_files=LIST_FILES)
        if not found.files:
            return _NONE
        notes = []
        if found.more_files:
            notes.append(f"[{found.more_files} more files not listed]")
        if not found.complete:
            notes.append(f"[listing stopped after {LIST_ENTRIES} entries]")
        if found.depth > MAX_DEPTH:
            notes.append(f"[folders deeper than {MAX_DEPTH} levels are not listed]")
        return "\n".join(found.files + notes)

    async def read_file(self, path: str, start: int = 0, max_chars: int = MAX_CHARS) -> Observation:
        """Read an attached file as text: pdf, xlsx, csv, docx, pptx, txt, json, xml, py, images.

        Long text comes a page at a time: pass ``start`` to read on.
        """
        if self.root is None:
            return Observation.error("no work dir: the environment was not reset")
        label = shown(path)
        try:
            _reader_for(path)
            data = await anyio.to_thread.run_sync(read_inside, self.root, path, MAX_FILE_BYTES)
            with anyio.fail_after(self.deadline):
                text = await text_of_async(data, path, deadline=self.deadline,
                                           limits=self.limits)
        except (OutsideWorkspace, NotAFile) as exc:
            return Observation.error(str(exc))
        except FileNotFoundError:
            return Observation.error(f"no file '{label}'; the files are: {await self.list_files()}")
        except TimeoutError:
            return Observation.error(f"reading {label} did not finish within {self.deadline:g}s")
        except Exception as exc:  # a broken or unsupported file: the agent's observation
            return Observation.error(f"cannot read {label}: {exc}")
        return Observation(page(text, start, max_chars, f"file {label}"))


def page(text: str, start: int, max_chars: int, label: str) -> str:
    """A window of ``text`` with a note on how to read on."""
    start = max(0, start)
    max_chars = max(100, min(max_chars, 4 * MAX_CHARS))
    chunk = text[start:start + max_chars]
    end = start + len(chunk)
    if start == 0 and end >= len(text):
        return f"{label}:\n{chunk}"
    more = f"; read on with start={end}" if end < len(text) else ""
    return f"{label} (characters {start}-{end} of {len(text)}{more}):\n{chunk}"
