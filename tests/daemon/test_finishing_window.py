"""The daemon's finishing window: results land in done/ whole (never a temporary file there,
even for an instant a crash could freeze), and a movetos3 job whose daemon died after the
manifest was written, before the job file reached done/, is finished as completed on restart,
not failed with "an archive already exists"."""

from __future__ import annotations

import ctypes
import json
import os
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fspd.daemon.scheduler import engine_job_id
from tests.daemon.conftest import Daemon, wait_for
from tests.s3._support import BUCKET, assert_archive_is_exactly, make_image, s3_client

_IN_CREATE, _IN_MOVED_TO = 0x100, 0x80


class DirWatch:
    """Every name created in, or moved into, a directory (inotify): what a crash at any
    instant could leave there."""

    def __init__(self, path: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            pytest.skip("inotify is not available")
        if self._libc.inotify_add_watch(self.fd, os.fsencode(path),
                                        _IN_CREATE | _IN_MOVED_TO) < 0:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")

    def names(self) -> list[str]:
        out: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            offset = 0
            while offset < len(data):
                _wd, _mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                raw = data[offset + 16:offset + 16 + length]
                out.append(raw.rstrip(b"\0").decode())
                offset += 16 + length

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def watch_done() -> Iterator[Callable[[Path], DirWatch]]:
    made: list[DirWatch] = []

    def make(path: Path) -> DirWatch:
        made.append(DirWatch(path))
        return made[-1]

    yield make
    for w in made:
        w.close()


def _archive_job(tmp_path: Path, moto: str) -> str:
    return json.dumps({
        "source": {"type": "file", "path": str(tmp_path / "src.img")},
        "destinations": [{"type": "s3", "bucket": BUCKET, "prefix": "arch",
                          "endpoint_url": moto, "segment_blocks": 4, "zstd_level": 1}]})


def test_results_are_never_written_in_place_in_done(
        daemon: Daemon, moto: str, tmp_path: Path,
        watch_done: Callable[[Path], DirWatch]) -> None:
    s3_client(moto).create_bucket(Bucket=BUCKET)
    make_image(tmp_path / "src.img", "DZD", seed=41)
    done = watch_done(daemon.spool.box("done"))
    job = daemon.submit(_archive_job(tmp_path, moto), "job.json")
    assert daemon.wait_finished(job, 60) == "done", daemon.log()
    assert sorted(set(done.names())) == sorted([job, f"{job}.result.json"])
    assert sorted(os.listdir(daemon.spool.box("done"))) == sorted([job, f"{job}.result.json"])
    assert os.listdir(daemon.spool.box("tmp")) == []


def test_a_movetos3_job_cut_off_after_its_manifest_finishes_completed_on_restart(
        daemon: Daemon, moto: str, tmp_path: Path) -> None:
    s3_client(moto).create_bucket(Bucket=BUCKET)
    make_image(tmp_path / "src.img", "DZHD" * 4 + "T", seed=42)
    job = daemon.submit(_archive_job(tmp_path, moto), "job.json")
    assert daemon.wait_finished(job, 60) == "done", daemon.log()
    manifest = s3_client(moto).get_object(Bucket=BUCKET, Key="arch/manifest.jsonl")["Body"]
    before = manifest.read()
    daemon.stop()
    # What kill -9 just after the manifest's upload leaves: the archive complete, the job's
    # journal cleared, its file still in active/ with no result, and (from older versions) a
    # half-written result's temporary file in done/.
    spool = daemon.spool
    os.rename(spool.box("done") / job, spool.box("active") / job)
    os.unlink(spool.box("done") / f"{job}.result.json")
    assert not (daemon.root / "state" / "jobs" / engine_job_id(job) / "checkpoint.json").exists()
    stale = spool.box("done") / f".{job}.result.json.0badc0de.tmp"
    stale.touch()
    old = time.time() - 2 * 86400
    os.utime(stale, (old, old))
    daemon.start()
    assert daemon.wait_finished(job, 60) == "done", daemon.log()
    result = daemon.sidecar("done", job)
    assert result["state"] == "completed"
    assert result["destinations"][0]["note"] == "completed by an earlier run of this job"
    assert s3_client(moto).get_object(Bucket=BUCKET, Key="arch/manifest.jsonl")["Body"] \
        .read() == before
    assert_archive_is_exactly(moto, BUCKET, "arch")
    wait_for(lambda: not stale.exists(), 20, "the stale temporary result to be removed")
    assert sorted(os.listdir(spool.box("done"))) == sorted([job, f"{job}.result.json"])
