"""kill -9 at a random moment, run the same job again: it resumes from its checkpoint and the
result is byte-identical, with nothing duplicated or left pending."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fspd.emulator.control import EmulatorControl
from tests.checkpoints import durable_blocks
from tests.conftest import TEST_AWS_CONFIG
from tests.daemon.conftest import wait_for
from tests.engine._support import assert_matches_snapshot, make_image
from tests.waiting import wait_until

CONFIG = """
[transfer]
fetch_concurrency = 2
put_concurrency = 2
checkpoint_interval_s = 0.1
[retry]
backoff_base_s = 0.01
backoff_cap_s = 0.2
""" + TEST_AWS_CONFIG


def _start(job: Path, state: Path, config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "fspd", "--log-level", "warning", "run", str(job),
         "--state-dir", str(state), "--config", str(config), "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _journalled(state: Path) -> int:
    return max((durable_blocks(c) for c in state.glob("*/checkpoint.json")), default=0)


def _kill_mid_job(job: Path, state: Path, config: Path, seed: int) -> None:
    """Start the job and kill -9 it once its checkpoint on disk claims a random, seeded
    number of durable blocks (a condition, not a time: the callers slow the job down with
    emulator latency, so it is still running then)."""
    proc = _start(job, state, config)
    want = random.Random(seed).randint(1, 8)
    wait_until(lambda: _journalled(state) >= want, proc, f"{want} durable blocks journalled")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.communicate()


def _finish(job: Path, state: Path, config: Path) -> dict[str, Any]:
    proc = _start(job, state, config)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return dict(json.loads(out))


def _setup(tmp_path: Path, spec: dict[str, Any]) -> tuple[Path, Path, Path]:
    job, state, config = tmp_path / "job.json", tmp_path / "state", tmp_path / "fspd.toml"
    job.write_text(json.dumps({"name": "resume-me", **spec}))
    config.write_text(CONFIG)
    return job, state, config


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_download_killed_mid_way_resumes_and_is_byte_identical(
        emulator: EmulatorControl, tmp_path: Path, seed: int) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.4, seed=seed)
    out = tmp_path / "out.img"
    job, state, config = _setup(tmp_path, {
        "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
        "destinations": [{"type": "file", "path": str(out)}]})
    emulator.faults(latency_ms=30, operations=["GetSnapshotBlock"])
    _kill_mid_job(job, state, config, seed)
    emulator.clear_faults()
    emulator.reset_stats()
    result = _finish(job, state, config)
    assert result["resumed"] is True and result["blocks_resumed"] > 0
    gets = emulator.stats()["requests"]["GetSnapshotBlock"]
    assert gets == result["blocks_done"] - result["blocks_resumed"]
    assert_matches_snapshot(out, emulator, snap)
    assert not (state / "resume-me" / "checkpoint.json").exists()


@pytest.mark.parametrize("seed", [4, 5])
def test_upload_killed_mid_way_completes_the_same_snapshot(
        emulator: EmulatorControl, tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    layout = "".join(rnd.choice("DDDDHZ") for _ in range(160)) + "T"
    image = make_image(tmp_path / "disk.img", layout, seed=seed)
    job, state, config = _setup(tmp_path, {
        "source": {"type": "file", "path": str(tmp_path / "disk.img")},
        "destinations": [{"type": "ebs", "endpoint_url": emulator.url}]})
    emulator.faults(latency_ms=150, operations=["PutSnapshotBlock"])
    _kill_mid_job(job, state, config, seed)
    emulator.clear_faults()
    pending = [s for s in emulator.snapshots() if s["status"] == "pending"]
    assert len(pending) == 1
    emulator.reset_stats()
    result = _finish(job, state, config)
    snapshots = emulator.snapshots()
    assert [s["id"] for s in snapshots] == [pending[0]["id"]]  # the same one, no orphan
    assert snapshots[0]["status"] == "completed"
    assert result["destinations"][0]["snapshot_id"] == pending[0]["id"]
    puts = emulator.stats()["requests"].get("PutSnapshotBlock", 0)
    assert puts < layout.count("D") + 1
    assert emulator.image(pending[0]["id"], length=len(image)) == image


def test_copy_killed_mid_way_resumes_into_the_same_snapshot(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.3, zero_fraction=0.1, seed=6)
    job, state, config = _setup(tmp_path, {
        "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
        "destinations": [{"type": "ebs", "region": "eu-west-1",
                          "endpoint_url": emulator.url}]})
    emulator.faults(latency_ms=30, operations=["PutSnapshotBlock"])
    _kill_mid_job(job, state, config, 6)
    emulator.clear_faults()
    result = _finish(job, state, config)
    copies = emulator.snapshots(region="eu-west-1")
    assert len(copies) == 1 and copies[0]["status"] == "completed"
    assert result["blocks_resumed"] > 0
    copy = result["destinations"][0]["snapshot_id"]
    for offset in range(0, 1 << 30, 128 << 20):
        assert emulator.image(copy, region="eu-west-1", offset=offset, length=128 << 20) == \
            emulator.image(snap, offset=offset, length=128 << 20)


def test_a_pending_snapshot_that_timed_out_restarts_cleanly_and_says_so(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    emulator.config(timeout_unit_seconds=0.15)  # Timeout=10 "minutes" lasts 1.5 s
    image = make_image(tmp_path / "disk.img", "D" * 120, seed=7)
    job, state, config = _setup(tmp_path, {
        "source": {"type": "file", "path": str(tmp_path / "disk.img")},
        "destinations": [{"type": "ebs", "endpoint_url": emulator.url,
                          "timeout_minutes": 10}]})
    emulator.faults(latency_ms=150, operations=["PutSnapshotBlock"])
    _kill_mid_job(job, state, config, 7)
    emulator.clear_faults()
    wait_for(lambda: [s["status"] for s in emulator.snapshots()] == ["error"], 30,
             "the pending snapshot's Timeout to pass")
    emulator.config(timeout_unit_seconds=60)
    result = _finish(job, state, config)
    assert any("started a new snapshot" in note for note in result.get("notes", []))
    new = result["destinations"][0]["snapshot_id"]
    statuses = {s["id"]: s["status"] for s in emulator.snapshots()}
    assert statuses[new] == "completed"
    assert "pending" not in statuses.values()
    assert emulator.image(new, length=len(image)) == image


def test_a_changed_job_file_never_resumes_another_jobs_progress(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    from fspd.checkpoint import Checkpoint

    cp = Checkpoint.open(tmp_path, "j", "spec-a")
    cp.save({"destinations[0]": {"type": "file", "bitmap": "", "fresh": True}})
    assert Checkpoint.open(tmp_path, "j", "spec-a").resumed
    other = Checkpoint.open(tmp_path, "j", "spec-b")
    assert not other.resumed and "different job spec" in other.notes[0]
    os.unlink(tmp_path / "checkpoint.json")
