"""Tools an agent can use, each a JSON-schema tool with a deadline whose
errors come back as observations, grouped in toolboxes that share a
rollout's work dir (`tools._toolbox`: a fresh folder holding copies of the
task's attachments; file tools never read outside it).

* `tools.calculator` — a safe arithmetic evaluator;
* `tools.files` — text out of pdf, xlsx/xls/csv, docx, pptx, txt/json/xml/py
  and images (OCR through tesseract where installed), each parse in a
  killable child process (`tools.parsing`, readers in `tools.readers`);
* `tools.workspace` — the work dir as hostile input: confined opens, bounded
  walks, removal that cannot fail;
* `tools.search` — SQLite FTS5 over a document corpus (bm25, snippets) and a
  provider interface for web-search services;
* `tools.webserver` — serves a local web corpus on loopback during a run;
* `tools.code`, `tools.browser`, `tools.mcp` — the code sandbox, the browser
  and MCP tool servers.

Heavy dependencies are imported inside the tool that needs them.
"""
