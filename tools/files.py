"""File readers: the text an agent can use out of a rollout's attachments.

pdf (pypdf), xlsx (openpyxl), xls (xlrd), csv/tsv, docx (python-docx), pptx
(python-pptx), plain text (txt, json, jsonl, xml, py, md, html, …) and images
(Pillow for size and mode, tesseract OCR through pytesseract where both are
installed; otherwise the reader says OCR is unavailable). Files larger than
`MAX_FILE_BYTES` are refused, and so are Office files (zip archives) that
would unpack to more than `MAX_UNPACKED_BYTES` or hold more than
`MAX_ZIP_MEMBERS` members (zip bombs); long text is returned a page at a time.
Only files inside the rollout's work dir can be read.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import io
import shutil
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.environment import Observation, ToolSpec
from engine.tasks import TaskView
from engine.toolkit import FunctionTool
from tools._toolbox import ToolboxBase
from tools.workspace import OutsideWorkspace, files_in, in_thread, resolve_inside

MAX_FILE_BYTES = 20 * 1024 * 1024
MAX_CHARS = 8000
MAX_ROWS = 2000
MAX_PAGES = 200
MAX_UNPACKED_BYTES = 200 * 1024 * 1024  # an Office file's members, declared sizes summed
MAX_ZIP_MEMBERS = 10_000
ZIP_SUFFIXES = {".xlsx", ".docx", ".pptx"}
TEXT_SUFFIXES = {".txt", ".json", ".jsonl", ".jsonld", ".xml", ".py", ".md", ".html", ".htm",
                 ".yaml", ".yml", ".toml", ".ini", ".log", ".js", ".css", ".sql", ".sh", ".pdb",
                 ".tex", ".rst"}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".tif", ".tiff", ".webp"}


class ReaderUnavailable(RuntimeError):
    """The package a reader needs is not installed."""


def _need(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ReaderUnavailable(f"reading this file type needs the package '{package}' "
                                f"(pip install {package})") from exc


def read_pdf(path: Path) -> str:
    pypdf = _need("pypdf", "pypdf")
    reader = pypdf.PdfReader(str(path))
    pages = []
    for i, page in enumerate(reader.pages[:MAX_PAGES], start=1):
        pages.append(f"--- page {i} ---\n{(page.extract_text() or '').strip()}")
    if len(reader.pages) > MAX_PAGES:
        pages.append(f"[{len(reader.pages) - MAX_PAGES} more pages not read]")
    return "\n".join(pages)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _table(rows: list[list[str]]) -> str:
    return "\n".join(" | ".join(r) for r in rows)


def read_xlsx(path: Path) -> str:
    openpyxl = _need("openpyxl", "openpyxl")
    book = openpyxl.load_workbook(str(path), data_only=True)
    out = []
    for sheet in book.worksheets:
        rows: list[list[str]] = []
        colours: list[str] = []
        for row in sheet.iter_rows():
            if len(rows) >= MAX_ROWS:
                rows.append([f"[more rows not read; the sheet has {sheet.max_row}]"])
                break
            rows.append([_cell(c.value) for c in row])
            for c in row:
                rgb = getattr(getattr(c.fill, "fgColor", None), "rgb", None)
                if c.fill is not None and c.fill.fill_type == "solid" and isinstance(rgb, str):
                    colours.append(f"{c.coordinate}={rgb[-6:]}")
        out.append(f"--- sheet '{sheet.title}' ({sheet.max_row} rows x {sheet.max_column} "
                   f"columns) ---\n{_table(rows)}")
        if colours:
            out.append("cell fill colours: " + ", ".join(colours))
    book.close()
    return "\n".join(out)


def read_xls(path: Path) -> str:
    xlrd = _need("xlrd", "xlrd")
    book = xlrd.open_workbook(str(path))
    out = []
    for sheet in book.sheets():
        rows = [[_cell(sheet.cell_value(r, c)) for c in range(sheet.ncols)]
                for r in range(min(sheet.nrows, MAX_ROWS))]
        out.append(f"--- sheet '{sheet.name}' ({sheet.nrows} rows x {sheet.ncols} columns) ---\n"
                   f"{_table(rows)}")
    return "\n".join(out)


def read_csv(path: Path) -> str:
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with contextlib.suppress(csv.Error):
        delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|").delimiter
    rows = list(csv.reader(io.StringIO(text), delimiter=delimiter))
    shown = rows[:MAX_ROWS]
    more = f"\n[{len(rows) - MAX_ROWS} more rows not read]" if len(rows) > MAX_ROWS else ""
    return f"({len(rows)} rows)\n{_table(shown)}{more}"


def read_docx(path: Path) -> str:
    docx = _need("docx", "python-docx")
    document = docx.Document(str(path))
    parts = [p.text for p in document.paragraphs if p.text.strip()]
    for i, table in enumerate(document.tables, start=1):
        rows = [[cell.text.strip() for cell in row.cells] for row in table.rows]
        parts.append(f"--- table {i} ---\n{_table(rows)}")
    return "\n".join(parts)


def read_pptx(path: Path) -> str:
    pptx = _need("pptx", "python-pptx")
    deck = pptx.Presentation(str(path))
    parts = []
    for i, slide in enumerate(deck.slides, start=1):
        texts = []
        for shape in slide.shapes:
            if shape.has_text_frame and shape.text_frame.text.strip():
                texts.append(shape.text_frame.text.strip())
            if getattr(shape, "has_table", False) and shape.has_table:
                rows = [[c.text.strip() for c in row.cells] for row in shape.table.rows]
                texts.append(_table(rows))
        if slide.has_notes_slide and slide.notes_slide.notes_text_frame.text.strip():
            texts.append("notes: " + slide.notes_slide.notes_text_frame.text.strip())
        parts.append(f"--- slide {i} ---\n" + "\n".join(texts))
    return "\n".join(parts)


def ocr_available() -> bool:
    """True when tesseract and pytesseract are both installed."""
    if shutil.which("tesseract") is None:
        return False
    try:
        importlib.import_module("pytesseract")
    except ImportError:
        return False
    return True


def read_image(path: Path) -> str:
    pil = _need("PIL.Image", "pillow")
    with pil.open(str(path)) as image:
        head = f"image: {image.format}, {image.width}x{image.height} pixels, mode {image.mode}"
        if not ocr_available():
            return (f"{head}\nOCR unavailable: install the tesseract-ocr system package and "
                    "pytesseract to read text in images")
        import pytesseract

        text = pytesseract.image_to_string(image.convert("RGB"), timeout=30).strip()
    return f"{head}\ntext found by OCR:\n{text or '(none)'}"


def read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8", errors="replace")


READERS: dict[str, Callable[[Path], str]] = {
    ".pdf": read_pdf, ".xlsx": read_xlsx, ".xlsm": read_xlsx, ".xls": read_xls,
    ".csv": read_csv, ".tsv": read_csv, ".docx": read_docx, ".pptx": read_pptx,
    **dict.fromkeys(TEXT_SUFFIXES, read_text), **dict.fromkeys(IMAGE_SUFFIXES, read_image),
}


_CACHE: OrderedDict[tuple[str, str], str] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_ENTRIES = 64


def check_zip(path: Path) -> None:
    """Refuse an Office file that is not a zip or would unpack too big.

    Python's zipfile (under openpyxl, python-docx, python-pptx) never inflates
    a member past its declared size, so summing declared sizes bounds the work."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise ValueError(f"{path.name} is not a valid {path.suffix} file (not a zip archive: "
                         f"{exc})") from None
    if len(members) > MAX_ZIP_MEMBERS:
        raise ValueError(f"{path.name} holds {len(members)} zip members, more than the "
                         f"{MAX_ZIP_MEMBERS} limit")
    unpacked = sum(m.file_size for m in members)
    if unpacked > MAX_UNPACKED_BYTES:
        raise ValueError(f"{path.name} would unpack to {unpacked} bytes, more than the "
                         f"{MAX_UNPACKED_BYTES} limit (a zip bomb?)")


