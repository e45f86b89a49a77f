"""A journal that is damaged, belongs to an earlier version of the job file, or cannot be
written never breaks a job: a damaged part is dropped (saying so) and its blocks are sent again,
into the same pending snapshot where it still takes blocks; an edited job file gets a new
snapshot and names the one it abandons; a state directory that cannot be written stops the job
before its first request. Every run is ``fspd run job.json --state-dir DIR`` in a child."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import assert_clean, fspd_argv
from tests.conftest import TEST_AWS_CONFIG
from tests.engine._support import assert_matches_snapshot, make_image
from tests.waiting import wait_until

NAME = "journal"
DEST = "destinations[0]"
CONFIG = """
[transfer]
fetch_concurrency = 2
put_concurrency = 2
checkpoint_interval_s = 0.1
[retry]
backoff_base_s = 0.01
backoff_cap_s = 0.2
""" + TEST_AWS_CONFIG


def _bits(text: str) -> int:
    return sum(bin(b).count("1") for b in zlib.decompress(base64.b64decode(text)))


class Job:
    def __init__(self, env: dict[str, str], root: Path, spec: dict[str, Any]) -> None:
        self.env, self.root = env, root
        self.path, self.state, self.config = root / "job.json", root / "state", root / "c.toml"
        self.write(spec)
        self.config.write_text(CONFIG)
        self.dir = self.state / NAME
        self.checkpoint = self.dir / "checkpoint.json"

    def write(self, spec: dict[str, Any]) -> None:
        self.path.write_text(json.dumps({"name": NAME, **spec}))

    def argv(self) -> list[str]:
        return fspd_argv(["fspd", "--log-level", "warning", "run", str(self.path),
                          "--state-dir", str(self.state), "--config", str(self.config),
                          "--json"])

    def start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(self.argv(), env=self.env, cwd=self.root, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                stdin=subprocess.DEVNULL)

    def journal(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.checkpoint.read_text()))
        except (FileNotFoundError, ValueError):
            return None

    def kill_after(self, blocks: int, key: str) -> dict[str, Any]:
        """kill -9 once the journal on disk claims ``blocks`` blocks in ``key``."""
        proc = self.start()

        def claimed() -> dict[str, Any] | None:
            data = self.journal()
            return data if data and _bits(data["sinks"][DEST][key]) >= blocks else None

        data = wait_until(claimed, proc, f"the journal to claim {blocks} blocks")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.communicate()
        return data

    def rerun(self) -> tuple[dict[str, Any], str]:
        proc = self.start()
        out, err = proc.communicate(timeout=180)
        assert_clean(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
        assert proc.returncode == 0, err
        return dict(json.loads(out)), err


def _rewrite(job: Job, change: Callable[[dict[str, Any]], Any]) -> None:
    data = job.journal()
    assert data is not None
    replaced = change(data)
    job.checkpoint.write_text(json.dumps(data if replaced is None else replaced))


def _garbage_bitmap(key: str) -> Callable[[Job], None]:
    def damage(job: Job) -> None:
        def change(data: dict[str, Any]) -> None:
            data["sinks"][DEST][key] = base64.b64encode(b"not zlib at all").decode()
        _rewrite(job, change)
    return damage


def _bitmap_of_type(key: str, value: Any) -> Callable[[Job], None]:
    def damage(job: Job) -> None:
        def change(data: dict[str, Any]) -> None:
            data["sinks"][DEST][key] = value
        _rewrite(job, change)
    return damage


def _sinks_as_list(job: Job) -> None:
    def change(data: dict[str, Any]) -> None:
        data["sinks"] = list(data["sinks"].values())
    _rewrite(job, change)


def _journal_a_list(job: Job) -> None:
    _rewrite(job, lambda data: [data])


def _digests(job: Job) -> Path:
    [path] = job.dir.glob("*.digests")
    return path


def _truncate_digests(job: Job) -> None:
    path = _digests(job)
    os.truncate(path, path.stat().st_size // 2)


def _remove_digests(job: Job) -> None:
    _digests(job).unlink()


UPLOAD_DAMAGE = {
    "garbage written bitmap": _garbage_bitmap("written"),
    "garbage handled bitmap": _garbage_bitmap("handled"),
    "bitmap is a number": _bitmap_of_type("written", 12345),
    "bitmap is null": _bitmap_of_type("handled", None),
    "snapshot id is a list": _bitmap_of_type("snapshot_id", ["snap-0"]),
    "sinks is a list": _sinks_as_list,
    "journal is a list": _journal_a_list,
    "digests truncated": _truncate_digests,
    "digests missing": _remove_digests,
}


@pytest.mark.parametrize("damage", UPLOAD_DAMAGE.values(), ids=UPLOAD_DAMAGE.keys())
def test_an_upload_whose_journal_was_damaged_completes_the_same_snapshot_exactly(
        emulator: EmulatorControl, env: dict[str, str], tmp_path: Path,
        damage: Callable[[Job], None]) -> None:
    image = make_image(tmp_path / "disk.img", "D" * 60 + "ZHD" + "T", seed=21)
    job = Job(env, tmp_path, {"source": {"type": "file", "path": str(tmp_path / "disk.img")},
                              "destinations": [{"type": "ebs"}]})
    emulator.faults(latency_ms=60, operations=["PutSnapshotBlock"])
    job.kill_after(6, "written")
    emulator.clear_faults()
    [pending] = emulator.snapshots()
    assert pending["status"] == "pending"
    damage(job)
    result, _err = job.rerun()
    assert any("damaged" in note for note in result.get("notes", [])), result
    [snapshot] = emulator.snapshots()  # the same one: nothing orphaned, nothing duplicated
    assert snapshot["id"] == pending["id"] and snapshot["status"] == "completed"
    assert emulator.image(snapshot["id"], length=len(image)) == image


DOWNLOAD_DAMAGE = {
    "garbage bitmap": _garbage_bitmap("bitmap"),
    "bitmap is a number": _bitmap_of_type("bitmap", 7),
    "target identity is a string": _bitmap_of_type("target", "x"),
    "sinks is a list": _sinks_as_list,
    "journal is a list": _journal_a_list,
}


@pytest.mark.parametrize("damage", DOWNLOAD_DAMAGE.values(), ids=DOWNLOAD_DAMAGE.keys())
def test_a_download_whose_journal_was_damaged_writes_the_image_again_exactly(
        emulator: EmulatorControl, env: dict[str, str], tmp_path: Path,
        damage: Callable[[Job], None]) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.06, seed=22)
    out = tmp_path / "out.img"
    job = Job(env, tmp_path, {"source": {"type": "ebs", "snapshot_id": snap},
                              "destinations": [{"type": "file", "path": str(out)}]})
    emulator.faults(latency_ms=40, operations=["GetSnapshotBlock"])
    job.kill_after(5, "bitmap")
    emulator.clear_faults()
    with open(out, "r+b") as f:  # what the interrupted run wrote must not be trusted
        f.write(b"stale" * 1000)
    damage(job)
    result, _err = job.rerun()
    assert result["blocks_resumed"] == 0
    assert result.get("notes"), result
    assert_matches_snapshot(out, emulator, snap)


# --- an edited job file ------------------------------------------------------------------


@pytest.mark.parametrize("edit", [{"description": "version 2"}, {"tags": {"team": "b"}}],
                         ids=["description changed", "tag added"])
def test_an_upload_whose_job_file_was_edited_after_a_crash_completes_a_new_snapshot(
        emulator: EmulatorControl, env: dict[str, str], tmp_path: Path,
        edit: dict[str, Any]) -> None:
    image = make_image(tmp_path / "disk.img", "D" * 50 + "T", seed=23)
    spec: dict[str, Any] = {"source": {"type": "file", "path": str(tmp_path / "disk.img")},
                            "destinations": [{"type": "ebs", "description": "version 1"}]}
    job = Job(env, tmp_path, spec)
    emulator.faults(latency_ms=60, operations=["PutSnapshotBlock"])
    job.kill_after(4, "written")
    emulator.clear_faults()
    [old] = emulator.snapshots()
    spec["destinations"][0].update(edit)
    job.write(spec)
    result, err = job.rerun()
    new = result["destinations"][0]["snapshot_id"]
    assert new != old["id"]
    notes = " ".join(result["notes"])
    assert f"abandoned pending snapshot {old['id']}" in notes
    assert old["id"] in err  # said on stderr too, not only in --json
    statuses = {s["id"]: s["status"] for s in emulator.snapshots()}
    assert statuses == {old["id"]: "pending", new: "completed"}
    assert emulator.image(new, length=len(image)) == image
    assert not list(job.dir.glob(f"{old['id']}.digests"))


# --- a state directory that cannot be written --------------------------------------------


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory every user can read (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="fspd-journal-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(argv: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return argv
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv]


@pytest.mark.parametrize("verb", ["upload", "download"])
def test_a_state_dir_that_cannot_be_written_stops_the_job_before_any_request(
        emulator: EmulatorControl, env: dict[str, str], shared_dir: Path, verb: str) -> None:
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot run fspd as a user whom "
                    "directory permissions stop")
    make_image(shared_dir / "disk.img", "D" * 4, seed=24)
    (shared_dir / "disk.img").chmod(0o644)
    if verb == "upload":
        spec: dict[str, Any] = {"source": {"type": "file", "path": str(shared_dir / "disk.img")},
                                "destinations": [{"type": "ebs"}]}
    else:
        snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                                  density=0.01, seed=24)
        out_dir = shared_dir / "out"
        out_dir.mkdir(mode=0o777)
        out_dir.chmod(0o777)
        spec = {"source": {"type": "ebs", "snapshot_id": snap},
                "destinations": [{"type": "file", "path": str(out_dir / "out.img")}]}
    job = Job(env, shared_dir, spec)
    job.state.mkdir(mode=0o555)
    for path in (job.path, job.config):
        path.chmod(0o644)
    emulator.reset_stats()
    user_env = {**env, "AWS_CONFIG_FILE": "/dev/null", "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
                "HOME": str(shared_dir)}
    result = subprocess.run(_as_nobody(job.argv()), env=user_env, cwd=shared_dir, text=True,
                            capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert_clean(result)
    assert result.returncode == 2, result.stderr
    assert "state_dir" in result.stderr and str(job.dir) in result.stderr
    assert "not writable" in result.stderr
    assert not emulator.stats()["requests"]  # not one request: nothing started, or pending
    assert [s for s in emulator.snapshots() if s["status"] == "pending"] == []


def _s3_entry(key: str, value: Any) -> Callable[[Job], None]:
    def damage(job: Job) -> None:
        def change(data: dict[str, Any]) -> None:
            data["sinks"][DEST][key] = value
        _rewrite(job, change)
    return damage


ARCHIVE_DAMAGE = {
    "windows is a list": _s3_entry("windows", []),
    "header is a string": _s3_entry("header", "x"),
    "manifest_bytes is a string": _s3_entry("manifest_bytes", "12"),
    "sinks is a list": _sinks_as_list,
}


@pytest.mark.parametrize("damage", ARCHIVE_DAMAGE.values(), ids=ARCHIVE_DAMAGE.keys())
async def test_an_archive_whose_journal_was_damaged_is_written_whole_and_exact(
        emulator: EmulatorControl, env: dict[str, str], moto: str, tmp_path: Path,
        damage: Callable[[Job], None]) -> None:
    from tests.s3._support import assert_archive_is_exactly, s3_client
    from tests.s3._support import run as run_in_process
    s3_client(moto).create_bucket(Bucket="damaged")
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.05, seed=25)
    job = Job(env, tmp_path, {
        "source": {"type": "ebs", "snapshot_id": snap},
        "destinations": [{"type": "s3", "bucket": "damaged", "prefix": "a",
                          "endpoint_url": moto, "segment_blocks": 4, "zstd_level": 1}]})
    emulator.faults(latency_ms=40, operations=["GetSnapshotBlock"])
    proc = job.start()
    wait_until(lambda: (data := job.journal()) and data["sinks"][DEST].get("next_window", 0) >= 2,
               proc, "two windows journalled")
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    proc.communicate()
    emulator.clear_faults()
    damage(job)
    result, _err = job.rerun()
    assert any("damaged" in note for note in result.get("notes", [])), result
    assert_archive_is_exactly(moto, "damaged", "a")
    out = tmp_path / "restored.img"
    await run_in_process({"source": {"type": "s3", "bucket": "damaged", "prefix": "a",
                                     "endpoint_url": moto},
                          "destinations": [{"type": "file", "path": str(out)}]})
    assert_matches_snapshot(out, emulator, snap)
