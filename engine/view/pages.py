"""The viewer's pages: one builder per page, each a bounded set of queries.

A builder returns a `Page`: the template and its context, plus ``fields``
(every number that changes while a run writes, already formatted) and
``shape`` (what would need a reload to show). The HTML page and its live
JSON (``?live=1``) come from the same builder, so they always agree. Text
from the store is never trusted: templates autoescape everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from engine.messages import Message
from engine.recording import TERMINAL
from engine.view.charts import gantt_svg, throughput_svg
from engine.view.queries import (
    STATES,
    GroupStat,
    RolloutRow,
    RunRow,
    StoreReader,
)
from engine.view.summary import lanes, parse_ks, pass_at_k, slice_keys, spread

IN_FLIGHT = ("starting", "generating", "acting", "scoring")
STATE_COLUMNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("queued", ("queued",)),
    ("running", IN_FLIGHT),
    ("done", ("done",)),
    ("failed", ("failed",)),
    ("timed_out", ("timed_out",)),
    ("error", ("error",)),
    ("cancelled", ("cancelled",)),
)
RUNS_PER_PAGE = 50
ROLLOUTS_PER_PAGE = 100
GROUPS_PER_PAGE = 100
MESSAGES_PER_PAGE = 500
MAX_MESSAGES_PER_PAGE = 5000
RAW_LIST_ITEMS = 24  # longer arrays (token ids, logprobs) are cut in the inline raw view
RAW_TEXT_CHARS = 20_000
GANTT_ATTEMPTS = 20_000  # the timeline draws at most this many attempts (the first by start)
THROUGHPUT_BUCKETS = 60


class NotFound(LookupError):
    """A run, rollout or message the store does not hold (the page says which)."""


@dataclass(slots=True)
class Page:
    template: str
    title: str
    context: dict[str, Any]
    fields: dict[str, str] = field(default_factory=dict)
    shape: str = ""
    live: bool = False
    rev: str = ""
    tail: int | None = None  # rollout page: last seq shown (the live tail starts after it)
    sections: tuple[str, ...] = ()  # parts re-rendered whole while live (template _NAME.html)
    every_ms: int = 1500  # how often a live page asks again
    tail_messages: list[MessageView] = field(default_factory=list)


# ---- formatting (one place, for pages and live JSON alike) ------------------


def fmt_ts(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "–"


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return f"{seconds / 60:.1f} min"


def fmt_p(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def fmt_n(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


# ---- links: server routes, or anchors in an exported file -------------------


class Links:
    """Where a page links to. The server's pages link to routes; an export links
    rollouts to their anchors in the same file and drops every other link."""

    def __init__(self, export: bool = False) -> None:
        self.export = export

    def _route(self, path: str, **params: Any) -> str | None:
        if self.export:
            return None
        query = urlencode({k: v for k, v in params.items() if v is not None})
        return f"{path}?{query}" if query else path

    def runs(self, **cursor: Any) -> str | None:
        return self._route("/", **cursor)

    def run(self, run_id: str, **params: Any) -> str | None:
        return "#run" if self.export else self._route("/run", id=run_id, **params)

    def rollouts(self, run_id: str, **params: Any) -> str | None:
        return "#rollouts" if self.export else self._route("/run/rollouts", id=run_id, **params)

    def groups(self, run_id: str, **params: Any) -> str | None:
        return self._route("/run/groups", id=run_id, **params)

    def compare(self, run_id: str, other: str, **params: Any) -> str | None:
        return self._route("/run/compare", id=run_id, **{"with": other}, **params)

    def chart(self, run_id: str, name: str, rev: str) -> str | None:
        return self._route(f"/run/{name}.svg", id=run_id, v=rev)

    def rollout(self, rollout: RolloutRow, **params: Any) -> str | None:
        if self.export:
            return f"#r-{rollout.num}"
        return self._route("/rollout", id=rollout.id, **params)

    def rollout_id(self, rollout_id: str, **params: Any) -> str | None:
        return None if self.export else self._route("/rollout", id=rollout_id, **params)

    def raw(self, rollout_id: str, seq: int) -> str | None:
        return self._route("/rollout/message.json", id=rollout_id, seq=seq)


# ---- runs -------------------------------------------------------------------


def _column_counts(counts: dict[str, int]) -> dict[str, int]:
    return {name: sum(counts.get(s, 0) for s in states) for name, states in STATE_COLUMNS}


async def runs_page(q: StoreReader, before: tuple[float, str] | None = None) -> Page:
    runs = await q.runs(before=before, limit=RUNS_PER_PAGE + 1)
    last = runs[RUNS_PER_PAGE - 1] if len(runs) > RUNS_PER_PAGE else None
    more = {"before": repr(last.created_at), "before_id": last.id} if last else None
    runs = runs[:RUNS_PER_PAGE]
    counts = await q.state_counts([r.id for r in runs])
    fields: dict[str, str] = {}
    rows = []
    for r in runs:
        groups = await q.group_stats(r.id)
        ks = sorted({1, r.samples})
        report = pass_at_k(groups, ks)
        cols = _column_counts(counts[r.id])
        fields[f"{r.id}|status"] = r.status
        fields[f"{r.id}|finished"] = fmt_ts(r.finished_at)
        fields[f"{r.id}|total"] = fmt_n(sum(counts[r.id].values()))
        for name, n in cols.items():
            fields[f"{r.id}|{name}"] = fmt_n(n)
        for k in ks:
            fields[f"{r.id}|pass@{k}"] = fmt_p(report.overall.get(k))
        rows.append({"run": r, "ks": ks, "tasks": len(groups)})
    return Page(
        "runs.html",
        "Runs",
        {"rows": rows, "more": more, "columns": [c for c, _ in STATE_COLUMNS]},
        fields,
        shape="runs:" + "\n".join(r.id for r in runs),
        live=before is None,  # a new run may start at any time
        every_ms=1500 if any(r.status == "running" for r in runs) else 5000,
    )


# ---- one run ----------------------------------------------------------------


async def _run_or_404(q: StoreReader, run_id: str) -> RunRow:
    run = await q.run(run_id)
    if run is None:
        raise NotFound(f"no run {run_id!r} in this store")
    return run


def rollout_fields(rows: Sequence[RolloutRow], fields: dict[str, str]) -> None:
    for r in rows:
        fields[f"r{r.num}|state"] = r.state
        fields[f"r{r.num}|reward"] = fmt_p(r.reward)
        fields[f"r{r.num}|turns"] = str(r.turns)
        fields[f"r{r.num}|attempt"] = str(r.attempt)
        fields[f"r{r.num}|seconds"] = fmt_s(r.seconds)
        fields[f"r{r.num}|worker"] = r.worker or "–"
        fields[f"r{r.num}|error"] = r.error or ""


def _passk_fields(
    groups: list[GroupStat], ks: list[int], metadata: dict[str, dict[str, Any]], by: list[str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    report = pass_at_k(groups, ks, metadata, by)
    rows: list[dict[str, Any]] = [{"slice": "all", "tasks": len(report.per_task)}]
    fields = {f"pass|all|{k}": fmt_p(report.overall.get(k)) for k in ks}
    fields["tasks|all"] = fmt_n(len(report.per_task))
    for key, values in report.by.items():
        for value, scores in values.items():
            name = f"{key}={value}"
            n = sum(1 for t in report.per_task if metadata.get(t, {}).get(key) == value)
            rows.append({"slice": name, "tasks": n})
            fields[f"tasks|{name}"] = fmt_n(n)
            for k in ks:
                fields[f"pass|{name}|{k}"] = fmt_p(scores.get(k))
    return rows, fields


async def run_page(
    q: StoreReader,
    run_id: str,
    *,
    k: str | None = None,
    by: Sequence[str] = (),
    links: Links | None = None,
    preview: int = 50,
) -> Page:
    links = links or Links()
    run = await _run_or_404(q, run_id)
    counts = (await q.state_counts([run_id]))[run_id]
    groups = await q.group_stats(run_id)
    metadata = await q.task_metadata(run_id)
    ks = parse_ks(k, run.samples)
    keys = [b for b in by if b] or slice_keys(metadata)
    passk_rows, fields = _passk_fields(groups, ks, metadata, keys)
    sp = spread(groups, run.samples)
    errors = await q.error_reasons(run_id)
    workers = await q.workers(run_id)
    attempts = await q.attempt_count(run_id)
    rollouts = await q.rollouts(run_id, limit=preview)
    others = [r for r in await q.run_ids() if r != run_id]

    fields.update({f"count|{s}": fmt_n(counts.get(s, 0)) for s in STATES})
    fields["count|total"] = fmt_n(sum(counts.values()))
    fields["status"] = run.status
    fields["finished"] = fmt_ts(run.finished_at)
    fields["attempts"] = fmt_n(attempts)
    fields.update(
        {
            "spread|groups": fmt_n(sp.groups),
            "spread|with_rewards": fmt_n(sp.with_rewards),
            "spread|all_equal": fmt_n(sp.all_equal),
            "spread|all_zero": fmt_n(sp.all_zero),
            "spread|all_correct": fmt_n(sp.all_correct),
            "spread|teach_nothing": fmt_pct(sp.teach_nothing),
            "spread|complete": fmt_n(sp.complete),
        }
    )
    fields.update({f"spread|c{c}": fmt_n(n) for c, n in sp.by_correct.items()})
    rollout_fields(rollouts, fields)
    terminal = sum(n for s, n in counts.items() if s in TERMINAL)
    shape = orjson.dumps([[r.num for r in rollouts], [row["slice"] for row in passk_rows]]).decode()
    return Page(
        "run.html",
        f"Run {run.id}",
        {
            "run": run,
            "agent": run.config.get("agent") or {},
            "ks": ks,
            "passk_rows": passk_rows,
            "slice_keys": keys,
            "spread": sp,
            "errors": errors,
            "workers": workers,
            "rollouts": rollouts,
            "more_rollouts": len(rollouts) == preview,
            "states": STATES,
            "others": others,
            "links": links,
            "charts": {
                name: links.chart(run_id, name, f"{attempts}:{terminal}:{run.status}")
                for name in ("gantt", "throughput")
            },
        },
        fields,
        shape=shape,
        live=run.status == "running",
        rev=f"{attempts}:{terminal}:{run.status}",
        sections=("errors", "workers"),
    )


async def rollouts_page(
    q: StoreReader,
    run_id: str,
    *,
    after: int | None = None,
    state: str | None = None,
    task_id: str | None = None,
) -> Page:
    """A run's rollouts by number, or one group's by sample index (``after``: the last shown)."""
    run = await _run_or_404(q, run_id)
    rows = await q.rollouts(
        run_id, after=after, limit=ROLLOUTS_PER_PAGE + 1, state=state, task_id=task_id
    )
    last = rows[ROLLOUTS_PER_PAGE - 1] if len(rows) > ROLLOUTS_PER_PAGE else None
    more = None if last is None else last.num if task_id is None else last.sample_index
    rows = rows[:ROLLOUTS_PER_PAGE]
    fields: dict[str, str] = {}
    rollout_fields(rows, fields)
    return Page(
        "rollouts.html",
        f"Rollouts of {run.id}",
        {
            "run": run,
            "rollouts": rows,
            "more": more,
            "state": state,
            "task_id": task_id,
            "after": after,
            "states": STATES,
            "links": Links(),
        },
        fields,
        shape=orjson.dumps([r.num for r in rows]).decode(),
        live=run.status == "running",
    )


async def groups_page(q: StoreReader, run_id: str, *, after: str = "") -> Page:
    run = await _run_or_404(q, run_id)
    groups = [g for g in await q.group_stats(run_id) if g.task_id > after]
    more = groups[GROUPS_PER_PAGE - 1].task_id if len(groups) > GROUPS_PER_PAGE else None
    groups = groups[:GROUPS_PER_PAGE]
    return Page(
        "groups.html",
        f"Groups of {run.id}",
        {"run": run, "groups": groups, "more": more, "links": Links()},
    )


async def compare_page(
    q: StoreReader, run_id: str, other_id: str, *, after: str = "", only_diff: bool = False
) -> Page:
    a = await _run_or_404(q, run_id)
    b = await _run_or_404(q, other_id)
    ks = parse_ks(None, min(a.samples, b.samples))
    ga = {g.task_id: g for g in await q.group_stats(a.id)}
    gb = {g.task_id: g for g in await q.group_stats(b.id)}
    pa, pb = pass_at_k(ga.values(), ks), pass_at_k(gb.values(), ks)
    rows = []
    for task in sorted(set(ga) | set(gb)):
        if task <= after:
            continue
        sa, sb = pa.per_task.get(task, {}), pb.per_task.get(task, {})
        if only_diff and sa == sb:
            continue
        delta = sb[ks[0]] - sa[ks[0]] if ks[0] in sa and ks[0] in sb else None
        rows.append(
            {"task": task, "a": ga.get(task), "b": gb.get(task), "pa": sa, "pb": sb, "delta": delta}
        )
        if len(rows) > GROUPS_PER_PAGE:
            break
    more = rows[GROUPS_PER_PAGE - 1]["task"] if len(rows) > GROUPS_PER_PAGE else None
    return Page(
        "compare.html",
        f"{a.id} vs {b.id}",
        {
            "a": a,
            "b": b,
            "ks": ks,
            "pa": pa,
            "pb": pb,
            "rows": rows[:GROUPS_PER_PAGE],
            "more": more,
            "only_diff": only_diff,
            "links": Links(),
            "common": len(set(ga) & set(gb)),
        },
    )


async def chart_svg(q: StoreReader, run_id: str, name: str, now: float) -> str:
    """The run's ``gantt`` (attempts per worker slot) or ``throughput`` chart, as SVG."""
    run = await _run_or_404(q, run_id)
    lo, hi = await q.time_range(run_id)
    if run.status == "running" or hi is None:
        hi = max(now, hi or now)
    t0 = lo if lo is not None else now
    if name == "gantt":
        spans = await q.attempt_spans(run_id, limit=GANTT_ATTEMPTS)
        total = await q.attempt_count(run_id) if len(spans) == GANTT_ATTEMPTS else len(spans)
        note = f"the first {len(spans):,} of {total:,} attempts" if total > len(spans) else ""
        return gantt_svg(lanes(spans, now), t0, hi, now, note)
    bucket = max((hi - t0) / THROUGHPUT_BUCKETS, 1e-6)
    ends = await q.finished_times(run_id, t0, bucket) if lo is not None else {}
    return throughput_svg(ends, bucket, THROUGHPUT_BUCKETS)


