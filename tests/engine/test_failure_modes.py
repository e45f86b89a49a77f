"""When the world breaks mid-job — the destination fills up or vanishes, the bucket is not
there, AWS revokes a permission — the job fails with a message naming the cause, keeps its
checkpoint, and a rerun after the fix resumes instead of starting over.

Jobs run as ``fspd run`` child processes, as a user would run them: the exit code, the one
line on stderr (never a traceback) and the state directory are what is checked."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fspd.emulator.control import EmulatorControl
from fspd.errors import BadInput, ExitCode, PermissionProblem
from tests.conftest import TEST_AWS_CONFIG
from tests.engine._support import (
    assert_matches_snapshot,
    fast_settings,
    make_image,
    run,
)
from tests.fakes import WatchedProgress
from tests.waiting import wait_until

CONFIG = """
[transfer]
fetch_concurrency = 4
put_concurrency = 4
checkpoint_interval_s = 0.1
[retry]
backoff_base_s = 0.01
backoff_cap_s = 0.1
""" + TEST_AWS_CONFIG


def _mount_tmpfs(where: Path, size: str) -> None:
    where.mkdir(exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB filesystem (tmpfs), unmounted afterwards."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root and mount(8) to make a small filesystem")
    where = tmp_path / "small"
    _mount_tmpfs(where, "8m")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


class Job:
    """One job file, config and state directory, run by ``fspd run`` child processes."""

    def __init__(self, tmp_path: Path, spec: dict[str, Any], config: str = CONFIG) -> None:
        self.file = tmp_path / "job.json"
        self.state = tmp_path / "state"
        self.config = tmp_path / "fspd.toml"
        self.file.write_text(json.dumps({"name": "failing", **spec}))
        self.config.write_text(config)
        self.proc: subprocess.Popen[str] | None = None

    @property
    def checkpoint(self) -> Path:
        return self.state / "failing" / "checkpoint.json"

    def start(self) -> subprocess.Popen[str]:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fspd", "--log-level", "warning", "run", str(self.file),
             "--state-dir", str(self.state), "--config", str(self.config), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        return self.proc

    def wait_for_checkpoint(self) -> None:
        """Until the running job has journalled at least one block."""
        assert self.proc is not None
        wait_until(lambda: self.checkpoint.exists() and _journalled(self.checkpoint),
                   self.proc, "a block journalled", timeout=30)

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        assert self.proc is not None
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def run(self, timeout: float = 60) -> tuple[int, str, str]:
        self.start()
        return self.finish(timeout)


def _journalled(checkpoint: Path) -> int:
    """How many blocks a checkpoint claims are durable at its destinations (0 if none)."""
    import base64
    import zlib

    try:
        data = json.loads(checkpoint.read_text())
    except (OSError, ValueError):
        return 0
    claimed = 0
    for state in data.get("sinks", {}).values():
        text = state.get("bitmap") or state.get("written")
        if text:
            raw = zlib.decompress(base64.b64decode(text))
            claimed += sum(bin(b).count("1") for b in raw)
    return claimed


def _one_line_error(err: str) -> str:
    """The user-facing error: a single ``fspd:`` line and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("fspd: ")]
    assert len(lines) == 1, err
    return lines[0]


# --- destination disk full -----------------------------------------------------------------

def test_download_to_a_full_filesystem_names_it_and_resumes_once_there_is_room(
        emulator: EmulatorControl, tmp_path: Path, small_fs: Path) -> None:
    # ~40 data blocks (20 MiB) do not fit in 8 MiB, however sparse the image file is.
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.02, seed=31)
    out = small_fs / "restore.img"
    job = Job(tmp_path, {
        "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
        "destinations": [{"type": "file", "path": str(out)}]})
    code, _, err = job.run()
    assert code == ExitCode.TRANSFER_FAILED, err
    message = _one_line_error(err)
    assert "no space left" in message.lower() and str(small_fs) in message, message
    assert _journalled(job.checkpoint) > 0, "the blocks written before the disk filled are lost"

    subprocess.run(["mount", "-o", "remount,size=64m", str(small_fs)], check=True)
    emulator.reset_stats()
    code, out_json, err = job.run()
    assert code == 0, err
    result = json.loads(out_json)
    assert result["resumed"] is True and result["blocks_resumed"] > 0
    gets = emulator.stats()["requests"]["GetSnapshotBlock"]
    assert gets == result["blocks_done"] - result["blocks_resumed"]
    assert_matches_snapshot(out, emulator, snap)
    assert not job.checkpoint.exists()


# --- destination device vanishing ----------------------------------------------------------

