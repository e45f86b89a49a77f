"""Success means the bytes are at the target: a target deleted or renamed away mid-run fails
the job, a resume never trusts a target that was replaced or overwritten while fspd was down,
and two jobs never write one target at once. Everything runs ``fspd`` as a user types it."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import assert_clean, fspd_argv
from tests.engine._support import assert_matches_snapshot
from tests.waiting import wait_until

SLOW = """
[transfer]
fetch_concurrency = 2
checkpoint_interval_s = 0.1
[retry]
backoff_base_s = 0.01
backoff_cap_s = 0.2
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "fspd.toml"
    path.write_text(SLOW)
    return path


def start(env: dict[str, str], cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(fspd_argv(["fspd", "--log-level", "warning", *args]), env=env,
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)


def finish(proc: subprocess.Popen[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    out, err = proc.communicate(timeout=timeout)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_clean(result)
    return result


def has_data(path: Path) -> bool:
    try:
        return path.stat().st_blocks > 0
    except FileNotFoundError:
        return False


def slow_snapshot(emulator: EmulatorControl, seed: int = 1) -> str:
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.1, seed=seed)
    emulator.faults(latency_ms=40, operations=["GetSnapshotBlock"])
    return snap


@pytest.mark.parametrize("how", ["deleted", "renamed away"])
def test_a_target_removed_mid_run_fails_the_job_instead_of_reporting_success(
        emulator: EmulatorControl, env: dict[str, str], config: Path, tmp_path: Path,
        how: str) -> None:
    snap = slow_snapshot(emulator)
    out = tmp_path / "out.img"
    proc = start(env, tmp_path, "download", snap, str(out), "--config", str(config))
    wait_until(lambda: has_data(out), proc, "the first blocks written")
    if how == "deleted":
        out.unlink()
    else:
        out.rename(tmp_path / "elsewhere.img")
    result = finish(proc)
    assert result.returncode == 4, result.stderr
    assert str(out) in result.stderr and "while the job wrote it" in result.stderr
    assert not out.exists()


def test_a_target_replaced_by_another_file_mid_run_fails_the_job(
        emulator: EmulatorControl, env: dict[str, str], config: Path, tmp_path: Path) -> None:
    snap = slow_snapshot(emulator, seed=2)
    out = tmp_path / "out.img"
    proc = start(env, tmp_path, "download", snap, str(out), "--config", str(config))
    wait_until(lambda: has_data(out), proc, "the first blocks written")
    other = tmp_path / "other.img"
    other.write_bytes(b"not the image")
    other.replace(out)
    result = finish(proc)
    assert result.returncode == 4, result.stderr
    assert "now names another file" in result.stderr
    assert out.read_bytes() == b"not the image"


# --- resume ------------------------------------------------------------------------------


class RunJob:
    """A download job run by ``fspd run job.json --state-dir DIR``."""

    def __init__(self, env: dict[str, str], tmp_path: Path, config: Path, spec: dict[str, Any]
                 ) -> None:
        self.env, self.cwd, self.config = env, tmp_path, config
        self.job = tmp_path / "job.json"
        self.job.write_text(json.dumps({"name": "integrity", **spec}))
        self.state = tmp_path / "state"
        self.checkpoint = self.state / "integrity" / "checkpoint.json"

    def start(self) -> subprocess.Popen[str]:
        return start(self.env, self.cwd, "run", str(self.job), "--state-dir", str(self.state),
                     "--config", str(self.config), "--json")

    def written_blocks(self) -> int:
        """Blocks the checkpoint on disk claims written (0 before there is one)."""
        import base64
        import zlib
        try:
            sink = json.loads(self.checkpoint.read_text())["sinks"]["destinations[0]"]
        except (FileNotFoundError, ValueError, KeyError):
            return 0
        raw = zlib.decompress(base64.b64decode(sink["bitmap"]))
        return sum(bin(b).count("1") for b in raw)

    def kill_after_checkpoint(self, blocks: int = 5) -> None:
        proc = self.start()
        wait_until(lambda: self.written_blocks() >= blocks, proc,
                   f"a checkpoint claiming {blocks} blocks")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.communicate()

    def rerun(self) -> dict[str, Any]:
        result = finish(self.start())
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))


def _replace_with_same_size(out: Path) -> None:
    size = out.stat().st_size
    other = out.with_name("impostor.img")
    with open(other, "wb") as f:
        f.truncate(size)
        for offset in range(0, size, 64 << 20):
            f.seek(offset)
            f.write(b"\xa5" * (1 << 20))
    other.replace(out)


def _overwrite_in_place(out: Path) -> None:
    size = out.stat().st_size
    ino = out.stat().st_ino
    with open(out, "r+b") as f:
        for offset in range(0, size, 1 << 20):
            f.seek(offset)
            f.write(b"\x5a" * (1 << 20))
    assert out.stat().st_ino == ino


@pytest.mark.parametrize("damage", [_replace_with_same_size, _overwrite_in_place],
                         ids=["replaced by a same-size file", "overwritten in place"])
def test_a_resume_never_trusts_a_target_changed_while_fspd_was_down(
        emulator: EmulatorControl, env: dict[str, str], config: Path, tmp_path: Path,
        damage: Callable[[Path], None]) -> None:
    snap = slow_snapshot(emulator, seed=3)
    out = tmp_path / "out.img"
    job = RunJob(env, tmp_path, config, {
        "source": {"type": "ebs", "snapshot_id": snap},
        "destinations": [{"type": "file", "path": str(out)}]})
    job.kill_after_checkpoint()
    emulator.clear_faults()
    damage(out)
    result = job.rerun()
    assert result["blocks_resumed"] == 0
    assert any("cannot resume" in note and str(out) in note for note in result["notes"])
    assert_matches_snapshot(out, emulator, snap)


def test_a_resume_onto_the_untouched_target_still_skips_what_was_written(
        emulator: EmulatorControl, env: dict[str, str], config: Path, tmp_path: Path) -> None:
    snap = slow_snapshot(emulator, seed=4)
    out = tmp_path / "out.img"
    job = RunJob(env, tmp_path, config, {
        "source": {"type": "ebs", "snapshot_id": snap},
        "destinations": [{"type": "file", "path": str(out)}]})
    job.kill_after_checkpoint()
    emulator.clear_faults()
    result = job.rerun()
    assert result["resumed"] is True and result["blocks_resumed"] >= 5
    assert not result.get("notes")
    assert_matches_snapshot(out, emulator, snap)


# --- one writer per target -----------------------------------------------------------------


def test_a_second_job_writing_the_same_target_fails_at_once_naming_the_first(
        emulator: EmulatorControl, env: dict[str, str], config: Path, tmp_path: Path) -> None:
    snap = slow_snapshot(emulator, seed=5)
    other = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                               density=0.05, seed=6)
    out = tmp_path / "out.img"
    first = start(env, tmp_path, "download", snap, str(out), "--config", str(config))
    wait_until(lambda: has_data(out), first, "the first job's first blocks")
    began = time.monotonic()
    second = finish(start(env, tmp_path, "download", other, str(out), "--config",
                          str(config)))
    assert time.monotonic() - began < 15  # at once, not after the first job
    assert first.poll() is None, "the first job ended before the second was refused"
    assert second.returncode == 2, second.stderr
    assert "being written by another fspd job" in second.stderr
    assert f"pid {first.pid}" in second.stderr and "destinations[0].path" in second.stderr
    emulator.clear_faults()
    done = finish(first)
    assert done.returncode == 0, done.stderr
    assert_matches_snapshot(out, emulator, snap)
