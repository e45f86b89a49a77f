"""What the daemon CLI prints: status tables, job details, and live bars for ``fspd watch``."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm

from fspd.blocks import BLOCK_SIZE
from fspd.daemon.scheduler import TERMINAL
from fspd.display import human_bytes, printable
from fspd.errors import BadInput

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?)(?:b)?(?:/s)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> int:
    """'0', 'unlimited', '500k', '100M', '1.5GiB', '20MB/s' -> bytes per second."""
    if text.strip().lower() in ("unlimited", "none", "off"):
        return 0
    m = _RATE.match(text)
    if not m:
        raise BadInput(f"{text!r} is not a rate (like 100M, 1.5GiB, 0 = unlimited)",
                       field="RATE")
    number, unit, binary = float(m.group(1)), m.group(2).lower(), m.group(3)
    power = " kmgt".index(unit) if unit else 0
    return int(number * (1024 if binary else 1000) ** power)


def _pct(rec: dict[str, Any]) -> str:
    total = rec.get("blocks_total")
    if not total:
        return "-" if rec.get("state") == "queued" else "?"
    return f"{100 * (rec.get('blocks_done') or 0) / total:.0f}%"


def status_table(status: dict[str, Any], jobs: list[dict[str, Any]]) -> str:
    lines = [f"fspd {status['version']} pid {status['pid']}: {printable(status['summary'])}"]
    if not jobs:
        return "\n".join([*lines, "no jobs"])
    lines.append(f"{'JOB':<44} {'STATE':<10} {'PRIO':>4} {'DONE':>5} {'RATE':>12} {'ETA':>7}")
    for j in jobs:
        eta = j.get("eta_s")
        rate = f"{human_bytes(j.get('rate_recent_bps') or 0)}/s" if j["state"] in (
            "running", "paused") else ""
        lines.append(f"{printable(j['job'])[:44]:<44} {j['state']:<10} {j['priority']:>4} "
                     f"{_pct(j):>5} "
                     f"{rate:>12} {'' if eta is None else f'{eta:.0f}s':>7}")
        if j.get("error"):
            lines.append(f"    {printable(j['error'].get('message'))}")
    return "\n".join(lines)


def job_detail(rec: dict[str, Any]) -> str:
    lines = [f"job {printable(rec['job'])}: {printable(rec['state'])}"]
    progress = rec.get("progress") or {}
    if progress:
        lines.append(f"  blocks {progress.get('blocks_done')}/{progress.get('blocks_total') or '?'}"
                     f", {human_bytes(progress.get('bytes_done') or 0)} moved, "
                     f"{human_bytes(progress.get('rate_avg_bps') or 0)}/s average, "
                     f"{human_bytes(progress.get('rate_recent_bps') or 0)}/s recent, "
                     f"ETA {progress.get('eta_s') if progress.get('eta_s') is not None else '-'}")
        for name, stage in (progress.get("stages") or {}).items():
            lines.append(f"  stage {name}: {stage['in_flight']} in flight, queue "
                         f"{stage['queue_depth']}, {stage['done']} done")
        if progress.get("retries"):
            lines.append(f"  retries {progress['retries']}")
        if progress.get("last_error"):
            lines.append(f"  last error: {printable(progress['last_error'])}")
    snaps = (rec.get("result") or {}).get("snapshot_ids") or rec.get("snapshot_ids")
    if snaps:
        lines.append("  snapshots: " + ", ".join(f"{printable(k)}={printable(v)}"
                                                 for k, v in snaps.items()))
    for dest in (rec.get("result") or {}).get("destinations", []):
        where = dest.get("snapshot_id") or dest.get("path")
        extra = f" checksum {dest['checksum']}" if dest.get("checksum") else ""
        lines.append(f"  {printable(dest.get('destination'))}: {printable(where)} "
                     f"({dest.get('state')}){extra}")
    if rec.get("error"):
        lines.append(f"  error: {printable(rec['error'].get('message'))}")
    return "\n".join(lines)


class Bars:
    """One tqdm bar per job, fed by the daemon's event stream."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bars: dict[str, tqdm[Any]] = {}
        self.shown: dict[str, int] = {}

    def update(self, event: dict[str, Any]) -> None:
        job = event.get("job")
        if not job or "state" not in event:
            return
        bar = self.bars.get(job)
        if bar is None:
            if event["state"] in TERMINAL and event.get("event") == "job":
                return  # history: not worth a bar
            bar = self.bars[job] = tqdm(total=None, unit="B", unit_scale=True,
                                        unit_divisor=1024, desc=printable(job)[:40],
                                        file=self.stream,
                                        position=len(self.bars), leave=True,
                                        dynamic_ncols=True)
            self.shown[job] = 0
        total = event.get("blocks_total")
        if total is not None and bar.total is None:
            bar.total = total * BLOCK_SIZE
        done = (event.get("blocks_done") or 0) * BLOCK_SIZE
        if done > self.shown[job]:
            bar.update(done - self.shown[job])
            self.shown[job] = done
        bar.set_postfix_str(printable(event["state"]), refresh=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def ndjson(event: dict[str, Any], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps({"time": round(time.time(), 3), **event}, default=str) + "\n")
    stream.flush()
