"""S3 archive windows reserve the daemon's shared block budget whole (issue 12 item 12): jobs
that share a small budget never deadlock on half-filled windows, and a job cancelled in the
middle of a window gives its reservation back."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fspd.emulator.control import EmulatorControl
from tests.daemon.conftest import Daemon, wait_for
from tests.s3._support import BUCKET, assert_archive_is_exactly, s3_client

BUDGET = 32  # blocks; each job's windows need all of it (segment_blocks = BUDGET)


def _config(tmp_path: Path, fetch_concurrency: int = 8) -> str:
    path = tmp_path / "budget.toml"
    path.write_text(
        '[aws]\nallow_endpoints = ["http://127.0.0.1:*"]\n'
        f"[transfer]\nmax_buffered_blocks = {BUDGET}\nfetch_concurrency = {fetch_concurrency}\n")
    return str(path)


def _archive_job(emulator: EmulatorControl, moto: str, snapshot_id: str, prefix: str) -> str:
    return json.dumps({
        "source": {"type": "ebs", "snapshot_id": snapshot_id, "endpoint_url": emulator.url},
        "destinations": [{"type": "s3", "bucket": BUCKET, "prefix": prefix,
                          "endpoint_url": moto, "segment_blocks": BUDGET, "zstd_level": 1}]})


def _state(d: Daemon, name: str) -> str | None:
    return (d.api(f"/v1/jobs/{name}", missing_ok=True) or {}).get("state")


def test_archive_jobs_sharing_a_small_budget_all_complete(
        emulator: EmulatorControl, moto: str, make_daemon: Callable[..., Daemon],
        tmp_path: Path) -> None:
    s3_client(moto).create_bucket(Bucket=BUCKET)
    d = make_daemon("--config", _config(tmp_path), "--max-jobs", "3",
                    "--rescan-interval", "1")
    snaps = [emulator.synthetic(volume_size=1, allocation="sparse", density=0.15, seed=90 + i)
             for i in range(3)]
    names = [d.submit(_archive_job(emulator, moto, snap, f"arch{i}"), f"a{i}.json")
             for i, snap in enumerate(snaps)]
    most_running = 0

    def all_finished() -> bool:
        nonlocal most_running
        most_running = max(most_running, len(d.api("/v1/status")["running"]))
        return all(_state(d, n) in ("completed", "failed", "cancelled") for n in names)

    wait_for(all_finished, 300, "every archive job to finish")
    assert most_running >= 2  # they did share the budget
    for i, name in enumerate(names):
        result = d.sidecar("done", name)
        assert result["state"] == "completed", d.log()[-3000:]
        [dest] = result["destinations"]
        assert dest["stored_blocks"] == result["progress"]["blocks_done"] > 0
        assert assert_archive_is_exactly(moto, BUCKET, f"arch{i}")


def test_a_job_cancelled_mid_window_gives_its_reservation_back(
        emulator: EmulatorControl, moto: str, make_daemon: Callable[..., Daemon],
        tmp_path: Path) -> None:
    s3_client(moto).create_bucket(Bucket=BUCKET)
    # Two fetchers and slow reads: a window of 32 blocks fills over seconds.
    d = make_daemon("--config", _config(tmp_path, fetch_concurrency=2), "--max-jobs", "1",
                    "--rescan-interval", "1")
    slow = emulator.synthetic(volume_size=1, allocation="sparse", density=0.2, seed=95)
    emulator.faults(latency_ms=150, operations=["GetSnapshotBlock"])
    first = d.submit(_archive_job(emulator, moto, slow, "cancelled"), "first.json")
    wait_for(lambda: (d.api(f"/v1/jobs/{first}", missing_ok=True) or {}).get(
        "progress", {}).get("blocks_done", 0) >= 3, 60, "the first window to fill in part")
    assert d.job(first)["progress"]["blocks_done"] < BUDGET  # its window is not complete
    cancelled = d.cli("cancel", first)
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for(lambda: _state(d, first) == "cancelled", 60, "the cancel to take effect")
    emulator.clear_faults()
    # The next job needs the whole budget for each of its windows: it runs only if the
    # cancelled job's reservation came back.
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.1, seed=96)
    second = d.submit(_archive_job(emulator, moto, snap, "after"), "second.json")
    wait_for(lambda: _state(d, second) in ("completed", "failed", "cancelled"), 120,
             "the next job to finish")
    result = d.sidecar("done", second)
    assert result["state"] == "completed", d.log()[-3000:]
    assert assert_archive_is_exactly(moto, BUCKET, "after")
