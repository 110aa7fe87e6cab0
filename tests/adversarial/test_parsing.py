"""Attachments built to make a parser run long or big: the deadline ends the
work for real and the memory comes back (the parse runs in a child process)."""

from __future__ import annotations

import sys
import zipfile
import zlib
from pathlib import Path
from typing import Any

import pytest

from gaia.environment import GaiaEnvironment
from tests.adversarial.conftest import (
    assert_contained,
    assert_nothing_left,
    assert_responsive,
    hostile_rollout,
)
from tools import files as files_mod

pytestmark = pytest.mark.anyio
MiB = 1 << 20

XLSX_PARTS = {
    "[Content_Types].xml": (
        '<?xml version="1.0" encoding="UTF-8"?><Types xmlns="http://schemas.openxmlformats.org/'
        'package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.'
        'openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType='
        '"application/xml"/><Override PartName="/xl/workbook.xml" ContentType="application/vnd.'
        'openxmlformats-officedocument.spreadsheetml.sheet.main+xml"/><Override PartName="/xl/'
        'worksheets/sheet1.xml" ContentType="application/vnd.openxmlformats-officedocument.'
        'spreadsheetml.worksheet+xml"/></Types>'),
    "_rels/.rels": (
        '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
        'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
        'schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target='
        '"xl/workbook.xml"/></Relationships>'),
    "xl/workbook.xml": (
        '<?xml version="1.0" encoding="UTF-8"?><workbook xmlns="http://schemas.openxmlformats.'
        'org/spreadsheetml/2006/main" xmlns:r="http://schemas.openxmlformats.org/officeDocument/'
        '2006/relationships"><sheets><sheet name="Sales" sheetId="1" r:id="rId1"/></sheets>'
        '</workbook>'),
    "xl/_rels/workbook.xml.rels": (
        '<?xml version="1.0" encoding="UTF-8"?><Relationships xmlns="http://schemas.'
        'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://'
        'schemas.openxmlformats.org/officeDocument/2006/relationships/worksheet" Target='
        '"worksheets/sheet1.xml"/></Relationships>'),
}


def expanding_xlsx(path: Path, rows: int = 90_000, cells: int = 100) -> Path:
    """A valid xlsx of a few hundred KB whose one sheet holds ``rows * cells``
    cells (declared size under the zip-bomb limit: it passes that check)."""
    row = b"<row>" + b"<c><v>7</v></c>" * cells + b"</row>"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, text in XLSX_PARTS.items():
            zf.writestr(name, text)
        with zf.open("xl/worksheets/sheet1.xml", "w", force_zip64=True) as out:
            out.write(b'<?xml version="1.0" encoding="UTF-8"?><worksheet xmlns="http://schemas.'
                      b'openxmlformats.org/spreadsheetml/2006/main"><sheetData>')
            block = row * 1000
            for _ in range(rows // 1000):
                out.write(block)
            out.write(b"</sheetData></worksheet>")
    declared = sum(m.file_size for m in zipfile.ZipFile(path).infolist())
    assert declared < files_mod.MAX_UNPACKED_BYTES and path.stat().st_size < MiB
    return path


def shared_stream_pdf(path: Path, pages: int = 200, repeats: int = 60_000) -> Path:
    """A small PDF of ``pages`` pages that all draw one large content stream."""
    content = b"BT /F1 9 Tf 20 700 Td (harbour ledger line) Tj ET\n" * repeats
    packed = zlib.compress(content, 9)
    kids = " ".join(f"{5 + i} 0 R" for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        f"<< /Type /Pages /Kids [{kids}] /Count {pages} >>".encode(),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed) + packed
        + b"\nendstream",
    ]
    objects += [b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
                b"/Resources << /Font << /F1 3 0 R >> >> >>"] * pages
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    assert path.stat().st_size < MiB
    return path


def huge_image(path: Path, side: int = 9000) -> Path:
    """A white PNG of ``side`` x ``side`` pixels (just under Pillow's bomb
    warning) with a few black bars: a small file that decodes to ~80 MPixel."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (side, side), 255)
    draw = ImageDraw.Draw(image)
    for y in range(100, side, 900):
        draw.rectangle((100, y, side - 100, y + 40), fill=0)
    image.save(path, optimize=True)
    assert path.stat().st_size < 2 * MiB
    return path


@pytest.fixture
def bombs(tmp_path: Path) -> dict[str, Path]:
    return {"sheet": expanding_xlsx(tmp_path / "sales_2023.xlsx"),
            "pdf": shared_stream_pdf(tmp_path / "ledger_2023.pdf"),
            "image": huge_image(tmp_path / "scan.png")}


@pytest.mark.parametrize("kind", ["sheet", "pdf", "image"])
async def test_a_parse_bomb_ends_at_its_deadline_and_frees_its_memory(
        kind: str, bombs: dict[str, Path], store: Path, run_tmp: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_mod, "_CACHE", type(files_mod._CACHE)())
    attachment = bombs[kind]
    deadline = 4.0

    def env() -> Any:
        return GaiaEnvironment(tools=["files"], serve_web=False, deadline=deadline)

    h = await hostile_rollout(store, env, [("read_file", {"path": attachment.name}),
                                           ("list_files", {})],
                              attachments=(str(attachment),))
    result = h.result("read_file")
    assert_responsive(h)
    assert_contained(h, "read_file")
    assert len(result["content"]) < 40_000
    # the engine's own memory stayed put; the parser's (a child) is gone with it
    assert h.watch.rss_growth < 300 * MiB, h.watch.rss_growth
    assert h.watch.peak_tree_rss - h.watch.start_rss < 2500 * MiB, h.watch.peak_tree_rss
    assert not parsing_threads(), "a thread of the engine is still parsing the attachment"
    assert_nothing_left(h, run_tmp)


PARSERS = ("openpyxl", "pypdf", "PIL", "pytesseract", "xlrd", "docx", "pptx")


def parsing_threads() -> list[str]:
    """Threads of this process whose stack is inside a parser library."""
    found = []
    for ident, frame in sys._current_frames().items():
        f: Any = frame
        while f is not None:
            module = f.f_globals.get("__name__", "")
            if module.split(".")[0] in PARSERS:
                found.append(f"thread {ident} in {module}")
                break
            f = f.f_back
    return found
