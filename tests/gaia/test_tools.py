"""calculator, file readers on the bundled attachments, search, the web server."""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from engine import ConfigError, Observation, TaskView
from gaia import BUNDLED
from tests.gaia.slow_readers import slow_reader
from tools import files as files_mod
from tools import parsing
from tools import search as search_mod
from tools._toolbox import Workspace
from tools.calculator import calculator, evaluate
from tools.files import FileTools, extract_text
from tools.search import CorpusIndex, Document, Hit, SearchTools, provider, register_provider
from tools.webserver import WebServer, acquire_shared, release_shared
from tools.workspace import OutsideWorkspace, resolve_inside

pytestmark = pytest.mark.anyio
SPLIT = BUNDLED / "2023" / "validation"
WEB = BUNDLED / "web"


# ---- calculator -------------------------------------------------------------

@pytest.mark.parametrize(("expression", "value"), [
    ("(12 + 7) * 3", 57), ("2 ** 10", 1024), ("7 / 2", 3.5), ("7 // 2", 3), ("-3 % 5", 2),
    ("round(3.14159, 2)", 3.14), ("sqrt(16) + abs(-2)", 6), ("max(3, 9, 4)", 9),
    ("sum([1, 2, 3])", 6), ("mean([1, 2, 3, 4])", 2.5), ("floor(pi)", 3), ("round(1963.5)", 1964),
    ("0.18 * 2350", 423), ("log10(1000)", 3),
])
def test_calculator_evaluates(expression: str, value: float) -> None:
    assert evaluate(expression) == value


