"""Small server-side SVG charts for the pages: no JavaScript library, no CDN, printable.

Each function takes numbers and returns safe SVG markup; the only text drawn comes from the numbers
and from labels escaped here.
"""

from __future__ import annotations

from collections.abc import Sequence

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

W, H = 420, 160
PAD_L, PAD_R, PAD_T, PAD_B = 44, 10, 10, 26


def _n(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 100 or abs(value) < 0.01:
        return f"{value:.3g}"
    return f"{value:.3g}"


def _frame(body: str, label: str) -> SafeString:
    return mark_safe(
        f'<svg class="chart" viewBox="0 0 {W} {H}" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def _axes(y_lo: float, y_hi: float, x_lo: str, x_hi: str) -> str:
    x0, x1, y0, y1 = PAD_L, W - PAD_R, H - PAD_B, PAD_T
    return (
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" class="axis"/>'
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" class="axis"/>'
        f'<text x="{x0 - 4}" y="{y0}" class="tick" text-anchor="end">{_n(y_lo)}</text>'
        f'<text x="{x0 - 4}" y="{y1 + 8}" class="tick" text-anchor="end">{_n(y_hi)}</text>'
        f'<text x="{x0}" y="{H - 8}" class="tick">{escape(x_lo)}</text>'
        f'<text x="{x1}" y="{H - 8}" class="tick" text-anchor="end">{escape(x_hi)}</text>'
    )


def line(
    points: Sequence[tuple[float, float]], *, label: str, threshold: float | None = None, x_prefix: str = ""
) -> SafeString:
    """A line over (x, y) points, e.g. agreement against requests seen, with an optional threshold.

    ``x_prefix`` goes before the x labels ("v" for version numbers)."""
    if not points:
        return _frame("", label)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    lo = min([*ys, threshold if threshold is not None else min(ys)])
    hi = max([*ys, threshold if threshold is not None else max(ys)])
    if hi - lo < 1e-9:
        lo, hi = lo - 0.01, hi + 0.01
    x_lo, x_hi = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1

    def sx(x: float) -> float:
        return PAD_L + (x - x_lo) / (x_hi - x_lo) * (W - PAD_L - PAD_R)

    def sy(y: float) -> float:
        return H - PAD_B - (y - lo) / (hi - lo) * (H - PAD_T - PAD_B)

    path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    body = _axes(lo, hi, f"{x_prefix}{_n(x_lo)}", f"{x_prefix}{_n(x_hi)}")
    if threshold is not None:
        body += (
            f'<line x1="{PAD_L}" y1="{sy(threshold):.1f}" x2="{W - PAD_R}" y2="{sy(threshold):.1f}" '
            f'class="threshold"><title>threshold {_n(threshold)}</title></line>'
        )
    body += f'<polyline points="{path}" class="series"/>'
    body += "".join(
        f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="2" class="dot"><title>{escape(x_prefix)}{_n(x)}: {_n(y)}</title></circle>'
        for x, y in points[-50:]
    )
    return _frame(body, label)


def histogram(counts: Sequence[int], edges: Sequence[float], *, label: str) -> SafeString:
    if not counts:
        return _frame("", label)
    top = max(max(counts), 1)
    width = (W - PAD_L - PAD_R) / len(counts)
    body = _axes(0, top, _n(edges[0]), _n(edges[-1]))
    for i, count in enumerate(counts):
        h = count / top * (H - PAD_T - PAD_B)
        body += (
            f'<rect x="{PAD_L + i * width + 1:.1f}" y="{H - PAD_B - h:.1f}" width="{max(width - 2, 1):.1f}" '
            f'height="{h:.1f}" class="bar"><title>{_n(edges[i])}–{_n(edges[i + 1])}: {count}</title></rect>'
        )
    return _frame(body, label)


def bars(
    groups: Sequence[tuple[str, Sequence[tuple[str, float | None]]]], *, label: str, unit: str = ""
) -> SafeString:
    """Grouped bars, e.g. [("p50", [("candidate", 1.2), ("champion", 1.0)]), ("p95", …)]."""
    values = [v for _, series in groups for _, v in series if v is not None]
    top = max(values, default=1) or 1
    slots = sum(len(series) for _, series in groups) + len(groups)
    width = (W - PAD_L - PAD_R) / max(slots, 1)
    body = _axes(0, top, "", unit)
    x = PAD_L + width / 2
    for name, series in groups:
        body += f'<text x="{x + width * len(series) / 2:.1f}" y="{H - 8}" class="tick" text-anchor="middle">{escape(name)}</text>'
        for index, (who, value) in enumerate(series):
            h = (value or 0) / top * (H - PAD_T - PAD_B)
            body += (
                f'<rect x="{x:.1f}" y="{H - PAD_B - h:.1f}" width="{width - 2:.1f}" height="{h:.1f}" '
                f'class="bar bar-{index}"><title>{escape(who)} {escape(name)}: '
                f"{'—' if value is None else _n(value)} {escape(unit)}</title></rect>"
            )
            x += width
        x += width
    return _frame(body, label)