# ---- one rollout ------------------------------------------------------------


@dataclass(slots=True)
class MessageView:
    """A message as the rollout page shows it: its payload plus timing and place."""

    m: Message
    dt: float | None  # seconds since the message before it
    latency: float | None  # a reply since its request; a tool result since its call
    turn: int | None  # set on the message that opens a turn
    new_attempt: bool
    raw: str

    @property
    def p(self) -> dict[str, Any]:
        return self.m.payload


def _abbreviate(value: Any) -> Any:
    if isinstance(value, list):
        if len(value) > RAW_LIST_ITEMS:
            head = [_abbreviate(v) for v in value[: RAW_LIST_ITEMS // 2]]
            return [*head, f"… {len(value) - len(head):,} more items (full JSON: the raw link)"]
        return [_abbreviate(v) for v in value]
    if isinstance(value, dict):
        return {k: _abbreviate(v) for k, v in value.items()}
    if isinstance(value, str) and len(value) > RAW_TEXT_CHARS:
        return value[:RAW_TEXT_CHARS] + f"… ({len(value) - RAW_TEXT_CHARS:,} more characters)"
    return value


def message_views(messages: Sequence[Message], before: Message | None = None) -> list[MessageView]:
    """Timings and turn marks for a page of messages (``before``: the one preceding it)."""
    out: list[MessageView] = []
    prev = before
    request_at: float | None = None
    calls: dict[str, float] = {}
    for m in messages:
        latency = None
        turn = None
        if m.category == "model_request":
            request_at = m.created_at
            turn = m.payload.get("turn") if isinstance(m.payload.get("turn"), int) else None
        elif m.category == "model_reply" and request_at is not None:
            latency = m.created_at - request_at
        elif m.category == "tool_call":
            calls[str(m.payload.get("id"))] = m.created_at
        elif m.category == "tool_result":
            started = calls.get(str(m.payload.get("call_id")))
            latency = m.created_at - started if started is not None else None
        raw = orjson.dumps(
            _abbreviate(m.to_dict()),
            option=orjson.OPT_INDENT_2,
            default=str,
        ).decode()
        out.append(
            MessageView(
                m=m,
                dt=m.created_at - prev.created_at if prev is not None else None,
                latency=latency,
                turn=turn,
                new_attempt=prev is None or prev.attempt != m.attempt,
                raw=raw,
            )
        )
        prev = m
    return out


async def rollout_page(
    q: StoreReader,
    rollout_id: str,
    *,
    after: int = -1,
    show_answer: bool = False,
    tail: int | None = None,
    links: Links | None = None,
    page_size: int = MESSAGES_PER_PAGE,
) -> Page:
    links = links or Links()
    r = await q.rollout(rollout_id)
    if r is None:
        raise NotFound(f"no rollout {rollout_id!r} in this store")
    run = await _run_or_404(q, r.run_id)
    attempts = await q.attempts(r.id)
    totals = await q.rollout_totals(r.num)
    rows = await q.messages(r.num, after=after, limit=page_size + 1)
    more = rows[page_size - 1].seq if len(rows) > page_size else None
    rows = rows[:page_size]
    before = await q.message(r.num, after) if after >= 0 else None
    views = message_views(rows, before)
    group = await q.group(r.run_id, r.task_id)
    task = await q.task(r.run_id, r.task_id)
    truth = task.get("ground_truth") if (task is not None and show_answer) else None
    # an error while the run goes may be retried: keep watching
    retrying = r.state == "error" and run.status == "running"
    live = more is None and (r.state not in TERMINAL or retrying)
    last = rows[-1].seq if rows else after
    page = Page(
        "rollout.html",
        f"Rollout {r.id}",
        {
            "r": r,
            "run": run,
            "attempts": attempts,
            "totals": totals,
            "messages": views,
            "more": more,
            "after": after,
            "group": group,
            "task": {k: v for k, v in (task or {}).items() if k != "ground_truth"},
            "rollout_id": r.id,
            "page_size": None if page_size == MESSAGES_PER_PAGE else page_size,
            "show_answer": show_answer,
            "truth": truth,
            "links": links,
        },
        {
            "state": r.state,
            "turns": str(r.turns),
            "attempt": str(r.attempt),
            "reward": fmt_p(r.reward),
            "answer": r.answer or "–",
            "error": r.error or "–",
            "worker": r.worker or "–",
            "policy_version": r.policy_version or "–",
            "seconds": fmt_s(r.seconds),
            "messages": fmt_n(totals.messages),
            "prompt_tokens": fmt_n(totals.prompt_tokens),
            "completion_tokens": fmt_n(totals.completion_tokens),
            "model_replies": fmt_n(totals.model_replies),
            "tool_calls": fmt_n(totals.tool_calls),
        },
        shape=orjson.dumps([after, more is None]).decode(),
        live=live,
        tail=last,
        sections=("attempts",),
    )
    rollout_fields(group, page.fields)
    if tail is not None:
        fresh = await q.messages(r.num, after=tail, limit=page_size)
        prev = await q.message(r.num, tail)
        page.tail_messages = message_views(fresh, prev)
        page.tail = fresh[-1].seq if fresh else tail
    return page
