"""``fspd serve``'s resident memory stays within its budget under a wave of jobs, and goes
back near idle once the wave is over (issue 12 item 12; the full-size figures come from
tests/bench/daemon_memory.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fspd.emulator.control import EmulatorControl
from fspd.memory import rss_mib
from tests.daemon.conftest import Daemon, download_job, wait_for

MAX_JOBS = 4
JOBS = 8
BASE_MIB = 256  # the process, its libraries and the default block budget (256 MiB)
PER_JOB_MIB = 64
SETTLED_MIB = 64  # what a worker may keep after the wave (its service models, caches)
PER_WORKER_MIB = 96  # a worker process: its interpreter, libraries and service models


def _peak_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def test_a_wave_of_jobs_stays_in_budget_and_memory_returns_after_it(
        emulator: EmulatorControl, make_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    d = make_daemon("--max-jobs", str(MAX_JOBS), "--rescan-interval", "1")
    assert d.proc is not None
    # The daemon and its worker processes (the jobs run in these; the budget is theirs).
    pids = [d.proc.pid, *(w["pid"] for w in d.api("/v1/status")["workers"])]
    idle = sum(rss_mib(pid) for pid in pids)
    snaps = [emulator.synthetic(volume_size=1, allocation="sparse", density=0.1, seed=70 + i)
             for i in range(JOBS)]
    names = [d.submit(download_job(emulator, snap, tmp_path / f"t{i}.img"), f"m{i}.toml")
             for i, snap in enumerate(snaps)]
    most_running = 0

    def all_finished() -> bool:
        nonlocal most_running
        most_running = max(most_running, len(d.api("/v1/status")["running"]))
        return all((d.api(f"/v1/jobs/{n}", missing_ok=True) or {}).get("state")
                   in ("completed", "failed") for n in names)

    wait_for(all_finished, 600, "every job to finish")
    after = sum(rss_mib(pid) for pid in pids)
    peak = sum(_peak_mib(pid) for pid in pids)  # at least the peak of the sum
    for name in names:
        assert d.sidecar("done", name)["state"] == "completed", d.log()[-3000:]
    assert 1 <= most_running <= MAX_JOBS
    limit = BASE_MIB + PER_JOB_MIB * MAX_JOBS + PER_WORKER_MIB * (len(pids) - 1)
    assert peak <= limit, f"peak RSS {peak:.0f} MiB > {limit} MiB ({len(pids)} processes)"
    settled = SETTLED_MIB * (len(pids) - 1)  # each worker parses the service models once
    assert after <= idle + settled, (
        f"RSS after the wave {after:.0f} MiB > idle {idle:.0f} MiB + {settled} MiB")
