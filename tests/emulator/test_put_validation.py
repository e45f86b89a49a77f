"""PutSnapshotBlock input checks: checksum, length, index range, snapshot state."""

from __future__ import annotations

from ._blocks import (
    BLOCK_SIZE,
    BLOCKS_PER_GIB,
    VALIDATION_REASONS,
    block,
    checksum,
    expect_error,
    list_all,
    make_snapshot,
    put,
)


async def _pending(ebs, size: int = 1) -> str:
    return (await ebs.start_snapshot(VolumeSize=size))["SnapshotId"]


async def test_put_with_wrong_checksum_is_validation_error_and_not_stored(ebs):
    sid = await _pending(ebs)
    data = block("x")
    await expect_error(
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=data,
                               DataLength=BLOCK_SIZE, Checksum=checksum(block("y")),
                               ChecksumAlgorithm="SHA256"),
        "ValidationException", 400, VALIDATION_REASONS)
    # The rejected block was not written: completing with 0 blocks is consistent.
    assert (await ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0))["Status"] \
        == "completed"
    listed, _ = await list_all(ebs, sid)
    assert listed == []


async def test_put_with_body_corrupted_in_flight_is_rejected(ebs):
    # Right checksum for the intended data, one flipped byte in the body actually sent.
    sid = await _pending(ebs)
    data = block("flip")
    sent = bytearray(data)
    sent[BLOCK_SIZE // 2] ^= 0xFF
    await expect_error(
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=1, BlockData=bytes(sent),
                               DataLength=BLOCK_SIZE, Checksum=checksum(data),
                               ChecksumAlgorithm="SHA256"),
        "ValidationException", 400, VALIDATION_REASONS)


async def test_put_short_body_with_full_data_length_is_rejected(ebs):
    sid = await _pending(ebs)
    short = block("short")[: BLOCK_SIZE - 4096]
    await expect_error(
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=short,
                               DataLength=BLOCK_SIZE, Checksum=checksum(short),
                               ChecksumAlgorithm="SHA256"),
        "ValidationException", 400, VALIDATION_REASONS)


async def test_put_data_length_other_than_524288_is_rejected(ebs):
    sid = await _pending(ebs)
    small = block("small")[:4096]
    await expect_error(put(ebs, sid, 0, small), "ValidationException", 400, VALIDATION_REASONS)


async def test_put_oversized_block_is_rejected(ebs):
    sid = await _pending(ebs)
    big = block("big") + b"\x01" * 512
    await expect_error(put(ebs, sid, 0, big), "ValidationException", 400, VALIDATION_REASONS)


async def test_put_index_past_volume_end_is_rejected_last_index_accepted(ebs):
    sid = await _pending(ebs)  # 1 GiB = blocks 0..2047
    await put(ebs, sid, BLOCKS_PER_GIB - 1, block("last"))
    await expect_error(put(ebs, sid, BLOCKS_PER_GIB, block("past")),
                       "ValidationException", 400, VALIDATION_REASONS)
    await expect_error(put(ebs, sid, 10 * BLOCKS_PER_GIB, block("farpast")),
                       "ValidationException", 400, VALIDATION_REASONS)


async def test_put_with_unsupported_checksum_algorithm_is_rejected(ebs):
    sid = await _pending(ebs)
    data = block("algo")
    await expect_error(
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=data,
                               DataLength=BLOCK_SIZE, Checksum=checksum(data),
                               ChecksumAlgorithm="MD5"),
        "ValidationException", 400, VALIDATION_REASONS)


async def test_put_after_completion_is_rejected_and_data_unchanged(ebs):
    sid = await make_snapshot(ebs, {0: block("orig")})
    err = await expect_error(put(ebs, sid, 0, block("late")), "ValidationException", 400)
    assert err is not None
    listed, _ = await list_all(ebs, sid)
    assert [b["BlockIndex"] for b in listed] == [0]
    from ._blocks import read_block
    data, _ = await read_block(ebs, sid, 0, listed[0]["BlockToken"])
    assert data == block("orig")


async def test_put_to_unknown_snapshot_is_404_not_found(ebs):
    await expect_error(put(ebs, "snap-0123456789abcdef0", 0, block(1)),
                       "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")


async def test_put_progress_over_100_is_rejected(ebs):
    sid = await _pending(ebs)
    await expect_error(put(ebs, sid, 0, block("p"), Progress=101), "ValidationException", 400)


async def test_description_over_255_chars_is_rejected(ebs):
    await expect_error(ebs.start_snapshot(VolumeSize=1, Description="d" * 256),
                       "ValidationException", 400)
