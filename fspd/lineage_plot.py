"""``fspd analyze --plot FILE.svg``: a lineage's size and change rate over time, as a small
hand-written SVG (no plotting library at run time).

Left axis and line: allocated GiB of each snapshot. Right axis and bars: the change rate,
GiB stored by a snapshot per day since the one before (the first snapshot has no rate).
Each point and bar carries a ``<title>`` (a tooltip) with the exact figures.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from itertools import pairwise
from typing import Any

W, H = 760, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 70, 40, 60
GIB = 1 << 30
SIZE_COLOUR, RATE_COLOUR = "#1f5fa8", "#e08a1e"


def _when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _nice(top: float) -> float:
    """A round axis maximum at or above ``top``."""
    if top <= 0:
        return 1.0
    step = 10 ** math.floor(math.log10(top))
    for mult in (1, 2, 4, 8, 10):  # quarters of these are round too (the grid has four)
        if mult * step >= top:
            return mult * step
    return 10 * step


def rates(rows: Sequence[dict[str, Any]]) -> list[float | None]:
    """GiB/day each snapshot stored since the previous one (None for the first, or when
    two snapshots share a timestamp)."""
    out: list[float | None] = [None]
    for prev, row in pairwise(rows):
        days = (_when(row["start_time"]) - _when(prev["start_time"])) / 86400
        out.append(row["new_bytes"] / GIB / days if days > 0 else None)
    return out


def svg(rows: Sequence[dict[str, Any]], title: str) -> str:
    """The chart of ``rows`` (``SnapshotFigures.as_dict()``, oldest first)."""
    times = [_when(r["start_time"]) for r in rows]
    sizes = [r["allocated_bytes"] / GIB for r in rows]
    rate = rates(rows)
    t0, t1 = min(times), max(times)
    span = (t1 - t0) or 1.0
    size_max = _nice(max(sizes))
    rate_max = _nice(max([r for r in rate if r is not None], default=0.0))
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM

    bar = max(4.0, min(24.0, pw / max(1, len(rows)) * 0.5))
    inner = pw - 2 * bar  # end bars stay inside the axes

    def x(t: float) -> float:
        return LEFT + bar + (inner * (t - t0) / span if len(rows) > 1 else inner / 2)

    def y(value: float, top: float) -> float:
        return TOP + ph * (1 - value / top)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{escape(title)}</text>']
    for i in range(5):  # grid and both axes' labels
        frac = i / 4
        gy = TOP + ph * (1 - frac)
        out.append(f'<line x1="{LEFT}" y1="{gy:.1f}" x2="{LEFT + pw}" y2="{gy:.1f}" '
                   'stroke="#ddd"/>')
        out.append(f'<text x="{LEFT - 6}" y="{gy + 4:.1f}" text-anchor="end" '
                   f'fill="{SIZE_COLOUR}">{size_max * frac:g}</text>')
        out.append(f'<text x="{LEFT + pw + 6}" y="{gy + 4:.1f}" '
                   f'fill="{RATE_COLOUR}">{rate_max * frac:.3g}</text>')
    out.append(f'<text x="16" y="{TOP + ph / 2}" fill="{SIZE_COLOUR}" text-anchor="middle" '
               f'transform="rotate(-90 16 {TOP + ph / 2})">allocated GiB</text>')
    out.append(f'<text x="{W - 14}" y="{TOP + ph / 2}" fill="{RATE_COLOUR}" '
               f'text-anchor="middle" transform="rotate(90 {W - 14} {TOP + ph / 2})">'
               'stored GiB per day</text>')
    for row, t, r in zip(rows, times, rate, strict=True):
        if r is None:
            continue
        top = y(r, rate_max)
        out.append(f'<rect class="rate" x="{x(t) - bar / 2:.1f}" y="{top:.1f}" '
                   f'width="{bar:.1f}" height="{TOP + ph - top:.1f}" fill="{RATE_COLOUR}" '
                   f'opacity="0.7"><title>{escape(row["snapshot_id"])}: {r:.3f} GiB/day'
                   '</title></rect>')
    points = " ".join(f"{x(t):.1f},{y(s, size_max):.1f}" for t, s in zip(times, sizes,
                                                                          strict=True))
    out.append(f'<polyline class="size" points="{points}" fill="none" '
               f'stroke="{SIZE_COLOUR}" stroke-width="2"/>')
    for row, t, s in zip(rows, times, sizes, strict=True):
        out.append(f'<circle class="size" cx="{x(t):.1f}" cy="{y(s, size_max):.1f}" r="3.5" '
                   f'fill="{SIZE_COLOUR}"><title>{escape(row["snapshot_id"])} '
                   f'{escape(row["start_time"])}: {s:.3f} GiB allocated</title></circle>')
    out.append(f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" '
               'stroke="#333"/>')
    out.append(f'<g class="legend"><line x1="{LEFT + 10}" y1="{TOP + 10}" x2="{LEFT + 30}" '
               f'y2="{TOP + 10}" stroke="{SIZE_COLOUR}" stroke-width="2"/>'
               f'<text x="{LEFT + 36}" y="{TOP + 14}">allocated GiB</text>'
               f'<rect x="{LEFT + 140}" y="{TOP + 4}" width="12" height="12" '
               f'fill="{RATE_COLOUR}" opacity="0.7"/>'
               f'<text x="{LEFT + 158}" y="{TOP + 14}">stored GiB per day since the previous '
               'snapshot</text></g>')
    for t in sorted({times[0], times[-1]}):
        label = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M UTC")
        out.append(f'<text x="{x(t):.1f}" y="{TOP + ph + 16}" text-anchor="middle">'
                   f'{label}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