@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A 1 GiB loop device over a sparse file: (device, backing file)."""
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup")
    backing = tmp_path / "backing.img"
    with open(backing, "wb") as f:
        f.truncate(1 << 30)
    made = subprocess.run(["losetup", "--find", "--show", str(backing)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a loop device here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device, backing
    finally:
        subprocess.run(["losetup", "-d", device], capture_output=True, check=False)


def _vanish(device: str, backing: Path) -> None:
    """What the kernel does when a disk is pulled: the device reports no capacity any more.
    (``losetup -d`` alone only marks a device that is open for detaching on its last close.)"""
    subprocess.run(["losetup", "-d", device], check=True)
    os.truncate(backing, 0)
    subprocess.run(["losetup", "--set-capacity", device], check=True)


def test_download_to_a_device_that_vanishes_names_the_device_and_keeps_the_checkpoint(
        emulator: EmulatorControl, tmp_path: Path, loop_device: tuple[str, Path]) -> None:
    device, backing = loop_device
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.05, seed=32)
    job = Job(tmp_path, {
        "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
        "destinations": [{"type": "file", "path": device}]},
        CONFIG + f'[paths]\nallow_devices = ["{device}"]\n')
    emulator.faults(latency_ms=40, operations=["GetSnapshotBlock"])
    job.start()
    job.wait_for_checkpoint()
    _vanish(device, backing)
    code, _, err = job.finish()
    assert code == ExitCode.TRANSFER_FAILED, err
    message = _one_line_error(err)
    assert f"device {device} disappeared" in message, message
    assert _journalled(job.checkpoint) > 0


# --- S3 bucket missing ---------------------------------------------------------------------

async def test_movetos3_to_a_missing_bucket_names_it_before_any_block_is_read(
        emulator: EmulatorControl, moto: str, tmp_path: Path) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.01, seed=33)
    with pytest.raises(BadInput, match="bucket fspd-no-such-bucket does not exist") as info:
        await run({"source": {"type": "ebs", "snapshot_id": snap,
                              "endpoint_url": emulator.url},
                   "destinations": [{"type": "s3", "bucket": "fspd-no-such-bucket",
                                     "prefix": "web01", "endpoint_url": moto}]})
    assert info.value.field == "destinations[0].bucket"
    assert emulator.stats()["requests"].get("GetSnapshotBlock", 0) == 0


async def test_getfroms3_from_a_missing_bucket_names_it(moto: str, tmp_path: Path) -> None:
    out = tmp_path / "restore.img"
    with pytest.raises(BadInput, match="bucket fspd-no-such-bucket does not exist") as info:
        await run({"source": {"type": "s3", "bucket": "fspd-no-such-bucket",
                              "prefix": "web01", "endpoint_url": moto},
                   "destinations": [{"type": "file", "path": str(out)}]})
    assert info.value.field == "source.bucket"
    assert not out.exists()


def test_movetos3_cli_exits_2_naming_the_missing_bucket(
        emulator: EmulatorControl, moto: str, tmp_path: Path) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.01, seed=34)
    job = Job(tmp_path, {
        "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
        "destinations": [{"type": "s3", "bucket": "fspd-no-such-bucket", "prefix": "web01",
                          "endpoint_url": moto}]})
    code, _, err = job.run()
    assert code == ExitCode.BAD_INPUT, err
    assert "bucket fspd-no-such-bucket does not exist" in _one_line_error(err)


# --- credentials revoked mid-job -----------------------------------------------------------

def test_upload_whose_permission_is_revoked_mid_job_exits_3_and_resumes_the_same_snapshot(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", "D" * 60 + "T", seed=35)
    job = Job(tmp_path, {"source": {"type": "file", "path": str(tmp_path / "disk.img")},
                         "destinations": [{"type": "ebs", "endpoint_url": emulator.url}]})
    emulator.faults(latency_ms=60, operations=["PutSnapshotBlock"])
    job.start()
    job.wait_for_checkpoint()
    emulator.config(deny=[{"operations": ["PutSnapshotBlock"]}])
    code, _, err = job.finish()
    assert code == ExitCode.PERMISSION, err
    message = _one_line_error(err)
    assert "AWS refused PutSnapshotBlock" in message and "ebs:PutSnapshotBlock" in message
    pending = emulator.snapshots()
    assert [s["status"] for s in pending] == ["pending"]
    assert pending[0]["id"] in message  # it says which snapshot it left pending
    saved = json.loads(job.checkpoint.read_text())
    assert pending[0]["id"] in json.dumps(saved["sinks"])

    emulator.config(deny=[])
    emulator.clear_faults()
    emulator.reset_stats()
    code, out, err = job.run()
    assert code == 0, err
    result = json.loads(out)
    assert result["resumed"] is True and result["blocks_resumed"] > 0
    snapshots = emulator.snapshots()
    assert [s["id"] for s in snapshots] == [pending[0]["id"]]
    assert snapshots[0]["status"] == "completed"
    assert emulator.stats()["requests"]["PutSnapshotBlock"] < 61
    assert emulator.image(pending[0]["id"], length=len(image)) == image


async def test_revoked_read_permission_mid_download_names_the_iam_action(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    """In-process as well: the error is a PermissionProblem, not a generic failure."""
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.02, seed=36)
    emulator.faults(latency_ms=100, operations=["GetSnapshotBlock"])  # ~40 blocks: ~2 s
    task_started = time.monotonic()
    progress = WatchedProgress()

    async def revoke() -> None:
        """Once the first blocks have arrived (a condition, not a time), mid-download."""
        await progress.wait_done(2)
        await asyncio.to_thread(emulator.config, deny=[{"operations": ["GetSnapshotBlock"]}])

    revoker = asyncio.create_task(revoke())
    with pytest.raises(PermissionProblem, match=r"need permission for ebs:GetSnapshotBlock"):
        await run({"source": {"type": "ebs", "snapshot_id": snap,
                              "endpoint_url": emulator.url},
                   "destinations": [{"type": "file", "path": str(tmp_path / "out.img")}]},
                  settings=fast_settings(fetch_concurrency=2), progress=progress)
    await revoker
    assert progress.blocks_done < (progress.blocks_total or progress.blocks_listed)  # mid-way
    assert time.monotonic() - task_started < 20


# --- secrets never leak --------------------------------------------------------------------

SECRET = "fspdSECRETmarker7f3a9c1e5b"
TOKEN = "fspdTOKENmarker2d8e4b6a0c"
SECRET_ENV = {"AWS_ACCESS_KEY_ID": "AKIAFSPDLEAKTEST0001", "AWS_SECRET_ACCESS_KEY": SECRET,
              "AWS_SESSION_TOKEN": TOKEN}


def _tree_text(root: Path) -> str:
    """Every file under ``root``, as text (bytes decoded leniently)."""
    return "\n".join(p.read_bytes().decode("utf-8", "replace")
                     for p in sorted(root.rglob("*")) if p.is_file())


def test_secrets_never_appear_in_cli_output_or_checkpoints_even_at_debug_level(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    # The emulator checks signatures made with the marker secret, so the requests are real.
    emulator.config(access_keys={SECRET_ENV["AWS_ACCESS_KEY_ID"]: {
        "secret": SECRET, "account": "111122223333"}})
    env = {**os.environ, **SECRET_ENV}
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.005, seed=37)
    seen: list[str] = []
    for name, deny in (("ok", []), ("denied", [{"operations": ["GetSnapshotBlock"]}])):
        emulator.config(deny=deny)
        run_dir = tmp_path / name
        run_dir.mkdir()
        job = Job(run_dir, {
            "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
            "destinations": [{"type": "file", "path": str(run_dir / "out.img")}]})
        done = subprocess.run(
            [sys.executable, "-m", "fspd", "--log-level", "debug", "--log-json", "run",
             str(job.file), "--state-dir", str(job.state), "--config", str(job.config),
             "--json"], capture_output=True, text=True, env=env, timeout=60, check=False)
        assert done.returncode == (0 if not deny else ExitCode.PERMISSION), done.stderr
        seen += [done.stdout, done.stderr, _tree_text(job.state)]
    assert job.checkpoint.exists()  # the failed run's journal was looked at too
    everything = "\n".join(seen)
    assert "ebs:GetSnapshotBlock" in everything  # the failure was captured...
    assert SECRET not in everything and TOKEN not in everything  # ...and no secret with it


def test_an_aws_error_quoting_the_canonical_request_loses_the_session_token() -> None:
    """Real AWS answers a bad signature with the canonical request it expected, which holds
    the X-Amz-Security-Token header (the emulator does not quote it, so this is built here)."""
    from botocore.exceptions import ClientError

    from fspd.retry import ApiError, fatal_error

    message = ("The request signature we calculated does not match the signature you "
               "provided.\n\nThe Canonical String for this request should have been\n'POST\n/"
               f"\n\nhost:ebs.us-east-1.amazonaws.com\nx-amz-security-token:{TOKEN}\n'\n\n"
               f"The String-to-Sign should have been\n'AWS4-HMAC-SHA256\n{TOKEN}'")
    raw = ClientError({"Error": {"Code": "InvalidSignatureException", "Message": message},
                       "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutSnapshotBlock")
    error = fatal_error(ApiError.from_client_error(raw))
    assert isinstance(error, PermissionProblem)
    assert "ebs:PutSnapshotBlock" in str(error) and "signature we calculated" in str(error)
    assert TOKEN not in str(error)
    direct = ApiError("GetObject", "AccessDenied", f"X-Amz-Security-Token={TOKEN}&x=1")
    assert TOKEN not in str(direct) and TOKEN not in direct.message


def test_log_lines_never_carry_this_process_s_secret_values(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    import structlog

    from fspd import log

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_SESSION_TOKEN", TOKEN)
    out = io.StringIO()
    log.configure("debug", json=True, stream=out)
    try:
        log.get_logger("test").warning("job_failed", error=f"bad key {SECRET}",
                                       details={"why": [f"token {TOKEN}"]}, secret_key="x")
    finally:
        structlog.reset_defaults()
    line = json.loads(out.getvalue())
    assert line["error"] == "bad key ***" and line["details"] == {"why": ["token ***"]}
    assert line["secret_key"] == "***"
    assert SECRET not in out.getvalue() and TOKEN not in out.getvalue()
