"""Archives in FSP's key layout (built here as FSP wrote them) are restored and verified, and
one missing its last segment (FSP's bug) is reported, never restored silently."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from fspd.errors import FspdError
from tests.s3._support import GIB, B, run, s3_client

SNAP = "snap-0123456789abcdef0"
PREFIX = f"fsp/{SNAP}.1"
# Allocated blocks (FSP stores allocated zero blocks too); 63|64 straddle a segment boundary.
BLOCKS = {0: b"x0", 1: b"x1", 2: b"x2", 3: b"", 63: b"y63", 64: b"y64", 2047: b"last"}


def block(index: int) -> bytes:
    return (BLOCKS[index] * 1000)[:B].ljust(B, b"\0")


def write_fsp_archive(s3: Any, bucket: str, *, drop_last: bool = False) -> list[str]:
    """Segments as FSP cut them: runs of allocated blocks, split at every 64-block boundary;
    one zstd frame (level 1) each, keyed by URL-safe base64 SHA-256 of the raw run."""
    segments: list[list[int]] = []
    for index in sorted(BLOCKS):
        if segments and segments[-1][-1] + 1 == index and index % 64:
            segments[-1].append(index)
        else:
            segments.append([index])
    if drop_last:
        segments.pop()
    keys = []
    for seg in segments:
        raw = b"".join(block(i) for i in seg)
        checksum = base64.urlsafe_b64encode(hashlib.sha256(raw).digest()).decode()
        key = f"{PREFIX}/{seg[0]}.{checksum}.{len(seg)}.zstd"
        s3.put_object(Bucket=bucket, Key=key, Body=zstandard.ZstdCompressor(level=1)
                      .compress(raw))
        keys.append(key)
    return keys


def fsp_source(moto: str, bucket: str, **kw: Any) -> dict[str, Any]:
    return {"type": "s3", "bucket": bucket, "prefix": PREFIX, "endpoint_url": moto,
            "format": "fsp", **kw}


def assert_restored(path: Path, present: set[int]) -> None:
    assert path.stat().st_size == GIB
    with open(path, "rb") as f:
        for index in range(2048):
            want = block(index) if index in present else None
            data = os.pread(f.fileno(), B, index * B)
            assert data == (want if want is not None else bytes(B)), f"block {index}"


async def test_an_fsp_archive_is_restored(moto: str, bucket: str, tmp_path: Path) -> None:
    write_fsp_archive(s3_client(moto), bucket)
    out = tmp_path / "out.img"
    result = await run({"source": fsp_source(moto, bucket),
                        "destinations": [{"type": "file", "path": str(out)}]})
    assert result["source_report"]["complete"] is True
    assert_restored(out, set(BLOCKS))


async def test_an_fsp_archive_missing_its_last_segment_is_reported(
        moto: str, bucket: str, tmp_path: Path) -> None:
    write_fsp_archive(s3_client(moto), bucket, drop_last=True)
    out = tmp_path / "out.img"
    with pytest.raises(FspdError, match=r"does not cover blocks \[65, 2048\).*allow_incomplete"):
        await run({"source": fsp_source(moto, bucket),
                   "destinations": [{"type": "file", "path": str(out)}]})
    result = await run({"source": fsp_source(moto, bucket, allow_incomplete=True),
                        "destinations": [{"type": "file", "path": str(out)}]})
    report = result["source_report"]
    assert report["complete"] is False
    assert report["coverage"]["uncovered_tail"] == [65, 2048]
    assert_restored(out, set(BLOCKS) - {2047})


async def test_an_fsp_segment_that_does_not_match_its_key_fails_naming_it(
        moto: str, bucket: str, tmp_path: Path) -> None:
    s3 = s3_client(moto)
    keys = write_fsp_archive(s3, bucket)
    raw = b"".join(block(i) for i in (0, 1, 2, 3))
    raw = raw[:10] + b"!" + raw[11:]
    s3.put_object(Bucket=bucket, Key=keys[0], Body=zstandard.ZstdCompressor().compress(raw))
    with pytest.raises(FspdError, match=f"s3://{bucket}/{keys[0]}: SHA-256 of the "
                                        "decompressed segment"):
        await run({"source": fsp_source(moto, bucket),
                   "destinations": [{"type": "file", "path": str(tmp_path / "o.img")}]})


def test_verify_checks_an_fsp_archive_and_reports_the_missing_tail(
        moto: str, bucket: str, capsys: pytest.CaptureFixture[str],
        fspd_cli: Callable[..., int]) -> None:
    s3 = s3_client(moto)
    keys = write_fsp_archive(s3, bucket)
    url = f"s3://{bucket}/{PREFIX}"
    assert fspd_cli("verify", url, "--format", "fsp", "--s3-endpoint-url", moto) == 0
    assert "7 blocks verified" in capsys.readouterr().out
    s3.delete_object(Bucket=bucket, Key=keys[-1])
    assert fspd_cli("verify", url, "--format", "fsp", "--s3-endpoint-url", moto) == 4
    assert "does not cover blocks [65, 2048)" in capsys.readouterr().err


async def test_an_fsp_archive_read_as_fspd_says_which_format_to_use(
        moto: str, bucket: str, tmp_path: Path) -> None:
    write_fsp_archive(s3_client(moto), bucket)
    source = fsp_source(moto, bucket)
    del source["format"]
    with pytest.raises(FspdError, match='format = "fsp"'):
        await run({"source": source,
                   "destinations": [{"type": "file", "path": str(tmp_path / "o.img")}]})
