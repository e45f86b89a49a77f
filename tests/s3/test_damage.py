"""A damaged archive fails restore and verify loudly, naming the object; nothing is skipped."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fspd.errors import FspdError
from tests.s3._support import make_image, run, s3_client

LAYOUT = "DDZD" + "H" * 60 + "DD"


def archive(moto: str, bucket: str, prefix: str) -> dict[str, Any]:
    return {"type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": moto}


@pytest.fixture
async def archived(moto: str, bucket: str, tmp_path: Path) -> str:
    make_image(tmp_path / "src.img", LAYOUT, seed=7)
    await run({"source": {"type": "file", "path": str(tmp_path / "src.img")},
               "destinations": [archive(moto, bucket, "dmg")]})
    return "dmg"


def delete_segment(s3: Any, bucket: str) -> str:
    key = "dmg/segments/000000000064.2.zst"
    s3.delete_object(Bucket=bucket, Key=key)
    return key


def flip_byte(s3: Any, bucket: str) -> str:
    key = "dmg/segments/000000000000.2.zst"
    body = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    body[len(body) // 2] ^= 0x01
    s3.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    return key


def delete_manifest(s3: Any, bucket: str) -> str:
    key = "dmg/manifest.jsonl"
    s3.delete_object(Bucket=bucket, Key=key)
    return key


DAMAGE: dict[str, Callable[[Any, str], str]] = {
    "deleted_segment": delete_segment, "flipped_byte": flip_byte,
    "missing_manifest": delete_manifest}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=list(DAMAGE))
async def test_damaged_archive_fails_restore_naming_the_object(
        moto: str, bucket: str, archived: str, tmp_path: Path,
        damage: Callable[[Any, str], str]) -> None:
    key = damage(s3_client(moto), bucket)
    with pytest.raises(FspdError, match=f"s3://{bucket}/{key}"):
        await run({"source": archive(moto, bucket, archived),
                   "destinations": [{"type": "file", "path": str(tmp_path / "out.img")}]})


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=list(DAMAGE))
def test_damaged_archive_fails_verify_naming_the_object(
        moto: str, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        fspd_cli: Callable[..., int],
        damage: Callable[[Any, str], str]) -> None:
    make_image(tmp_path / "src.img", LAYOUT, seed=7)
    assert fspd_cli("movetos3", str(tmp_path / "src.img"), f"s3://{bucket}/dmg",
                 "--s3-endpoint-url", moto, "-q") == 0
    assert fspd_cli("verify", f"s3://{bucket}/dmg", "--s3-endpoint-url", moto) == 0
    capsys.readouterr()
    key = damage(s3_client(moto), bucket)
    assert fspd_cli("verify", f"s3://{bucket}/dmg", "--s3-endpoint-url", moto) == 4
    out = capsys.readouterr()
    assert f"s3://{bucket}/{key}" in out.out
    assert f"s3://{bucket}/{key}" in out.err
    assert "Traceback" not in out.err


def test_verify_reports_every_segment_and_block_it_checked(
        moto: str, bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        fspd_cli: Callable[..., int]) -> None:
    make_image(tmp_path / "src.img", LAYOUT, seed=7)
    assert fspd_cli("movetos3", str(tmp_path / "src.img"), f"s3://{bucket}/ok",
                 "--s3-endpoint-url", moto, "-q") == 0
    assert fspd_cli("verify", f"s3://{bucket}/ok", "--s3-endpoint-url", moto, "--json") == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True
    (only,) = report["archives"]
    assert (only["segments_verified"], only["blocks_verified"], only["zero_blocks"]) == (3, 5, 61)
