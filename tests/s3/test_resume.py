"""An archive cut off by kill -9 resumes from its checkpoint: done windows are not sent again,
a multipart upload in progress is continued (or restarted, saying so, when it is gone), a
segment that vanished is uploaded again, and nothing is left duplicated or in progress."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fspd.archive.manifest import ManifestWriter, Segment, Zeros, segment_key
from fspd.blocks import BLOCK_SIZE
from tests.conftest import TEST_AWS_CONFIG
from tests.s3._support import (
    MIB,
    assert_archive_is_exactly,
    assert_volume_file,
    make_image,
    run,
    s3_client,
)
from tests.waiting import wait_until

NAME = "resume-me"
DEST = "destinations[0]"

CONFIG = f"""
[transfer]
fetch_concurrency = 8
worker_threads = 2
checkpoint_interval_s = 0.05
[retry]
backoff_base_s = 0.01
backoff_cap_s = 0.2
[s3]
multipart_threshold = {6 * MIB}
part_size = {5 * MIB}
""" + TEST_AWS_CONFIG


class Job:
    """One movetos3 job run by ``fspd run --state-dir`` in a child process."""

    def __init__(self, tmp_path: Path, moto: str, bucket: str, prefix: str,
                 **dest: Any) -> None:
        self.path, self.state, self.config = (tmp_path / "job.json", tmp_path / "state",
                                              tmp_path / "fspd.toml")
        self.path.write_text(json.dumps({
            "name": NAME, "source": {"type": "file", "path": str(tmp_path / "src.img")},
            "destinations": [{"type": "s3", "bucket": bucket, "prefix": prefix,
                              "endpoint_url": moto, "zstd_level": 1, **dest}]}))
        self.config.write_text(CONFIG)
        self.checkpoint = self.state / NAME / "checkpoint.json"

    def start(self) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, "-m", "fspd", "--log-level", "warning", "run", str(self.path),
             "--state-dir", str(self.state), "--config", str(self.config), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def sink_state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.checkpoint.read_text())["sinks"][DEST])
        except (FileNotFoundError, KeyError):
            return None

    def kill_when(self, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """Start the job and kill -9 it as soon as its checkpoint satisfies ``ready``;
        return that checkpoint (the one the next run resumes from, or an earlier one)."""
        proc = self.start()

        def reached() -> dict[str, Any] | None:
            state = self.sink_state()
            return state if state is not None and ready(state) else None

        # Polled often: some jobs here are fast, and must be caught before they end.
        state = wait_until(reached, proc, "the checkpoint to kill at", timeout=30, poll_s=0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.communicate()
        return state

    def finish(self) -> dict[str, Any]:
        proc = self.start()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        return dict(json.loads(out))


async def assert_restores(moto: str, bucket: str, prefix: str, image: bytes,
                          tmp_path: Path) -> None:
    out = tmp_path / "restored.img"
    out.unlink(missing_ok=True)
    await run({"source": {"type": "s3", "bucket": bucket, "prefix": prefix,
                          "endpoint_url": moto},
               "destinations": [{"type": "file", "path": str(out)}]})
    assert_volume_file(out, image)


def _parts_sent(state: dict[str, Any]) -> int:
    return max((len(u["parts"]) for u in state["uploads"].values()), default=0)


async def test_a_multipart_upload_cut_off_by_kill_is_continued_with_the_parts_already_sent(
        moto: str, bucket: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "D" * 128, seed=11)  # one 64 MiB segment
    job = Job(tmp_path, moto, bucket, "mp", segment_blocks=128)
    killed = job.kill_when(lambda s: _parts_sent(s) >= 2)
    [(key, upload)] = killed["uploads"].items()
    assert key == segment_key(0, 128)
    result = job.finish()
    record = result["destinations"][0]
    assert result["resumed"] is True
    assert record["parts_resumed"] >= len(upload["parts"]) >= 2
    assert "notes" not in result
    assert assert_archive_is_exactly(moto, bucket, "mp") == [key]
    await assert_restores(moto, bucket, "mp", image, tmp_path)


async def test_a_multipart_upload_aborted_while_down_is_started_again_and_noted(
        moto: str, bucket: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "D" * 128, seed=12)
    job = Job(tmp_path, moto, bucket, "gone", segment_blocks=128)
    job.kill_when(lambda s: _parts_sent(s) >= 1)
    s3 = s3_client(moto)
    uploads = s3.list_multipart_uploads(Bucket=bucket)["Uploads"]
    assert len(uploads) == 1
    s3.abort_multipart_upload(Bucket=bucket, Key=uploads[0]["Key"],
                              UploadId=uploads[0]["UploadId"])  # a lifecycle rule, say
    result = job.finish()
    assert result["destinations"][0]["parts_resumed"] == 0
    assert any("no longer exists" in note for note in result["notes"])
    assert_archive_is_exactly(moto, bucket, "gone")
    await assert_restores(moto, bucket, "gone", image, tmp_path)


async def test_a_segment_deleted_while_down_is_uploaded_again_and_noted(
        moto: str, bucket: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "D" * 160, seed=13)  # 40 windows of 4 blocks
    job = Job(tmp_path, moto, bucket, "vanish", segment_blocks=4)
    job.kill_when(lambda s: s["next_window"] >= 3)  # windows 0-2 are in the manifest file
    s3 = s3_client(moto)
    s3.delete_object(Bucket=bucket, Key=f"vanish/{segment_key(4, 4)}")  # window 1
    # An upload begun after the last checkpoint (so unknown to it) must not be left behind.
    s3.create_multipart_upload(Bucket=bucket, Key=f"vanish/{segment_key(156, 4)}")
    result = job.finish()
    assert any(segment_key(4, 4) in note and "is gone" in note for note in result["notes"])
    assert result["blocks_resumed"] == 4  # window 0 only: everything after the gap is redone
    assert result["destinations"][0]["stale_uploads_aborted"] == 1
    assert len(assert_archive_is_exactly(moto, bucket, "vanish")) == 40
    await assert_restores(moto, bucket, "vanish", image, tmp_path)


async def test_an_archive_finished_before_its_checkpoint_was_cleared_is_not_written_again(
        moto: str, bucket: str, tmp_path: Path) -> None:
    """A crash between the manifest's upload and the checkpoint's removal: the rerun sees
    its own manifest (same header) and reports the archive complete."""
    image = make_image(tmp_path / "src.img", "DZ" * 40, seed=14)
    job = Job(tmp_path, moto, bucket, "done", segment_blocks=4)
    job.kill_when(lambda s: s["next_window"] >= 1)
    saved = tmp_path / "checkpoint.saved"
    shutil.copy(job.checkpoint, saved)
    job.finish()
    s3 = s3_client(moto)
    before = s3.get_object(Bucket=bucket, Key="done/manifest.jsonl")["Body"].read()
    shutil.copy(saved, job.checkpoint)
    s3.create_multipart_upload(Bucket=bucket, Key="done/manifest.jsonl")  # a stale one
    result = job.finish()
    record = result["destinations"][0]
    assert record["note"] == "completed by an earlier run of this job"
    assert record["stale_uploads_aborted"] == 1
    assert result["resumed"] is True and result["bytes_done"] == 0  # nothing read again
    assert s3.get_object(Bucket=bucket, Key="done/manifest.jsonl")["Body"].read() == before
    assert_archive_is_exactly(moto, bucket, "done")
    await assert_restores(moto, bucket, "done", image, tmp_path)


def _segment(first: int, count: int) -> Segment:
    return Segment(segment_key(first, count), first, count, 100 + first, "0" * 64,
                   ("1" * 64,) * count)


def _write_all(writer: ManifestWriter, records: list[Segment | Zeros]) -> None:
    for rec in records:
        if isinstance(rec, Zeros):
            writer.zeros(rec.start, rec.stop)
        else:
            writer.segment(rec)


@pytest.mark.parametrize("split", range(7))
def test_a_manifest_resumed_from_any_checkpoint_equals_one_written_in_one_go(
        tmp_path: Path, split: int) -> None:
    from fspd.archive.manifest import Header

    header = Header(source={"type": "file", "path": "/x"}, volume_size=64 * BLOCK_SIZE,
                    byte_length=None, segment_blocks=8, zstd_level=1, created="t")
    records: list[Segment | Zeros] = [_segment(0, 2), Zeros(2, 4), Zeros(4, 8),
                                      _segment(8, 3), Zeros(12, 13), Zeros(13, 20),
                                      _segment(20, 1)]
    whole = ManifestWriter(tmp_path / "whole.jsonl", header)
    _write_all(whole, records)
    whole.finish()
    cut = ManifestWriter(tmp_path / "cut.jsonl", header)
    _write_all(cut, records[:split])
    length, pending = cut.durable_point()
    _write_all(cut, records[split:split + 1])  # written after the checkpoint: dropped
    cut.close()
    resumed = ManifestWriter.resume(tmp_path / "cut.jsonl", length, pending)
    _write_all(resumed, records[split:])
    resumed.finish()
    assert (tmp_path / "cut.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


def test_a_manifest_cut_back_to_a_block_keeps_only_what_comes_before_it(
        tmp_path: Path) -> None:
    from fspd.archive.manifest import Header, ManifestFile

    header = Header(source={"type": "file", "path": "/x"}, volume_size=64 * BLOCK_SIZE,
                    byte_length=None, segment_blocks=8, zstd_level=1, created="t")
    writer = ManifestWriter(tmp_path / "m.jsonl", header)
    _write_all(writer, [_segment(0, 2), Zeros(2, 12), _segment(16, 2), _segment(24, 1)])
    length, _ = writer.durable_point()
    writer.close()
    # Window 1 (blocks 8-15) must be redone: the zero range is cut at 8, to merge again.
    resumed = ManifestWriter.resume(tmp_path / "m.jsonl", length, cut=8)
    assert resumed.next_block == 8
    _write_all(resumed, [Zeros(8, 12), _segment(16, 2)])
    resumed.finish()
    manifest = ManifestFile(tmp_path / "m.jsonl", "m")
    trailer = manifest.validate()
    assert [type(r).__name__ for r in manifest.records()] == ["Segment", "Zeros", "Segment"]
    assert (trailer.segments, trailer.zero_blocks) == (2, 10)
