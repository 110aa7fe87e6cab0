"""Templates (jinja2, autoescape on, strict undefined) and the live JSON of a page."""

from __future__ import annotations

import hashlib
from base64 import b64encode
from functools import cache
from importlib.resources import files
from typing import Any

import jinja2
import orjson
from markupsafe import Markup

from engine.view.pages import Links, Page, fmt_n, fmt_p, fmt_s, fmt_ts

STATIC = ("view.css", "view.js")


def static_file(name: str) -> bytes:
    """One of the packaged static files (only the names in `STATIC`)."""
    if name not in STATIC:
        raise FileNotFoundError(name)
    return files("engine.view").joinpath("static", name).read_bytes()


def _args(text: Any) -> str:
    """A tool call's arguments: pretty JSON, or the model's text when it is not JSON."""
    if not isinstance(text, str):
        return orjson.dumps(text, option=orjson.OPT_INDENT_2, default=str).decode()
    try:
        return orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2).decode()
    except orjson.JSONDecodeError:
        return text


def _tojson(value: Any) -> str:
    return orjson.dumps(value, default=str).decode()


@jinja2.pass_context
def _live(ctx: jinja2.runtime.Context, key: str) -> Markup:
    """``<span data-live=key>value</span>``: the page's value, updated in place while live."""
    fields: dict[str, str] = ctx["fields"]
    return Markup('<span data-live="{}">{}</span>').format(key, fields.get(key, "–"))


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("engine.view", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(ts=fmt_ts, s=fmt_s, p=fmt_p, n=fmt_n, args=_args, tojson=_tojson)
    env.globals["live"] = _live
    return env


def css() -> str:
    return static_file("view.css").decode()


def export_csp(style: str) -> str:
    """The exported file's CSP: no script at all, only its own style and data: images."""
    digest = b64encode(hashlib.sha256(style.encode()).digest()).decode()
    return (
        f"default-src 'none'; style-src 'sha256-{digest}'; img-src data:;"
        " base-uri 'none'; form-action 'none'"
    )


def _context(page: Page, extra: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": page.title,
        "fields": page.fields,
        "shape": page.shape,
        "polling": page.live,
        "tail": page.tail,
        "rev": page.rev,
        "export": False,
        "links": Links(),
        "store": "",
        **page.context,
        **extra,
    }


def render(page: Page, **extra: Any) -> str:
    """A page as HTML. ``extra`` adds to the context (the export's head, for one)."""
    return environment().get_template(page.template).render(_context(page, extra))


def live_json(page: Page) -> bytes:
    """What the page's script asks for with ``?live=1``: the page's fields, the
    sections re-rendered whole, and on a rollout page the messages after ``tail``."""
    env = environment()
    context = _context(page, {})
    body: dict[str, Any] = {
        "fields": page.fields,
        "shape": page.shape,
        "rev": page.rev,
        "live": page.live,
        "every": page.every_ms,
        "sections": {
            name: env.get_template(f"_{name}.html").render(context) for name in page.sections
        },
    }
    if page.tail is not None:
        body["tail"] = page.tail
        body["tail_html"] = (
            env.get_template("_messages.html").render({**context, "messages": page.tail_messages})
            if page.tail_messages
            else ""
        )
    return orjson.dumps(body)


def not_found(message: str) -> str:
    return render(Page("error.html", "Not found", {"message": message}))
