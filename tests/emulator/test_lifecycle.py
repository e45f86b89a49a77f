"""The full happy path Start → Put → Complete → List → Get, with status codes and shapes."""

from __future__ import annotations

import datetime as dt

from ._blocks import (
    BLOCK_SIZE,
    ZERO_BLOCK,
    ZERO_BLOCK_CHECKSUM,
    block,
    checksum,
    complete,
    linear_checksum,
    list_all,
    make_snapshot,
    put,
    read_block,
)


def _status(resp: dict) -> int:
    return resp["ResponseMetadata"]["HTTPStatusCode"]


async def test_start_snapshot_returns_201_and_documented_shape(ebs):
    resp = await ebs.start_snapshot(VolumeSize=1, Description="lifecycle")
    assert _status(resp) == 201
    assert resp["SnapshotId"].startswith("snap-")
    assert all(c in "0123456789abcdef" for c in resp["SnapshotId"][5:])
    assert resp["Status"] == "pending"
    assert resp["VolumeSize"] == 1
    assert resp["BlockSize"] == BLOCK_SIZE
    assert resp["OwnerId"]
    assert isinstance(resp["StartTime"], dt.datetime)
    now = dt.datetime.now(dt.UTC)
    assert abs((now - resp["StartTime"]).total_seconds()) < 300
    assert resp["Description"] == "lifecycle"


async def test_every_start_gives_a_new_snapshot_id(ebs):
    ids = {(await ebs.start_snapshot(VolumeSize=1))["SnapshotId"] for _ in range(5)}
    assert len(ids) == 5


async def test_put_returns_201_and_echoes_checksum(ebs):
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    data = block("echo")
    resp = await put(ebs, sid, 3, data, Progress=50)
    assert _status(resp) == 201
    assert resp["Checksum"] == checksum(data)
    assert resp["ChecksumAlgorithm"] == "SHA256"


async def test_complete_returns_202_completed(ebs):
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    written = {0: block(0), 9: block(9)}
    for i, d in written.items():
        await put(ebs, sid, i, d)
    resp = await complete(ebs, sid, written)
    assert _status(resp) == 202
    assert resp["Status"] == "completed"


async def test_full_cycle_bytes_read_back_equal_bytes_put(ebs):
    written = {0: block("a"), 1: block("b"), 77: block("c"), 2047: block("d")}
    sid = await make_snapshot(ebs, written)
    listed, pages = await list_all(ebs, sid)
    assert [b["BlockIndex"] for b in listed] == sorted(written)
    page = pages[0]
    assert page["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert page["VolumeSize"] == 1
    assert page["BlockSize"] == BLOCK_SIZE
    assert isinstance(page["ExpiryTime"], dt.datetime)
    assert page["ExpiryTime"] > dt.datetime.now(dt.UTC)
    for entry in listed:
        assert entry["BlockToken"]
        data, meta = await read_block(ebs, sid, entry["BlockIndex"], entry["BlockToken"])
        assert data == written[entry["BlockIndex"]]
        assert meta["ResponseMetadata"]["HTTPStatusCode"] == 200
        assert meta["DataLength"] == BLOCK_SIZE
        assert meta["Checksum"] == checksum(data)
        assert meta["ChecksumAlgorithm"] == "SHA256"


async def test_complete_with_no_blocks_gives_an_empty_completed_snapshot(ebs):
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    resp = await ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)
    assert resp["Status"] == "completed"
    listed, _ = await list_all(ebs, sid)
    assert listed == []


async def test_overwritten_block_reads_back_last_write_and_counts_once(ebs):
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    await put(ebs, sid, 4, block("first"))
    await put(ebs, sid, 4, block("second"))
    final = {4: block("second")}
    assert (await complete(ebs, sid, final))["Status"] == "completed"
    listed, _ = await list_all(ebs, sid)
    assert [b["BlockIndex"] for b in listed] == [4]
    data, _ = await read_block(ebs, sid, 4, listed[0]["BlockToken"])
    assert data == block("second")


async def test_explicitly_written_zero_block_is_listed_and_reads_zero(ebs):
    sid = await make_snapshot(ebs, {6: ZERO_BLOCK})
    listed, _ = await list_all(ebs, sid)
    assert [b["BlockIndex"] for b in listed] == [6]
    data, meta = await read_block(ebs, sid, 6, listed[0]["BlockToken"])
    assert data == ZERO_BLOCK
    assert meta["Checksum"] == ZERO_BLOCK_CHECKSUM


def test_linear_helper_matches_documented_definition():
    # SHA-256 over concatenated RAW digests (not the base64 strings), ascending index order.
    import base64
    import hashlib
    a, b = block(1), block(2)
    expected = base64.b64encode(hashlib.sha256(
        hashlib.sha256(a).digest() + hashlib.sha256(b).digest()).digest()).decode()
    assert linear_checksum({5: b, 1: a}) == expected
    assert checksum(ZERO_BLOCK) == ZERO_BLOCK_CHECKSUM
