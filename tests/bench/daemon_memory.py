"""RSS of a real ``fspd serve`` under a wave of download jobs: idle before the wave, peak
during it (VmHWM, plus sampled VmRSS), and after every job has finished -- of the daemon and
its worker processes together (the jobs run in the workers).

usage: python -m tests.bench.daemon_memory [--jobs 20] [--max-jobs 4] [--size-gib 1]
       [--density 0.25] [--config '[transfer]\\nmax_buffered_blocks = 32'] [--emulator-url U]

The emulator (a separate process on 127.0.0.1) stands in for AWS; the targets go to a
scratch directory that is removed at the end. Prints one JSON line (and a summary).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl, EmulatorProcess
from tests.daemon.conftest import Daemon, download_job, wait_for, write_config

TERMINAL = ("completed", "failed", "cancelled")


def status_mib(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return 0.0


class Sampler(threading.Thread):
    """VmRSS of some processes (summed) every ``period`` seconds, keeping the largest seen."""

    def __init__(self, pids: list[int], period: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pids, self.period = pids, period
        self.peak = 0.0
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._halt.wait(self.period):
            try:
                rss = sum(status_mib(pid, "VmRSS") for pid in self.pids)
            except OSError:
                return
            self.peak = max(self.peak, rss)
            self.samples.append((time.monotonic() - start, rss))

    def stop(self) -> None:
        self._halt.set()
        self.join()


def settle(daemon: Daemon, names: list[str], timeout: float) -> dict[str, str]:
    """Wait (on the control socket) until every job is in a terminal state."""
    def states() -> dict[str, str] | None:
        out = {n: (daemon.api(f"/v1/jobs/{n}", missing_ok=True) or {}).get("state", "?")
               for n in names}
        return out if all(s in TERMINAL for s in out.values()) else None
    return wait_for(states, timeout, "every job to finish")


def run(jobs: int, max_jobs: int, size_gib: int, density: float, config: str,
        work: Path, emulator: EmulatorControl, timeout: float = 1800) -> dict[str, Any]:
    snaps = [emulator.synthetic(volume_size=size_gib, allocation="sparse", density=density,
                                seed=100 + i) for i in range(jobs)]
    conf = write_config(work / "fspd.toml", config)
    daemon = Daemon(work / "daemon", ["--config", str(conf), "--max-jobs", str(max_jobs),
                                      "--rescan-interval", "1"])
    daemon.start()
    try:
        assert daemon.proc is not None
        pids = [daemon.proc.pid, *(w["pid"] for w in daemon.api("/v1/status")["workers"])]
        idle = sum(status_mib(pid, "VmRSS") for pid in pids)
        sampler = Sampler(pids)
        sampler.start()
        names = [daemon.submit(download_job(emulator, snap, work / f"t{i}.img"), f"j{i}.toml")
                 for i, snap in enumerate(snaps)]
        states = settle(daemon, names, timeout)
        after = sum(status_mib(pid, "VmRSS") for pid in pids)
        sampler.stop()
        peak = sampler.peak
    finally:
        daemon.stop()
        shutil.rmtree(daemon.sock_dir, ignore_errors=True)
    failed = [n for n, s in states.items() if s != "completed"]
    if failed:
        raise SystemExit(f"jobs did not complete: {failed}\n{daemon.log()[-3000:]}")
    return {"jobs": jobs, "max_jobs": max_jobs, "size_gib": size_gib, "density": density,
            "idle_rss_mib": round(idle, 1), "peak_rss_mib": round(peak, 1),
            "after_rss_mib": round(after, 1), "processes": len(pids),
            # as tests/daemon/test_memory_bound.py: per worker, its interpreter and libraries
            # (96 MiB) and the service models it keeps after the wave (64 MiB)
            "target_peak_mib": 256 + 64 * max_jobs + 96 * (len(pids) - 1),
            "target_after_mib": round(idle + 64 * (len(pids) - 1), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.daemon_memory")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--max-jobs", type=int, default=4)
    parser.add_argument("--size-gib", type=int, default=1)
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--config", default="", help="extra fspd.toml text")
    parser.add_argument("--emulator-url", help="use this emulator instead of starting one")
    args = parser.parse_args()
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIAFSPDBENCH0000001",
                       "AWS_SECRET_ACCESS_KEY": "bench-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(key, value)
    work = Path(tempfile.mkdtemp(prefix="fspd-daemon-mem-"))
    config = args.config.replace("\\n", "\n")
    try:
        if args.emulator_url:
            r = run(args.jobs, args.max_jobs, args.size_gib, args.density, config, work,
                    EmulatorControl(args.emulator_url))
        else:
            with EmulatorProcess(data_dir=work / "emulator", args=["--no-throttling"]) as emu:
                assert emu.url is not None
                r = run(args.jobs, args.max_jobs, args.size_gib, args.density, config, work,
                        EmulatorControl(emu.url))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
