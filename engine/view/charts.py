"""Charts drawn on the server as SVG: no script, every text escaped.

Pages show them as ``<img>`` (an SVG image can neither run script nor load
anything); the export embeds them as ``data:`` URIs.
"""

from __future__ import annotations

import base64
import math

from markupsafe import escape

from engine.view.summary import Lane

STATE_COLOURS = {
    "done": "#2e7d32",
    "failed": "#ef6c00",
    "timed_out": "#6a1b9a",
    "error": "#c62828",
    "cancelled": "#757575",
}
RUNNING_COLOUR = "#1565c0"
WIDTH = 1100
LABEL_W = 170
FONT = "font-family='system-ui, sans-serif' font-size='11'"


def _svg(height: float, body: list[str]) -> str:
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{WIDTH}' height='{height:.0f}'"
        f" viewBox='0 0 {WIDTH} {height:.0f}'><rect width='100%' height='100%' fill='#fff'/>"
        + "".join(body)
        + "</svg>"
    )


def _ticks(lo: float, hi: float, count: int = 8) -> list[float]:
    span = max(hi - lo, 1e-9)
    raw = span / count
    step = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if step * m >= raw:
            step *= m
            break
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _seconds(v: float) -> str:
    if v >= 3600:
        return f"{v / 3600:.1f} h"
    if v >= 60:
        return f"{v / 60:.1f} min"
    return f"{v:g} s"


def _axis(x0: float, x1: float, y: float, t_span: float) -> list[str]:
    out = [f"<line x1='{x0}' y1='{y}' x2='{x1}' y2='{y}' stroke='#999'/>"]
    for t in _ticks(0.0, t_span):
        x = x0 + (x1 - x0) * t / max(t_span, 1e-9)
        out.append(f"<line x1='{x:.1f}' y1='{y}' x2='{x:.1f}' y2='{y + 4}' stroke='#999'/>")
        label = _seconds(round(t, 6))
        out.append(f"<text x='{x:.1f}' y='{y + 15}' text-anchor='middle' {FONT}>{label}</text>")
    return out


def gantt_svg(lanes: list[Lane], t0: float, t1: float, now: float, note: str = "") -> str:
    """Attempts per worker slot over time, coloured by how they ended.

    One ``<path>`` per colour, and bars that touch within half a pixel merged,
    so tens of thousands of attempts stay a light image."""
    if not lanes:
        return _svg(40, [f"<text x='10' y='24' {FONT}>no attempts yet</text>"])
    row = max(2.0, min(14.0, 640.0 / len(lanes)))
    top, plot_h = 24.0, row * len(lanes)
    x0, x1 = float(LABEL_W), float(WIDTH - 10)
    scale = (x1 - x0) / max(t1 - t0, 1e-6)
    h = max(row - 1, 1)
    body = [f"<text x='{x0}' y='14' {FONT}>{escape(note)}</text>" if note else ""]
    paths: dict[str, list[str]] = {}
    last_worker = None
    for i, lane in enumerate(lanes):
        y = top + i * row + 0.5
        worker = lane.label.rsplit(" · ", 1)[0]
        if row >= 9 or worker != last_worker:
            body.append(
                f"<text x='{x0 - 6}' y='{y + min(row, 11) - 2.5:.1f}' text-anchor='end' {FONT}>"
                f"{escape(lane.label if row >= 9 else worker)}</text>"
            )
        last_worker = worker
        bar: tuple[str, float, float] | None = None  # colour, x from, x to
        for s in lane.spans:
            end = s.finished_at if s.finished_at is not None else now
            colour = STATE_COLOURS.get(s.state, RUNNING_COLOUR) if s.finished_at else RUNNING_COLOUR
            xa = x0 + (s.started_at - t0) * scale
            xb = max(x0 + (end - t0) * scale, xa + 1.0)
            if bar is not None and bar[0] == colour and xa - bar[2] < 0.5:
                bar = (colour, bar[1], max(bar[2], xb))
                continue
            if bar is not None:
                paths.setdefault(bar[0], []).append(
                    f"M{bar[1]:.1f} {y:.1f}h{bar[2] - bar[1]:.1f}v{h:.1f}h{bar[1] - bar[2]:.1f}z"
                )
            bar = (colour, xa, xb)
        if bar is not None:
            paths.setdefault(bar[0], []).append(
                f"M{bar[1]:.1f} {y:.1f}h{bar[2] - bar[1]:.1f}v{h:.1f}h{bar[1] - bar[2]:.1f}z"
            )
    body += [f"<path fill='{colour}' d='{''.join(d)}'/>" for colour, d in paths.items()]
    body += _axis(x0, x1, top + plot_h + 2, t1 - t0)
    legend_y = top + plot_h + 34
    lx = x0
    for name, colour in [*STATE_COLOURS.items(), ("running", RUNNING_COLOUR)]:
        body.append(f"<rect x='{lx}' y='{legend_y - 9}' width='10' height='10' fill='{colour}'/>")
        body.append(f"<text x='{lx + 14}' y='{legend_y}' {FONT}>{name}</text>")
        lx += 90
    return _svg(legend_y + 10, body)


def throughput_svg(counts: dict[int, int], bucket: float, buckets: int) -> str:
    """Attempts ended per time bucket since the run's first attempt started."""
    if not counts:
        return _svg(40, [f"<text x='10' y='24' {FONT}>nothing has ended yet</text>"])
    clamped: dict[int, int] = {}
    for b, n in counts.items():  # an end at the very last instant goes in the last bar
        index = min(max(b, 0), buckets - 1)
        clamped[index] = clamped.get(index, 0) + n
    counts = clamped
    top, plot_h = 20.0, 160.0
    x0, x1 = 60.0, float(WIDTH - 10)
    peak = max(counts.values())
    bar_w = (x1 - x0) / max(buckets, 1)
    body = [
        f"<text x='{x0}' y='14' {FONT}>attempts ended per {_seconds(round(bucket, 3))}"
        f" (peak {peak}, {peak / bucket:.2f}/s)</text>"
    ]
    for v in _ticks(0, peak, 4):
        y = top + plot_h - plot_h * v / peak
        body.append(f"<line x1='{x0}' y1='{y:.1f}' x2='{x1}' y2='{y:.1f}' stroke='#eee'/>")
        body.append(f"<text x='{x0 - 6}' y='{y + 4:.1f}' text-anchor='end' {FONT}>{v:g}</text>")
    for b, n in counts.items():
        h = plot_h * n / peak
        body.append(
            f"<rect x='{x0 + b * bar_w:.1f}' y='{top + plot_h - h:.1f}'"
            f" width='{max(bar_w - 1, 1):.1f}' height='{h:.1f}' fill='{RUNNING_COLOUR}'/>"
        )
    body += _axis(x0, x1, top + plot_h + 2, bucket * buckets)
    return _svg(top + plot_h + 24, body)


def data_uri(svg: str) -> str:
    """The SVG as a ``data:`` URI, for a self-contained page."""
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()
