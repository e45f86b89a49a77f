"""Quick end-to-end smoke of the emulator process with aiobotocore (the emulator's own)."""

from __future__ import annotations

import base64
import hashlib

import pytest
from botocore.exceptions import ClientError

BLOCK = 524288


def _checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


async def test_round_trip_start_put_complete_list_get(ebs, ec2) -> None:
    data = bytes(range(256)) * (BLOCK // 256)
    snap = await ebs.start_snapshot(VolumeSize=1, Description="smoke", Timeout=60)
    sid = snap["SnapshotId"]
    assert snap["Status"] == "pending" and snap["BlockSize"] == BLOCK
    put = await ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=3, BlockData=data,
                                       DataLength=BLOCK, Checksum=_checksum(data),
                                       ChecksumAlgorithm="SHA256")
    assert put["Checksum"] == _checksum(data)
    aggregate = base64.b64encode(hashlib.sha256(hashlib.sha256(data).digest()).digest())
    done = await ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1,
                                       Checksum=aggregate.decode(), ChecksumAlgorithm="SHA256",
                                       ChecksumAggregationMethod="LINEAR")
    assert done["Status"] == "completed"
    listed = await ebs.list_snapshot_blocks(SnapshotId=sid)
    assert [b["BlockIndex"] for b in listed["Blocks"]] == [3]
    assert "NextToken" not in listed
    got = await ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=3,
                                       BlockToken=listed["Blocks"][0]["BlockToken"])
    async with got["BlockData"] as stream:
        body = await stream.read()
    assert body == data and got["Checksum"] == _checksum(data) and got["DataLength"] == BLOCK

    described = await ec2.describe_snapshots(SnapshotIds=[sid])
    (only,) = described["Snapshots"]
    assert only["SnapshotId"] == sid and only["State"] == "completed"
    assert only["Progress"] == "100%" and only["VolumeSize"] == 1
    assert only["Description"] == "smoke" and only["Encrypted"] is False


async def test_wrong_checksum_is_a_validation_error(ebs) -> None:
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    with pytest.raises(ClientError) as info:
        await ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=bytes(BLOCK),
                                     DataLength=BLOCK, Checksum=_checksum(b"other"),
                                     ChecksumAlgorithm="SHA256")
    err = info.value.response
    assert err["Error"]["Code"] == "ValidationException"
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert err["Reason"] == "INVALID_PARAMETER_VALUE"


async def test_unknown_snapshot_is_404(ebs) -> None:
    with pytest.raises(ClientError) as info:
        await ebs.list_snapshot_blocks(SnapshotId="snap-0123456789abcdef0")
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert info.value.response["Reason"] == "SNAPSHOT_NOT_FOUND"
