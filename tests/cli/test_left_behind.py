"""What a failed or interrupted job leaves behind, and that its one-line error says so: a
target file this run created is removed when nothing can resume it; with a state dir it is
kept (and the error says where the checkpoint is); a file that existed before is never
removed (the error says it was overwritten); a pending snapshot is named with its region."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
from pathlib import Path

import boto3
import pytest

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner, assert_clean, fspd_argv
from tests.images import make_image

SLOW_READS = "[transfer]\nfetch_concurrency = 1\n"
SLOW_PUTS = "[transfer]\nput_concurrency = 1\n"


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "settings.toml"
    path.write_text(text)
    return path


def _start(command: str, env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(fspd_argv(command), env=env, cwd=cwd, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)


def _wait_for_requests(emulator: EmulatorControl, proc: subprocess.Popen[str], op: str,
                       count: int, timeout: float = 60) -> None:
    """Until the emulator has served ``count`` requests of ``op`` (the job is mid-way)."""
    deadline = time.monotonic() + timeout
    while emulator.stats()["requests"].get(op, 0) < count:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{op} never reached {count} requests"
        time.sleep(0.02)


def _finish(proc: subprocess.Popen[str]) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=120)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_clean(result)
    return result


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("fspd:")]
    assert len(lines) == 1, stderr
    return lines[0]


def _deny_reads_mid_download(emulator: EmulatorControl, proc: subprocess.Popen[str]) -> None:
    _wait_for_requests(emulator, proc, "GetSnapshotBlock", 3)
    emulator.config(deny=[{"operations": ["GetSnapshotBlock"]}])


@pytest.fixture
def slow_snapshot(emulator: EmulatorControl) -> str:
    """A 1 GiB snapshot whose reads take a while, so a test can act mid-download."""
    sid = emulator.synthetic(volume_size=1, allocation="sparse", density=0.05, seed=4)
    emulator.faults(latency_ms=50, operations=["GetSnapshotBlock"])
    return sid


@pytest.mark.timeout(120)
def test_failed_download_removes_the_file_it_created(
        cli_env: dict[str, str], tmp_path: Path, emulator: EmulatorControl,
        slow_snapshot: str) -> None:
    target = tmp_path / "out.img"
    cfg = _config(tmp_path, SLOW_READS)
    proc = _start(f"fspd download {slow_snapshot} {target} --config {cfg}", cli_env, tmp_path)
    _deny_reads_mid_download(emulator, proc)
    result = _finish(proc)
    assert result.returncode == 3, result.stderr
    assert not target.exists()
    assert f"removed the unfinished {target}" in _error_line(result.stderr)


@pytest.mark.timeout(120)
def test_failed_download_never_removes_a_file_that_existed(
        cli_env: dict[str, str], tmp_path: Path, emulator: EmulatorControl,
        slow_snapshot: str) -> None:
    target = tmp_path / "existing.img"
    target.write_bytes(b"precious" * 1000)
    cfg = _config(tmp_path, SLOW_READS)
    proc = _start(f"fspd download {slow_snapshot} {target} --config {cfg}", cli_env, tmp_path)
    _deny_reads_mid_download(emulator, proc)
    result = _finish(proc)
    assert result.returncode == 3, result.stderr
    assert target.exists()
    assert f"{target} was partially overwritten" in _error_line(result.stderr)


@pytest.mark.timeout(180)
def test_failed_download_with_a_state_dir_keeps_the_file_and_resumes(
        cli_env: dict[str, str], tmp_path: Path, emulator: EmulatorControl,
        slow_snapshot: str, fspd: Runner) -> None:
    target = tmp_path / "out.img"
    state = tmp_path / "state"
    cfg = _config(tmp_path, SLOW_READS + "checkpoint_interval_s = 0.2\n")
    job = tmp_path / "job.toml"
    job.write_text(f'verb = "download"\nsnapshot_id = "{slow_snapshot}"\npath = "{target}"\n')
    proc = _start(f"fspd run {job} --state-dir {state} --config {cfg}", cli_env, tmp_path)
    _deny_reads_mid_download(emulator, proc)
    result = _finish(proc)
    assert result.returncode == 3, result.stderr
    line = _error_line(result.stderr)
    assert target.exists() and f"kept the unfinished {target}" in line
    assert str(state) in line

    emulator.config(deny=[])
    emulator.clear_faults()
    again = fspd(f"fspd run {job} --state-dir {state} --json")
    assert again.returncode == 0, again.stderr
    want, got = hashlib.sha256(), hashlib.sha256()
    with target.open("rb") as f:
        for offset in range(0, 1 << 30, 256 << 20):
            want.update(emulator.image(slow_snapshot, offset=offset, length=256 << 20))
            got.update(f.read(256 << 20))
    assert got.hexdigest() == want.hexdigest()


@pytest.mark.timeout(120)
def test_interrupted_upload_names_the_pending_snapshot_it_left(
        cli_env: dict[str, str], tmp_path: Path, emulator: EmulatorControl) -> None:
    make_image(tmp_path / "disk.img", "D" * 40)
    emulator.faults(latency_ms=100, operations=["PutSnapshotBlock"])
    cfg = _config(tmp_path, SLOW_PUTS)
    proc = _start(f"fspd upload disk.img --config {cfg}", cli_env, tmp_path)
    _wait_for_requests(emulator, proc, "PutSnapshotBlock", 2)
    proc.send_signal(signal.SIGINT)
    result = _finish(proc)
    assert result.returncode == 5, result.stderr
    [snap] = emulator.snapshots(region="us-east-1")
    assert snap["status"] == "pending"
    line = _error_line(result.stderr)
    assert f"left pending snapshot {snap['id']} in us-east-1" in line
    assert "AWS deletes it after its Timeout" in line


@pytest.mark.timeout(120)
def test_failed_upload_names_the_pending_snapshot_it_left(
        fspd: Runner, tmp_path: Path, emulator: EmulatorControl) -> None:
    make_image(tmp_path / "disk.img", "D" * 4)
    emulator.config(deny=[{"operations": ["PutSnapshotBlock"]}])
    result = fspd("fspd upload disk.img")
    assert result.returncode == 3, result.stderr
    [snap] = emulator.snapshots(region="us-east-1")
    assert snap["status"] == "pending"
    assert f"left pending snapshot {snap['id']} in us-east-1" in _error_line(result.stderr)


@pytest.mark.timeout(180)
def test_getfroms3_of_a_damaged_archive_removes_the_file_it_created(
        fspd_s3: Runner, emulator: EmulatorControl, moto: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3", endpoint_url=moto, region_name="us-east-1")
    s3.create_bucket(Bucket="backups")
    sid = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=9)
    made = fspd_s3(f"fspd movetos3 {sid} s3://backups/web01")
    assert made.returncode == 0, made.stderr
    segments = [o["Key"] for o in s3.list_objects_v2(Bucket="backups", Prefix="web01/")
                ["Contents"] if not o["Key"].endswith("manifest.jsonl")]
    s3.put_object(Bucket="backups", Key=segments[-1], Body=b"not a zstd segment")
    target = tmp_path / "restored.img"
    result = fspd_s3(f"fspd getfroms3 s3://backups/web01 {target}")
    assert result.returncode == 4, result.stderr
    assert not target.exists()
    assert f"removed the unfinished {target}" in _error_line(result.stderr)