def extract_text(path: Path) -> str:
    """The text of one file by its suffix; raise ValueError for what cannot be read.

    Texts are cached by content (the k samples of a task read copies of the
    same attachment): the last `CACHE_ENTRIES` files are parsed only once."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"{path.name} is {size} bytes, more than the {MAX_FILE_BYTES} limit")
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"no reader for '{path.suffix}' files; readable: "
                         f"{', '.join(sorted(READERS))}")
    key = (hashlib.sha256(path.read_bytes()).hexdigest(), path.suffix.lower())
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    if key[1] in ZIP_SUFFIXES:  # only files about to be parsed: a cached text passed
        check_zip(path)
    text = reader(path)
    with _CACHE_LOCK:
        _CACHE[key] = text
        while len(_CACHE) > CACHE_ENTRIES:
            _CACHE.popitem(last=False)
    return text


class FileTools(ToolboxBase):
    """Toolbox: ``list_files`` and ``read_file`` over the rollout's work dir."""

    def __init__(self, deadline: float = 60.0) -> None:
        self.deadline = deadline
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

    def list_files(self) -> str:
        """List the files attached to the task (names to pass to read_file)."""
        names = files_in(self.root) if self.root else []
        return "\n".join(names) if names else "no files are attached to this task"

    async def read_file(self, path: str, start: int = 0, max_chars: int = MAX_CHARS) -> Observation:
        """Read an attached file as text: pdf, xlsx, csv, docx, pptx, txt, json, xml, py, images.

        Long text comes a page at a time: pass ``start`` to read on.
        """
        if self.root is None:
            return Observation.error("no work dir: the environment was not reset")
        try:
            real = resolve_inside(self.root, path)
        except OutsideWorkspace as exc:
            return Observation.error(str(exc))
        if not real.is_file():
            return Observation.error(f"no file '{path}'; the files are: {self.list_files()}")
        try:
            text = await in_thread(extract_text, real, deadline=self.deadline,
                                   what=f"reading {path}")
        except Exception as exc:  # a broken or unsupported file: the agent's observation
            return Observation.error(f"cannot read {path}: {exc}")
        if isinstance(text, Observation):
            return text
        return Observation(page(text, start, max_chars, f"file {path}"))


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
