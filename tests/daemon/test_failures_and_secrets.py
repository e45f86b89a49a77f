"""In ``fspd serve``, a job that fails on a full disk, a missing bucket or a permission revoked
mid-job lands in failed/ with a message naming the cause and keeps its checkpoint; the jobs
beside it complete, and putting the failed job back into new/ after the fix resumes it. No
credential, token or secret shows in the daemon's log, its socket or its spool, even at debug
level and even for failing jobs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fspd.daemon.scheduler import engine_job_id
from fspd.emulator.control import EmulatorControl
from tests.conftest import TEST_AWS_CONFIG
from tests.daemon.conftest import (
    Daemon,
    assert_file_is_snapshot,
    download_job,
    upload_job,
    wait_for,
)

CONFIG = """
[transfer]
fetch_concurrency = 4
put_concurrency = 4
checkpoint_interval_s = 0.1
[retry]
backoff_base_s = 0.01
backoff_cap_s = 0.1
""" + TEST_AWS_CONFIG


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB filesystem (tmpfs), unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8) to make a small filesystem")
    where = tmp_path / "small"
    where.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.fixture
def serve(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Callable[..., Daemon]:
    """Start a daemon with quick checkpoints and retries (extra args and env allowed)."""
    config = tmp_path / "fspd.toml"
    config.write_text(CONFIG)

    def start(*args: str, env: dict[str, str] | None = None) -> Daemon:
        return make_daemon("--config", str(config), "--rescan-interval", "1", *args, env=env)
    return start


def checkpoint_of(daemon: Daemon, name: str) -> Path:
    return daemon.root / "state" / "jobs" / engine_job_id(name) / "checkpoint.json"


def retry(daemon: Daemon, name: str) -> None:
    """What an operator does after fixing the cause: put the job file back into new/."""
    os.rename(daemon.spool.box("failed") / name, daemon.spool.box("new") / name)


def test_a_job_on_a_full_disk_fails_naming_it_while_others_complete_and_its_retry_resumes(
        serve: Callable[..., Daemon], emulator: EmulatorControl, moto: str,
        tmp_path: Path, small_fs: Path) -> None:
    daemon = serve()
    big = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=41)
    small = emulator.synthetic(volume_size=1, allocation="sparse", density=0.005, seed=42)
    full = daemon.submit(download_job(emulator, big, small_fs / "big.img"), "full.toml")
    nobucket = daemon.submit(json.dumps({
        "source": {"type": "ebs", "snapshot_id": small, "endpoint_url": emulator.url},
        "destinations": [{"type": "s3", "bucket": "fspd-no-such-bucket", "prefix": "web01",
                          "endpoint_url": moto}]}), "nobucket.json")
    fine = daemon.submit(download_job(emulator, small, tmp_path / "fine.img"), "fine.toml")

    assert daemon.wait_finished(fine) == "done"
    assert_file_is_snapshot(emulator, small, tmp_path / "fine.img")
    assert daemon.wait_finished(full) == "failed"
    error = daemon.sidecar("failed", full)
    assert "no space left" in error["message"] and str(small_fs) in error["message"], error
    assert checkpoint_of(daemon, full).exists()
    assert daemon.wait_finished(nobucket) == "failed"
    error = daemon.sidecar("failed", nobucket)
    assert error["error"] == "BadInput", error
    assert "bucket fspd-no-such-bucket does not exist" in error["message"]

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    retry(daemon, full)
    assert daemon.wait_finished(full) == "done"
    result = daemon.sidecar("done", full)
    assert result["resumed"] is True and result["blocks_resumed"] > 0
    assert_file_is_snapshot(emulator, big, small_fs / "big.img")
    assert not checkpoint_of(daemon, full).exists()
    assert daemon.proc is not None and daemon.proc.poll() is None


def test_revoked_permission_fails_one_upload_the_other_job_completes_and_a_retry_resumes(
        serve: Callable[..., Daemon], emulator: EmulatorControl, tmp_path: Path) -> None:
    daemon = serve()
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(60 * (512 << 10)))
    emulator.faults(latency_ms=60, operations=["PutSnapshotBlock"])
    up = daemon.submit(upload_job(emulator, image), "up.toml")
    wait_for(lambda: checkpoint_of(daemon, up).exists(), 30, "the upload's first checkpoint")
    emulator.config(deny=[{"operations": ["PutSnapshotBlock"]}])
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.005, seed=43)
    down = daemon.submit(download_job(emulator, snap, tmp_path / "down.img"), "down.toml")

    assert daemon.wait_finished(up) == "failed"
    error = daemon.sidecar("failed", up)
    assert error["error"] == "PermissionProblem", error
    assert "ebs:PutSnapshotBlock" in error["message"]
    assert daemon.wait_finished(down) == "done"
    assert_file_is_snapshot(emulator, snap, tmp_path / "down.img")
    pending = [s["id"] for s in emulator.snapshots() if s["status"] == "pending"]
    assert len(pending) == 1 and pending[0] in error["message"]
    assert pending[0] in checkpoint_of(daemon, up).read_text()

    emulator.config(deny=[])
    emulator.clear_faults()
    retry(daemon, up)
    assert daemon.wait_finished(up) == "done"
    result = daemon.sidecar("done", up)
    assert result["resumed"] is True and result["blocks_resumed"] > 0
    assert result["destinations"][0]["snapshot_id"] == pending[0]
    assert emulator.image(pending[0], length=image.stat().st_size) == image.read_bytes()


SECRET = "fspdSECRETmarker9b1d7e3c5a"
TOKEN = "fspdTOKENmarker4f6a8c0e2d"
AKID = "AKIAFSPDLEAKTEST0002"


def test_no_secret_reaches_the_log_the_socket_or_the_spool_even_at_debug_level(
        serve: Callable[..., Daemon], emulator: EmulatorControl, tmp_path: Path) -> None:
    # The emulator verifies signatures made with the marker secret: the requests are real.
    emulator.config(access_keys={AKID: {"secret": SECRET, "account": "111122223333"}},
                    deny=[{"operations": ["PutSnapshotBlock"]}])
    daemon = serve("--serve-log-level", "debug", env={
        "AWS_ACCESS_KEY_ID": AKID, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_SESSION_TOKEN": TOKEN})
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.005, seed=44)
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(4 * (512 << 10)))
    ok = daemon.submit(download_job(emulator, snap, tmp_path / "out.img"), "ok.toml")
    denied = daemon.submit(upload_job(emulator, image), "denied.toml")
    assert daemon.wait_finished(ok) == "done"
    assert daemon.wait_finished(denied) == "failed"
    assert "ebs:PutSnapshotBlock" in daemon.sidecar("failed", denied)["message"]

    status = daemon.cli("status", "--json")
    assert status.returncode == 0, status.stderr
    jobs_view = [daemon.cli("status", name, "--json") for name in (ok, denied)]
    answers = [status.stdout, status.stderr, *(r.stdout + r.stderr for r in jobs_view),
               json.dumps(daemon.api("/v1/jobs")), json.dumps(daemon.api(f"/v1/jobs/{denied}"))]
    files = "\n".join(p.read_bytes().decode("utf-8", "replace")
                      for p in sorted(daemon.root.rglob("*")) if p.is_file())
    log = daemon.log()
    assert log.count('"event": "job_finished"') == 2  # the log covers both jobs
    assert checkpoint_of(daemon, denied).exists()  # the failed job's journal is included
    for where, text in [("serve.log", log), ("socket answers", "\n".join(answers)),
                        ("spool and state files", files)]:
        assert SECRET not in text, f"the secret access key leaked into {where}"
        assert TOKEN not in text, f"the session token leaked into {where}"
