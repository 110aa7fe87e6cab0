"""The readers: text out of one file by its suffix. Run in a child process.

pdf (pypdf), xlsx (openpyxl), xls (xlrd), csv/tsv, docx (python-docx), pptx
(python-pptx), plain text (txt, json, jsonl, xml, py, md, html, …) and images
(Pillow for size and mode, tesseract OCR through pytesseract where both are
installed; otherwise the reader says OCR is unavailable). A reader is
``reader(path) -> str`` raising ValueError for what it cannot read; `READERS`
maps suffixes to readers (a module-level function, so the parser child of
`tools.parsing` can import it by name). This module imports nothing of the
engine: the child starts fast.
"""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
MAX_IMAGE_PIXELS = 40_000_000  # decoded and OCR'd: about 40 bytes a pixel at the peak
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
    with pil.open(str(path)) as image:  # reads the header only
        head = f"image: {image.format}, {image.width}x{image.height} pixels, mode {image.mode}"
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise ValueError(f"{head}: more than the {MAX_IMAGE_PIXELS} pixels an image may have "
                             "to be read (crop or scale it first)")
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


def read(reader: Callable[[Path], str], path: Path) -> str:
    """Run ``reader`` on ``path``, refusing a zip bomb first for Office files."""
    if path.suffix.lower() in ZIP_SUFFIXES:
        check_zip(path)
    return reader(path)
