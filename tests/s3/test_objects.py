"""How archive objects are stored: S3's own SHA-256 checksum, multipart for large objects,
and the job's storage class, encryption and tags."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from tests.s3._support import MIB, assert_volume_file, make_image, run, s3_client, settings


async def test_segments_carry_s3_checksums_and_the_jobs_storage_options(
        moto: str, bucket: str, tmp_path: Path) -> None:
    make_image(tmp_path / "src.img", "DDC", seed=3)
    await run({"source": {"type": "file", "path": str(tmp_path / "src.img")},
               "destinations": [{"type": "s3", "bucket": bucket, "prefix": "opt",
                                 "endpoint_url": moto, "storage_class": "STANDARD_IA",
                                 "sse": "AES256", "tags": {"team": "storage"},
                                 "zstd_level": 9}]})
    s3 = s3_client(moto)
    seg = s3.head_object(Bucket=bucket, Key="opt/segments/000000000000.3.zst",
                         ChecksumMode="ENABLED")
    assert seg["StorageClass"] == "STANDARD_IA"
    assert seg["ServerSideEncryption"] == "AES256"
    lines = s3.get_object(Bucket=bucket, Key="opt/manifest.jsonl")["Body"].read().splitlines()
    record = json.loads(lines[1])
    assert base64.b64decode(seg["ChecksumSHA256"]).hex() == record["sha256"]
    assert json.loads(lines[0])["zstd_level"] == 9
    tags = s3.get_object_tagging(Bucket=bucket, Key="opt/segments/000000000000.3.zst")
    assert tags["TagSet"] == [{"Key": "team", "Value": "storage"}]
    manifest = s3.head_object(Bucket=bucket, Key="opt/manifest.jsonl")
    assert manifest.get("StorageClass", "STANDARD") == "STANDARD"
    assert manifest["ServerSideEncryption"] == "AES256"


async def test_large_segments_go_up_in_parts_and_come_back_whole(
        moto: str, bucket: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "D" * 16, seed=4)  # one 8 MiB segment
    conf = settings(multipart_threshold=6 * MIB, part_size=5 * MIB)
    await run({"source": {"type": "file", "path": str(tmp_path / "src.img")},
               "destinations": [{"type": "s3", "bucket": bucket, "prefix": "big",
                                 "endpoint_url": moto, "zstd_level": 1}]}, conf)
    head = s3_client(moto).head_object(Bucket=bucket, Key="big/segments/000000000000.16.zst")
    assert head["ETag"].strip('"').endswith("-2")  # two parts
    assert s3_client(moto).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    await run({"source": {"type": "s3", "bucket": bucket, "prefix": "big",
                          "endpoint_url": moto},
               "destinations": [{"type": "file", "path": str(tmp_path / "out.img")}]}, conf)
    assert_volume_file(tmp_path / "out.img", image)
