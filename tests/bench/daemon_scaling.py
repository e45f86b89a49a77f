"""The scaling section of the benchmark (``python -m tests.bench --only scaling``): N
concurrent download jobs through ``fspd serve`` with ``workers = 1`` and ``workers = W``.

Per run: aggregate MiB/s (all blocks over the wall time from submitting to the last job's
end), the client's CPU per block (fspd: the daemon and its workers, from /proc), and per
worker: its CPU per block (it must not grow with W) and its event loop's busy fraction (the
CPU time of the loop's thread over the wall time). The emulator (another process, throttling
off) shares the machine's cores, so on a small machine the aggregate cannot grow with W as it
would on a host with a core per worker; the per-worker figures say whether it would.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl
from tests.bench.daemon_memory import settle
from tests.daemon.conftest import Daemon, download_job, write_config

MIB = 1 << 20
BLOCK = 512 * 1024


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (and its threads), from /proc."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(workers: int, jobs: int, size_gib: int, density: float, work: Path,
        emulator: EmulatorControl, seed0: int) -> dict[str, Any]:
    snaps = [emulator.synthetic(volume_size=size_gib, allocation="sparse", density=density,
                                seed=seed0 + i) for i in range(jobs)]
    root = work / f"w{workers}"
    conf = write_config(work / f"fspd-w{workers}.toml")
    daemon = Daemon(root, ["--config", str(conf), "--max-jobs", str(jobs), "--workers",
                           str(workers), "--rescan-interval", "1"])
    daemon.start()
    try:
        assert daemon.proc is not None
        before = {w["pid"]: w for w in daemon.api("/v1/status")["workers"]}
        pids = [daemon.proc.pid, *before]
        cpu0 = {pid: cpu_s(pid) for pid in pids}
        start = time.monotonic()
        names = [daemon.submit(download_job(emulator, s, root / f"t{i}.img"), f"j{i}.toml")
                 for i, s in enumerate(snaps)]
        states = settle(daemon, names, 3600)
        wall = time.monotonic() - start
        after = {w["pid"]: w for w in daemon.api("/v1/status")["workers"]}
        cpu1 = {pid: cpu_s(pid) for pid in pids}
        blocks = sum(daemon.api(f"/v1/jobs/{n}")["blocks_done"] for n in names)
    finally:
        daemon.stop()
        shutil.rmtree(daemon.sock_dir, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    failed = [n for n, s in states.items() if s != "completed"]
    if failed:
        raise RuntimeError(f"jobs did not complete: {failed}\n{daemon.log()[-3000:]}")
    per_worker = []
    for pid, w in sorted(after.items(), key=lambda kv: kv[1]["index"]):
        done = w["blocks_done"] - before.get(pid, {}).get("blocks_done", 0)
        busy = w["loop_cpu_s"] - before.get(pid, {}).get("loop_cpu_s", 0.0)
        cpu = cpu1[pid] - cpu0[pid]
        per_worker.append({"pid": pid, "blocks": done,
                           "cpu_ms_per_block": round(1000 * cpu / done, 3) if done else None,
                           "loop_busy": round(busy / wall, 3)})
    total_cpu = sum(cpu1[p] - cpu0[p] for p in pids)
    return {"workers": workers, "jobs": jobs, "blocks": blocks, "wall_s": round(wall, 2),
            "mib_per_s": round(blocks * BLOCK / MIB / wall, 1),
            "fspd_cpu_ms_per_block": round(1000 * total_cpu / blocks, 3),
            "parent_cpu_ms_per_block": round(1000 * (cpu1[pids[0]] - cpu0[pids[0]]) / blocks, 3),
            "per_worker": per_worker}


def worker_counts(spec: str) -> list[int]:
    """``"1,4"`` -> [1, 4]: the worker counts to compare (each at least 1, ascending)."""
    return sorted({max(1, int(x)) for x in spec.split(",")})


def table(results: list[dict[str, Any]], jobs: int, size_gib: int, density: float
          ) -> list[str]:
    """The section's rows, and the ratios of each W to one worker."""
    lines = ["", f"fspd serve scaling: {jobs} concurrent downloads of {density:.0%} of "
             f"{size_gib} GiB each, {len(os.sched_getaffinity(0))} usable CPUs here (the "
             "emulator shares them)",
             f"{'workers':>7}{'MiB/s':>9}{'client CPU ms/block':>21}{'parent':>8}   "
             "per worker: CPU ms/block, event-loop busy"]
    for r in results:
        workers = ", ".join("idle" if w["cpu_ms_per_block"] is None else
                            f"{w['cpu_ms_per_block']:.2f} ms/{w['loop_busy']:.0%}"
                            for w in r["per_worker"])
        lines.append(f"{r['workers']:>7}{r['mib_per_s']:>9.1f}"
                     f"{r['fspd_cpu_ms_per_block']:>21.3f}{r['parent_cpu_ms_per_block']:>8.3f}"
                     f"   {workers}")
    one = next((r for r in results if r["workers"] == 1), None)
    for r in results:
        if one is None or r is one:
            continue
        per_worker = max((w["cpu_ms_per_block"] for w in r["per_worker"]
                          if w["cpu_ms_per_block"] is not None), default=0.0)
        base = max((w["cpu_ms_per_block"] for w in one["per_worker"]
                    if w["cpu_ms_per_block"] is not None), default=0.0)
        grows = per_worker / base if base else float("nan")
        lines.append(f"workers {r['workers']} vs 1: aggregate MiB/s "
                     f"{r['mib_per_s'] / one['mib_per_s']:.2f}x, client CPU per block "
                     f"{r['fspd_cpu_ms_per_block'] / one['fspd_cpu_ms_per_block']:.2f}x, "
                     f"per-worker CPU per block {grows:.2f}x (must not grow with W)")
    return lines