@pytest.mark.parametrize(("expression", "problem"), [
    ("__import__('os').system('id')", "not allowed"),
    ("(1).__class__", "not allowed"),
    ("open('/etc/passwd')", "not allowed"),
    ("x + 1", "not allowed"),
    ("[c for c in 'ab']", "not allowed"),
    ("'a' * 3", "not allowed"),
    ("2 ** 100000", "exponent"),
    ("10 ** 999 * 10 ** 999 * 10 ** 999 * 10 ** 999 * 10 ** 999", "larger than"),
    ("1 +", "not an arithmetic expression"),
    ("1" * 1001, "longer than"),
    ("max(x=1)", "not allowed"),
    ("[1, 2]", "one number"),
])
def test_calculator_refuses(expression: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        evaluate(expression)


def test_calculator_tool_errors_are_observations() -> None:
    ok, bad, zero = calculator("6 * 7"), calculator("os.getcwd()"), calculator("1 / 0")
    assert (ok.content, ok.is_error) == ("42", False)
    assert bad.is_error and "not allowed" in bad.content
    assert zero.is_error and "division by zero" in zero.content


# ---- file readers --------------------------------------------------------------

EXPECTED = {
    "bakery_sales_2023.xlsx": ["--- sheet 'Sales 2023'", "Month | Product | Units",
                               "March | Sea-salt knot |"],
    "ferry_log_july_2023.csv": ["date | route | crossings | passengers",
                                "2023-07-14 | Halvard-Penmor"],
    "lighthouse_trust_report_2023.pdf": ["--- page 1 ---", "Total income: 48,250",
                                         "1,430 paid tours"],
    "council_minutes_2024-02-12.docx": ["Minutes of Port Halvard Council",
                                        "Repair of the harbour wall | 5 | 3 | 1"],
    "festival_planning_2024.pptx": ["--- slide 2 ---", "Food stalls", "Planned: 42",
                                    "notes: Confirm ferry"],
    "harbour_log_march_2023.txt": ["Sighted vessel 'Northern Wren'"],
    "count_readings.py": ["readings = [14, 9, 22, 31, 7, 18, 25]"],
    "museum_inventory.json": ['"name": "Ship\'s bell"'],
    "bird_rings_2023.xml": ['<ring id="R002" station="B" species="Puffin"/>'],
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_readers_on_the_bundled_attachments(name: str) -> None:
    text = extract_text(SPLIT / name)
    for needle in EXPECTED[name]:
        assert needle in text


@pytest.mark.skipif(not files_mod.ocr_available(), reason="tesseract not installed")
def test_image_ocr() -> None:
    text = extract_text(SPLIT / "museum_sign.png")
    assert text.startswith("image: PNG, 760x250 pixels, mode RGB")
    assert "CLOSED ON TUESDAYS" in text and "10:00" in text


@pytest.fixture
def no_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_mod, "_CACHE", OrderedDict())


def test_image_without_ocr_says_so(monkeypatch: pytest.MonkeyPatch, no_cache: None,
                                   tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no tesseract on the reader's PATH
    text = extract_text(SPLIT / "museum_sign.png")
    assert "760x250" in text and "OCR unavailable: install the tesseract-ocr" in text


def view(*names: str) -> TaskView:
    return TaskView("t", "q", tuple(str(SPLIT / n) for n in names))


@pytest.fixture
def workspace() -> Iterator[Path]:
    ws = Workspace(view())
    yield ws.path
    ws.remove()


async def started(root: Path, deadline: float = 60.0) -> FileTools:
    tools = FileTools(deadline)
    await tools.start(view(), root)
    return tools


async def test_read_file_pages_long_text() -> None:
    ws = Workspace(view("bakery_sales_2023.xlsx"))
    tools = await started(ws.path)
    assert await tools.list_files() == "bakery_sales_2023.xlsx"
    first = await tools.read_file("bakery_sales_2023.xlsx", max_chars=300)
    assert "characters 0-300 of" in first.content and "read on with start=300" in first.content
    second = await tools.read_file("bakery_sales_2023.xlsx", start=300, max_chars=300)
    assert second.content.split(":\n", 1)[1] != first.content.split(":\n", 1)[1]
    ws.remove()


async def test_read_file_stays_inside_the_work_dir(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the answer is 42")
    ws = Workspace(view("count_readings.py"))
    (ws.path / "link.txt").symlink_to(secret)
    tools = await started(ws.path)
    for path in [str(secret), "../secret.txt", "link.txt", f"../{tmp_path.name}/secret.txt",
                 "/etc/passwd", ""]:
        obs = await tools.read_file(path)
        assert obs.is_error and "42" not in obs.content, path
    with pytest.raises(OutsideWorkspace):
        resolve_inside(ws.path, "../../etc/passwd")
    assert await tools.list_files() == "count_readings.py"  # the symlink is not listed
    ws.remove()


async def test_read_file_errors(workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (workspace / "data.bin").write_bytes(b"\0\1")
    (workspace / "big.txt").write_text("x" * 50)
    (workspace / "bad.pdf").write_text("not a pdf")
    tools = await started(workspace)
    assert "no reader for '.bin'" in (await tools.read_file("data.bin")).content
    assert "no file 'nope.txt'" in (await tools.read_file("nope.txt")).content
    bad = await tools.read_file("bad.pdf")
    assert bad.is_error and "cannot read bad.pdf" in bad.content
    monkeypatch.setattr(files_mod, "MAX_FILE_BYTES", 10)
    big = await tools.read_file("big.txt")
    assert big.is_error and "more than the 10 limit" in big.content


async def test_a_slow_reader_is_cut_at_the_deadline(workspace: Path, no_cache: None,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    (workspace / "slow.txt").write_text("x")
    monkeypatch.setitem(files_mod.READERS, ".txt", slow_reader)
    tools = await started(workspace, deadline=0.5)
    t0 = time.monotonic()
    obs = await tools.read_file("slow.txt")
    assert obs.is_error and "did not finish within 0.5s" in obs.content
    assert time.monotonic() - t0 < 20  # the reader would sleep for 60


async def test_a_reader_must_be_importable_by_the_parser_process(
        workspace: Path, no_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    (workspace / "a.txt").write_text("x")
    monkeypatch.setitem(files_mod.READERS, ".txt", lambda path: "never run")
    obs = await (await started(workspace)).read_file("a.txt")
    assert obs.is_error and "make it a module-level function" in obs.content


def test_texts_are_parsed_once_per_content(tmp_path: Path, no_cache: None,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_mod, "CACHE_ENTRIES", 2)
    started_before = parsing.children_started
    parsed = []
    for name, text in [("a.txt", "same"), ("b.txt", "same"), ("c.txt", "other"),
                       ("d.txt", "third"), ("e.txt", "same")]:
        (tmp_path / name).write_text(text)
        before = parsing.children_started
        assert extract_text(tmp_path / name) == text
        if parsing.children_started > before:
            parsed.append(name)
    assert parsed == ["a.txt", "c.txt", "d.txt", "e.txt"]  # b: a copy; e: evicted by then
    assert parsing.children_started - started_before == 4


def zip_of_zeros(path: Path, member: str, mib: int) -> Path:
    """A zip whose one member inflates to ``mib`` MiB of zeros (~1 KB per MiB on disk)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open(member, "w") as out:
        chunk = b"\0" * (1 << 20)
        for _ in range(mib):
            out.write(chunk)
    return path


def test_office_zip_bombs_and_fake_office_files_are_refused(tmp_path: Path) -> None:
    bomb = zip_of_zeros(tmp_path / "report.docx", "word/document.xml", 210)
    assert bomb.stat().st_size < 1024 * 1024
    with pytest.raises(ValueError, match=r"report\.docx would unpack to 220200960 bytes.*zip bomb"):
        extract_text(bomb)
    many = tmp_path / "deck.pptx"
    with zipfile.ZipFile(many, "w") as zf:
        for i in range(files_mod.MAX_ZIP_MEMBERS + 1):
            zf.writestr(f"ppt/slides/s{i}.xml", "")
    with pytest.raises(ValueError, match=r"deck\.pptx holds 10001 zip members"):
        extract_text(many)
    fake = tmp_path / "table.xlsx"
    fake.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"table\.xlsx is not a valid \.xlsx file"):
        extract_text(fake)


async def test_read_file_reports_a_zip_bomb_to_the_agent(tmp_path: Path) -> None:
    zip_of_zeros(tmp_path / "sheet.xlsx", "xl/worksheets/sheet1.xml", 201)
    tools = FileTools()
    await tools.start(TaskView("t", "q"), tmp_path)
    obs = await tools.read_file("sheet.xlsx")
    assert obs.is_error and "cannot read sheet.xlsx" in obs.content and "zip bomb" in obs.content


# ---- search ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def index() -> CorpusIndex:
    return CorpusIndex.from_dir(WEB, "http://web.test")


def test_index_holds_the_corpus_and_nothing_else(index: CorpusIndex) -> None:
    pages = sorted(p.name for p in WEB.glob("*.html"))
    assert len(index) == len(pages)
    assert all(index.get(f"http://web.test/{p}") is not None for p in pages)


@pytest.mark.parametrize(("query", "first"), [
    ("lighthouse keepers", "lighthouse.html"), ("Merrow tonnage", "ships.html"),
    ("mayor", "mayors.html"), ("puffin breeding pairs", "birds.html"),
    ("ferry fare Skerry", "ferry.html"), ("twinned", "twin-towns.html"),
])
def test_bm25_ranks_the_right_page_first(index: CorpusIndex, query: str, first: str) -> None:
    hits = index.search(query, k=3)
    assert hits and hits[0].url == f"http://web.test/{first}"
    assert hits == sorted(hits, key=lambda h: -h.score)


def test_snippets_mark_the_matches(index: CorpusIndex) -> None:
    (hit,) = index.search("automated", k=1)
    assert "[automated]" in hit.snippet and hit.title == "Halvard Point Lighthouse"


def test_any_word_fallback_and_odd_queries(index: CorpusIndex) -> None:
    assert index.search("lighthouse zzzunknownword")[0].url.endswith("lighthouse.html")
    for odd in ['"unbalanced', "NEAR(a b)", "a* OR -b", "col:value", "^", ""]:
        index.search(odd)  # never an FTS5 syntax error
    assert index.search("") == []
    assert index.search("qqqq") == []


async def test_search_tool_and_read_page(index: CorpusIndex) -> None:
    tools = SearchTools(index)
    assert [s["function"]["name"] for s in tools.specs] == ["search", "read_page"]
    found = await tools.search("Kelp Festival attendance", k=2)
    assert found.content.startswith("1. The Kelp Festival\n   http://web.test/festival.html")
    page = tools.read_page("festival.html")
    assert "2021 | 8,150" in page.content
    assert tools.read_page("http://web.test/festival.html").content == page.content
    assert "no results" in (await tools.search("qqqq")).content
    missing = tools.read_page("../2023/validation/metadata.jsonl")
    assert missing.is_error and "no page" in missing.content


class EchoProvider:
    def __init__(self, key: str) -> None:
        self.key = key

    async def search(self, query: str, k: int) -> list[Hit]:
        return [Hit("https://example.org", f"{query} via key {self.key}", "…", 1.0)]


async def test_providers_by_name(index: CorpusIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_mod, "_PROVIDERS", dict(search_mod._PROVIDERS))
    register_provider("echo", EchoProvider, "ECHO_SEARCH_KEY")
    monkeypatch.delenv("ECHO_SEARCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="ECHO_SEARCH_KEY is not set"):
        provider("echo")
    with pytest.raises(ConfigError, match=r"unknown name.*local, brave, echo"):
        provider("nope")
    monkeypatch.setenv("ECHO_SEARCH_KEY", "k1")
    tools = SearchTools(index, provider("echo"))
    assert "puffins via key k1" in (await tools.search("puffins")).content
    assert isinstance(provider("local", index), object)


async def test_a_corpus_folder_is_indexed_on_start_with_the_served_urls() -> None:
    tools = SearchTools(WEB)
    assert "not ready" in (await tools.search("lighthouse")).content
    await tools.start(TaskView("t", "q", (), {"web_url": "http://127.0.0.1:9"}), WEB)
    assert "http://127.0.0.1:9/lighthouse.html" in (await tools.search("lighthouse")).content
    await tools.start(TaskView("t", "q"), WEB)
    assert "http://web.local/lighthouse.html" in (await tools.search("lighthouse")).content


async def test_a_slow_provider_is_cut_at_the_deadline(index: CorpusIndex) -> None:
    class Slow:
        async def search(self, query: str, k: int) -> list[Hit]:
            import anyio

            await anyio.sleep_forever()
            return []

    obs = await SearchTools(index, Slow(), deadline=0.1).search("x")
    assert isinstance(obs, Observation) and obs.is_error and "within 0.1s" in obs.content


def test_documents_from_text_files(tmp_path: Path) -> None:
    (tmp_path / "note.txt").write_text("plain words here")
    (tmp_path / "skip.bin").write_bytes(b"\0")
    docs = CorpusIndex.from_dir(tmp_path, "http://x")
    assert docs.get("note.txt") == Document("http://x/note.txt", "note", "plain words here")
    assert len(docs) == 1


# ---- web server -------------------------------------------------------------------

async def test_web_server_serves_the_corpus_and_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "web"
    shutil.copytree(WEB, root)
    (tmp_path / "metadata.jsonl").write_text('{"Final answer": "SECRET"}')
    os.symlink(tmp_path / "metadata.jsonl", root / "leak.html")
    async with WebServer(root) as server, aiohttp.ClientSession() as http:
        assert server.url.startswith("http://127.0.0.1:") and server.port > 0
        async with http.get(f"{server.url}/lighthouse.html") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert "Halvard Point Lighthouse" in await r.text()
        async with http.get(f"{server.url}/") as r:
            assert r.status == 200 and "Civic Portal" in await r.text()
        for path in ["/../metadata.jsonl", "/%2e%2e/metadata.jsonl", "/leak.html",
                     "/..%2fmetadata.jsonl", "/nope.html"]:
            async with http.get(f"{server.url}{path}") as r:
                body = await r.text()
                assert r.status == 404 and "SECRET" not in body, path


async def test_shared_server_lives_while_used() -> None:
    a = await acquire_shared(WEB)
    b = await acquire_shared(WEB)
    assert a is b
    await release_shared(a)
    async with aiohttp.ClientSession() as http, http.get(f"{a.url}/index.html") as r:
        assert r.status == 200
    await release_shared(b)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(f"{a.url}/index.html"):
            pass


def test_tool_specs_are_json_schema() -> None:
    specs = {s["function"]["name"]: s["function"] for s in FileTools().specs}
    assert specs["read_file"]["parameters"]["required"] == ["path"]
    assert set(specs["read_file"]["parameters"]["properties"]) == {"path", "start", "max_chars"}
    assert specs["list_files"]["parameters"]["properties"] == {}


# ---- a web-search provider, against a local stand-in for its API --------------

async def test_brave_provider_by_name(index: CorpusIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp import web

    seen: list[tuple[str, str, str]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append((request.query["q"], request.query["count"],
                     request.headers.get("X-Subscription-Token", "")))
        if request.query["q"] == "boom":
            return web.json_response({"error": "rate limited"}, status=429)
        return web.json_response({"web": {"results": [
            {"title": "Port Halvard", "url": "https://example.org/halvard",
             "description": "A harbour town."},
            {"title": "Halvard Point", "url": "https://example.org/point", "description": "…"},
        ]}})

    app = web.Application()
    app.router.add_get("/res/v1/web/search", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        monkeypatch.setenv("BRAVE_API_KEY", "secret-key")
        monkeypatch.setenv("BRAVE_SEARCH_URL", f"http://127.0.0.1:{port}/res/v1/web/search")
        tools = SearchTools(index, "brave")
        found = await tools.search("Halvard", k=3)
        assert found.content.startswith("1. Port Halvard\n   https://example.org/halvard")
        assert "2. Halvard Point" in found.content
        failed = await tools.search("boom")
        assert failed.is_error and "HTTP 429" in failed.content
        assert seen == [("Halvard", "3", "secret-key"), ("boom", "5", "secret-key")]
        monkeypatch.delenv("BRAVE_API_KEY")
        with pytest.raises(ConfigError, match="BRAVE_API_KEY is not set"):
            SearchTools(index, "brave")
    finally:
        await runner.cleanup()


def test_corpus_indexes_are_reused_and_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(search_mod, "_INDEXES", OrderedDict())
    monkeypatch.setattr(search_mod, "MAX_INDEXES", 2)
    a = search_mod.corpus_index(WEB, "http://a")
    assert search_mod.corpus_index(WEB, "http://a") is a
    search_mod.corpus_index(WEB, "http://b")
    search_mod.corpus_index(WEB, "http://c")
    assert [url for _, url in search_mod._INDEXES] == ["http://b", "http://c"]
    assert search_mod.corpus_index(WEB, "http://a") is not a
