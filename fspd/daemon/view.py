"""What the daemon CLI prints: status tables, job details, and live bars for ``fspd watch``."""

from __future__ import annotations

import json
import re
import sys
import time
from typing import Any, TextIO

from fspd.daemon.states import TERMINAL
from fspd.display import ProgressBar, eta_text, human_bytes, percent_text, printable
from fspd.errors import BadInput

_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:ib|b)?|b)?(?:/s)?\s*$", re.IGNORECASE)


def parse_rate(text: str) -> int:
    """'0', 'unlimited', '500K', '100M', '1.5GiB', '20M/s' -> bytes per second.

    Units are binary (IEC) whichever way they are spelled: K, KB, KiB = 1024 B; M, MB,
    MiB = 2**20 B; G = 2**30 B; T = 2**40 B. fspd prints rates in KiB/s, MiB/s, GiB/s."""
    if text.strip().lower() in ("unlimited", "none", "off"):
        return 0
    m = _RATE.match(text)
    if not m:
        raise BadInput(f"{text!r} is not a rate (like 100M = 100 MiB/s, 1.5G, 0 = unlimited)",
                       field="RATE")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    return int(number * 1024 ** " kmgt".index(unit or " "))


def _pct(rec: dict[str, Any]) -> str:
    if rec.get("state") == "queued":
        return "-"
    return percent_text(rec)


def status_table(status: dict[str, Any], jobs: list[dict[str, Any]]) -> str:
    lines = [f"fspd {status['version']} pid {status['pid']}: {printable(status['summary'])}"]
    if not jobs:
        return "\n".join([*lines, "no jobs"])
    lines.append(f"{'JOB':<44} {'STATE':<10} {'PRIO':>4} {'DONE':>5} {'RATE':>12} {'ETA':>7}")
    for j in jobs:
        live = j["state"] in ("running", "paused")
        rate = (f"{human_bytes(0 if j['state'] == 'paused' else j.get('rate_recent_bps') or 0)}"
                "/s" if live else "")
        eta = eta_text(j) if live else ""
        lines.append(f"{printable(j['job'])[:44]:<44} {j['state']:<10} {j['priority']:>4} "
                     f"{_pct(j):>5} {rate:>12} {eta:>7}")
        if j.get("error"):
            lines.append(f"    {printable(j['error'].get('message'))}")
    return "\n".join(lines)


def job_detail(rec: dict[str, Any]) -> str:
    lines = [f"job {printable(rec['job'])}: {printable(rec['state'])}"]
    progress = rec.get("progress") or {}
    if progress:
        total = progress.get("blocks_total_estimate") or progress.get("blocks_total")
        approx = "~" if progress.get("total_estimated") else ""
        of = f"{approx}{total}" if total else "?"
        recent = 0 if rec["state"] == "paused" else progress.get("rate_recent_bps") or 0
        lines.append(f"  blocks {progress.get('blocks_done')}/{of}"
                     f" ({percent_text(progress)}), "
                     f"{human_bytes(progress.get('bytes_done') or 0)} moved, "
                     f"{human_bytes(progress.get('rate_avg_bps') or 0)}/s average, "
                     f"{human_bytes(recent)}/s recent, ETA {eta_text(progress)}")
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
    """One bar per job, fed by the daemon's event stream (the same text as a foreground
    job's bar: binary units, "~" on estimates)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.bars: dict[str, ProgressBar] = {}

    def update(self, event: dict[str, Any]) -> None:
        job = event.get("job")
        if not job or "state" not in event:
            return
        bar = self.bars.get(job)
        if bar is None:
            if event["state"] in TERMINAL and event.get("event") == "job":
                return  # history: not worth a bar
            bar = self.bars[job] = ProgressBar(printable(job)[:40], position=len(self.bars),
                                               stream=self.stream)
        bar.show(event)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def ndjson(event: dict[str, Any], stream: TextIO | None = None) -> None:
    stream = stream or sys.stdout
    stream.write(json.dumps({"time": round(time.time(), 3), **event}, default=str) + "\n")
    stream.flush()
