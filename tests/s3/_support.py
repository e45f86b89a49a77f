"""Helpers for the S3 archive tests: images of awkward shapes, jobs run through run_job, and a
plain boto3 client for looking at (and damaging) what landed in moto's S3."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import boto3

from fspd import jobs
from fspd.blocks import BLOCK_SIZE
from fspd.config import AwsSettings, RetrySettings, S3Settings, Settings, TransferSettings
from fspd.run import run_job
from tests.conftest import TEST_ALLOW_ENDPOINTS
from tests.images import assert_volume_file as assert_volume_file
from tests.images import make_image as make_image  # re-exported for the suite
from tests.images import put_snapshot as put_snapshot

B = BLOCK_SIZE
GIB = 1 << 30
MIB = 1 << 20
BUCKET = "fspd-archives"


def settings(**s3: Any) -> Settings:
    """Small pools and quick backoff: tests of failures must fail fast."""
    return Settings(
        transfer=TransferSettings(fetch_concurrency=16, put_concurrency=16, queue_blocks=32,
                                  worker_threads=2),
        retry=RetrySettings(backoff_base_s=0.005, backoff_cap_s=0.05, max_attempts=3,
                            not_found_window_s=5, completion_wait_s=30),
        s3=S3Settings(**s3), aws=AwsSettings(allow_endpoints=TEST_ALLOW_ENDPOINTS))


async def run(spec: dict[str, Any], conf: Settings | None = None) -> dict[str, Any]:
    return await run_job(jobs.validate(spec), conf or settings())


def s3_client(moto: str) -> Any:
    return boto3.client("s3", endpoint_url=moto, region_name="us-east-1")


async def listed(ebs: Any, snapshot_id: str) -> list[int]:
    """Indexes a snapshot lists (its own blocks and its parents')."""
    out: list[int] = []
    params: dict[str, Any] = {"SnapshotId": snapshot_id, "MaxResults": 10000}
    while True:
        page = await ebs.list_snapshot_blocks(**params)
        out += [b["BlockIndex"] for b in page.get("Blocks", [])]
        if not page.get("NextToken"):
            return out
        params["NextToken"] = page["NextToken"]


def _data_blocks(path: Path) -> set[int]:
    """Blocks of a file that hold allocated extents (holes read zeros without being stored)."""
    out: set[int] = set()
    with open(path, "rb") as f:
        fd, size, offset = f.fileno(), os.fstat(f.fileno()).st_size, 0
        while offset < size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
            out.update(range(start // B, -(-end // B)))
            offset = end
    return out


def _block(emulator: Any, snapshot_id: str, index: int) -> bytes:
    return bytes(emulator.image(snapshot_id, offset=index * B, length=B))


async def assert_same_volume(emulator: Any, ebs: Any, got: str, want: str) -> None:
    """Two unencrypted snapshots read the same everywhere: block by block over every block
    either lists (all others read zeros in both)."""
    for index in sorted({*await listed(ebs, got), *await listed(ebs, want)}):
        assert _block(emulator, got, index) == _block(emulator, want, index), \
            f"block {index} differs"


async def assert_file_is_volume(path: Path, emulator: Any, ebs: Any, snapshot_id: str,
                                volume_size: int) -> None:
    """A restored file reads like the snapshot: every listed block equal, every other block of
    the file a hole or zeros."""
    _compare_file(path, emulator, snapshot_id, await listed(ebs, snapshot_id), volume_size)


def _compare_file(path: Path, emulator: Any, snapshot_id: str, blocks: list[int],
                  volume_size: int) -> None:
    assert path.stat().st_size == volume_size
    with open(path, "rb") as f:
        for index in blocks:
            assert os.pread(f.fileno(), B, index * B) == _block(emulator, snapshot_id, index), \
                f"block {index} differs"
        for index in _data_blocks(path) - set(blocks):
            assert os.pread(f.fileno(), B, index * B) == bytes(B), f"block {index} not zero"


def written(emulator: Any, snapshot_id: str) -> int:
    """How many blocks were written to a snapshot (the emulator's own record)."""
    return int(next(s for s in emulator.snapshots() if s["id"] == snapshot_id)["written_count"])



def assert_archive_is_exactly(moto: str, bucket: str, prefix: str) -> list[str]:
    """The prefix holds the manifest and exactly the segments it names (no duplicate, no
    leftover), and no multipart upload is in progress; returns the segment keys."""
    s3 = s3_client(moto)
    body = s3.get_object(Bucket=bucket, Key=f"{prefix}/manifest.jsonl")["Body"].read()
    named = [json.loads(line)["segment"] for line in body.splitlines()
             if line.startswith(b'{"segment"')]
    listed = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/")
              .get("Contents", [])]
    assert sorted(listed) == sorted([f"{prefix}/manifest.jsonl",
                                     *(f"{prefix}/{k}" for k in named)])
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    return named
