"""Terminal output: a live progress bar (tqdm) on a TTY, and result summaries."""

from __future__ import annotations

import asyncio
import sys
import unicodedata
from typing import Any

from tqdm import tqdm

from fspd.blocks import BLOCK_SIZE
from fspd.progress import Progress


async def show_progress(progress: Progress, *, label: str, interval: float = 0.5) -> None:
    """Redraw a progress bar until cancelled. Total is unknown until listing ends."""
    bar = tqdm(total=None, unit="B", unit_scale=True, unit_divisor=1024, desc=label,
               file=sys.stderr, dynamic_ncols=True, leave=True)
    shown = 0
    try:
        while True:
            if progress.blocks_total is not None and bar.total is None:
                bar.total = progress.blocks_total * BLOCK_SIZE
            bar.update(progress.bytes_done + progress.blocks_skipped * BLOCK_SIZE - shown)
            shown = progress.bytes_done + progress.blocks_skipped * BLOCK_SIZE
            retries = sum(progress.retries.values())
            bar.set_postfix(blocks=f"{progress.blocks_done}/{progress.blocks_total or '?'}",
                            retries=retries, refresh=False)
            await asyncio.sleep(interval)
    finally:
        bar.close()


# Control (Cc), format (Cf: bidi overrides, zero-width), line/paragraph separators and lone
# surrogates (undecodable bytes of a file name): shown escaped, never sent to the terminal.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def printable(value: object) -> str:
    """``value`` as text safe to print on a terminal: names, paths and messages that came from
    job files or the spool can hold escape sequences; they are shown as ``\\x1b``-style
    escapes instead of being interpreted."""
    text = str(value)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch.isprintable() or (ch == " ") or unicodedata.category(ch) not in _UNPRINTABLE:
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}")
    return "".join(out)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"


def summary(result: dict[str, Any]) -> str:
    verb = result.get("verb", "job")
    lines = []
    if verb in ("list", "diff") or result.get("dry_run"):
        what = "changed" if verb == "diff" else "allocated"
        lines.append(f"{printable(result.get('source'))}: {result['blocks']} {what} blocks, "
                     f"{human_bytes(result['blocks'] * BLOCK_SIZE)} "
                     f"(volume {human_bytes(result['volume_size'])})")
        if result.get("plan"):
            plan = result["plan"]
            lines.append(f"dry run: would move {plan['blocks_to_move']} blocks "
                         f"({human_bytes(plan['bytes_to_move'])}), {plan['get_requests']} "
                         f"gets, {plan['put_requests']} puts, about "
                         f"${plan['estimated_cost_usd']:.4f} and "
                         f"{plan['estimated_seconds_at_cap']} s at the per-snapshot cap")
        return "\n".join(lines)
    lines.append(f"{verb} done in {result['duration_s']:.1f} s: {result['blocks_done']} blocks,"
                 f" {human_bytes(result['bytes_done'])} moved, {result['blocks_skipped']} zero "
                 f"blocks skipped, retries {result['retries'] or 'none'}")
    for dest in result.get("destinations", []):
        where = dest.get("snapshot_id") or dest.get("path")
        region = f" in {dest['region']}" if dest.get("region") else ""
        lines.append(f"  {printable(dest['destination'])}: {printable(where)}{region} "
                     f"({dest['state']})")
    return "\n".join(lines)
