"""Scaling of ``fspd serve`` with its worker processes: N concurrent download jobs with
``workers = 1`` and ``workers = W``.

usage: python -m tests.bench.daemon_scaling [--jobs 4] [--workers 1,2] [--size-gib 1]
       [--density 0.1] [--emulator-url U]

Per run: aggregate MiB/s (all blocks over the wall time from submitting to the last job's
end), fspd's CPU per block (the daemon and its workers, from /proc), and per worker: its CPU
per block (it must not grow with W) and its event loop's busy fraction (the CPU time of the
loop's thread over the wall time). The emulator (another process, throttling off) shares the
machine's cores, so on a small machine the aggregate cannot grow with W as it would on a
host with a core per worker; the per-worker figures say whether it would. Prints a table and
one JSON line per run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl, EmulatorProcess
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
        raise SystemExit(f"jobs did not complete: {failed}\n{daemon.log()[-3000:]}")
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


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.daemon_scaling")
    parser.add_argument("--jobs", type=int, default=4)
    parser.add_argument("--workers", default=f"1,{len(os.sched_getaffinity(0))}",
                        help="comma-separated worker counts to compare")
    parser.add_argument("--size-gib", type=int, default=1)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--emulator-url", help="use this emulator instead of starting one")
    args = parser.parse_args()
    counts = sorted({max(1, int(x)) for x in args.workers.split(",")})
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIAFSPDBENCH0000001",
                       "AWS_SECRET_ACCESS_KEY": "bench-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    work = Path(tempfile.mkdtemp(prefix="fspd-daemon-scaling-"))
    results = []
    try:
        def measure(emulator: EmulatorControl) -> None:
            for n, w in enumerate(counts):
                results.append(run(w, args.jobs, args.size_gib, args.density, work, emulator,
                                   seed0=300 + 100 * n))

        if args.emulator_url:
            measure(EmulatorControl(args.emulator_url))
        else:
            with EmulatorProcess(data_dir=work / "emulator", args=["--no-throttling"]) as emu:
                assert emu.url is not None
                measure(EmulatorControl(emu.url))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"machine: {len(os.sched_getaffinity(0))} usable CPUs; {args.jobs} download jobs, "
          f"{args.size_gib} GiB volumes at density {args.density}")
    print(f"{'workers':>7} {'MiB/s':>8} {'fspd CPU ms/block':>18} {'parent ms/block':>16}  "
          "per worker: CPU ms/block, loop busy")
    for r in results:
        workers = ", ".join(f"{w['cpu_ms_per_block']} ms/{w['loop_busy']:.0%}"
                            for w in r["per_worker"])
        print(f"{r['workers']:>7} {r['mib_per_s']:>8} {r['fspd_cpu_ms_per_block']:>18} "
              f"{r['parent_cpu_ms_per_block']:>16}  {workers}")
    for r in results:
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
