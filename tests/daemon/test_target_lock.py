"""Two daemon jobs never write one target at once: the second fails at once naming the first,
and the first still completes byte-identical."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fspd.daemon.scheduler import engine_job_id
from fspd.emulator.control import EmulatorControl
from tests.daemon.conftest import Daemon, assert_file_is_snapshot, wait_for, write_config


def test_a_second_daemon_job_onto_a_target_in_use_fails_naming_the_first(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, tmp_path: Path) -> None:
    config = write_config(tmp_path / "fspd.toml", "[transfer]\nfetch_concurrency = 2\n")
    daemon = make_daemon("--config", str(config), "--rescan-interval", "1")
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.1, seed=51)
    other = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=52)
    out = tmp_path / "out.img"
    emulator.faults(latency_ms=40, operations=["GetSnapshotBlock"])

    def job(snapshot_id: str) -> str:
        return json.dumps({"verb": "download", "snapshot_id": snapshot_id, "path": str(out),
                           "endpoint_url": emulator.url})

    first = daemon.submit(job(snap), "first.json")
    wait_for(lambda: out.exists() and out.stat().st_blocks > 0, 60, "the first job's blocks")
    second = daemon.submit(job(other), "second.json")
    assert daemon.wait_finished(second, 30) == "failed", daemon.log()
    assert not (daemon.spool.box("done") / first).exists()  # refused while the first ran
    error = daemon.sidecar("failed", second)
    assert error["error"] == "BadInput" and error["field"] == "destinations[0].path"
    assert f"job {engine_job_id(first)}" in error["message"]
    assert "being written by another fspd job" in error["message"]
    emulator.clear_faults()
    assert daemon.wait_finished(first, 120) == "done", daemon.log()
    assert_file_is_snapshot(emulator, snap, out)
