"""Terminal output: a live progress bar (tqdm) on a TTY, and result summaries."""

from __future__ import annotations

import asyncio
import sys
import unicodedata
from typing import Any, TextIO

from fspd.blocks import BLOCK_SIZE
from fspd.progress import Progress


async def show_progress(progress: Progress, *, label: str, interval: float = 0.5) -> None:
    """Redraw a progress bar until cancelled. Until listing ends the total is an estimate,
    shown with a "~" (see :meth:`Progress.total`). Log lines are written above the bar
    (fspd.log clears it first), never onto it."""
    bar = ProgressBar(label)

    def draw() -> None:
        bar.show({**progress.estimate(), "blocks_done": progress.blocks_done,
                  "rate_recent_bps": progress.rates()[1],
                  "retries": sum(progress.retries.values())})

    try:
        while True:
            draw()
            await asyncio.sleep(interval)
    finally:
        draw()  # the final state (the exact total), left on screen
        bar.close()


class ProgressBar:
    """One bar line on a terminal (tqdm draws it; the text is ours, in binary units)."""

    def __init__(self, label: str, *, position: int | None = None,
                 stream: TextIO | None = None) -> None:
        from tqdm import tqdm  # only a command that draws a bar pays for importing it

        self.bar = tqdm(total=None, desc=label, file=stream or sys.stderr, position=position,
                        dynamic_ncols=True, leave=True, bar_format="{desc}")

    def show(self, rec: dict[str, Any], *, refresh: bool = True) -> None:
        percent = rec.get("percent")
        self.bar.total = 100
        self.bar.n = percent or 0
        text = progress_text(rec).replace("{", "{{").replace("}", "}}")
        self.bar.bar_format = ("{desc}: " + percent_text(rec) + " |{bar:20}| " + text
                               if percent is not None else "{desc}: " + text)
        if refresh:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def percent_text(rec: dict[str, Any]) -> str:
    """"43%", "~43%" while the total is estimated, "?" while nothing is known."""
    percent = rec.get("percent")
    if percent is None:
        return "?"
    return f"{'~' if rec.get('total_estimated') else ''}{percent:.0f}%"


def eta_text(rec: dict[str, Any]) -> str:
    """"2m10s", "~2m10s" while the total is estimated, "-" when unknown (or paused)."""
    eta = rec.get("eta_s")
    if eta is None:
        return "-"
    return f"{'~' if rec.get('total_estimated') else ''}{human_duration(eta)}"


def human_duration(seconds: float) -> str:
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"


def progress_text(rec: dict[str, Any]) -> str:
    """The words after the bar: bytes covered of the total, rate, ETA, blocks, retries."""
    listing = bool(rec.get("listing_only"))
    done = (rec.get("blocks_listed") if listing else rec.get("blocks_done")) or 0
    total = rec.get("blocks_total_estimate")
    approx = "~" if rec.get("total_estimated") else ""
    covered = human_bytes(done * BLOCK_SIZE)
    size = f"{covered} of {approx}{human_bytes(total * BLOCK_SIZE)}" if total else covered
    blocks = ("listed " if listing else "blocks ") + (
        f"{done}/{approx}{total}" if total else f"{done}/?")
    rate = 0.0 if rec.get("paused") or rec.get("state") == "paused" else (
        rec.get("rate_recent_bps") or 0)
    speed = "" if listing else f"{human_bytes(rate)}/s, "  # listing moves no bytes
    text = f"{size}, {speed}ETA {eta_text(rec)}, {blocks}"
    if rec.get("retries") is not None:
        text += f", retries {rec['retries']}"
    if rec.get("paused") or rec.get("state") == "paused":
        text += ", paused"
    return text


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
    """Binary (IEC) units everywhere: 1 KiB = 1024 B, 1 MiB = 2**20 B."""
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
    lines += [f"  {destination_line(dest)}" for dest in result.get("destinations", [])]
    return "\n".join(lines)


def destination_line(dest: dict[str, Any]) -> str:
    """One destination of a result: what it is (snapshot id and region, s3://bucket/prefix,
    or path), its state, and why it failed."""
    kind = dest.get("type")
    if kind == "s3":
        where = str(dest.get("url"))
    elif kind == "ebs":
        where = dest.get("snapshot_id") or "no snapshot started"
        if dest.get("region"):
            where += f" in {dest['region']}"
    else:
        where = str(dest.get("path"))
    line = f"{dest.get('destination', kind)}: {kind} {where} ({dest.get('state')})"
    if dest.get("error"):
        line += f": {dest['error']}"
    return printable(line)
