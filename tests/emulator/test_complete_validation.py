"""CompleteSnapshot checks: ChangedBlocksCount, the LINEAR aggregate checksum, unknown ids."""

from __future__ import annotations

from ._blocks import (
    VALIDATION_REASONS,
    block,
    checksum,
    complete,
    expect_error,
    linear_checksum,
    list_all,
    put,
)


async def _with_blocks(ebs, written: dict[int, bytes]) -> str:
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    for index, data in written.items():
        await put(ebs, sid, index, data)
    return sid


WRITTEN = {2: block("c2"), 0: block("c0"), 1000: block("c1000")}


async def test_right_changed_blocks_count_and_linear_checksum_completes(ebs):
    sid = await _with_blocks(ebs, WRITTEN)
    resp = await ebs.complete_snapshot(
        SnapshotId=sid, ChangedBlocksCount=3, Checksum=linear_checksum(WRITTEN),
        ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    assert resp["Status"] == "completed"


async def test_right_count_without_aggregate_checksum_completes(ebs):
    sid = await _with_blocks(ebs, WRITTEN)
    assert (await complete(ebs, sid, WRITTEN, aggregate=False))["Status"] == "completed"


async def test_changed_blocks_count_too_high_is_rejected(ebs):
    sid = await _with_blocks(ebs, WRITTEN)
    await expect_error(complete(ebs, sid, WRITTEN, count=4, aggregate=False),
                       "ValidationException", 400, VALIDATION_REASONS)


async def test_changed_blocks_count_too_low_is_rejected(ebs):
    sid = await _with_blocks(ebs, WRITTEN)
    await expect_error(complete(ebs, sid, WRITTEN, count=2, aggregate=False),
                       "ValidationException", 400, VALIDATION_REASONS)


async def test_failed_count_leaves_snapshot_unreadable_as_completed(ebs):
    sid = await _with_blocks(ebs, WRITTEN)
    await expect_error(complete(ebs, sid, WRITTEN, count=7, aggregate=False),
                       "ValidationException", 400)
    # A rejected CompleteSnapshot must not have completed the snapshot.
    from botocore.exceptions import ClientError
    try:
        listed, _ = await list_all(ebs, sid)
    except ClientError:
        return
    raise AssertionError(f"snapshot readable after a rejected completion: {listed}")


async def test_wrong_linear_checksum_is_rejected(ebs):
    sid = await _with_blocks(ebs, WRITTEN)
    wrong = dict(WRITTEN)
    wrong[2] = block("not-what-was-written")
    await expect_error(
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=3,
                              Checksum=linear_checksum(wrong), ChecksumAlgorithm="SHA256",
                              ChecksumAggregationMethod="LINEAR"),
        "ValidationException", 400, VALIDATION_REASONS)


async def test_aggregate_over_base64_strings_instead_of_raw_digests_is_rejected(ebs):
    # The LINEAR method hashes the raw 32-byte digests; hashing the base64 text is wrong.
    import base64
    import hashlib
    sid = await _with_blocks(ebs, WRITTEN)
    text = "".join(checksum(WRITTEN[i]) for i in sorted(WRITTEN)).encode()
    wrong = base64.b64encode(hashlib.sha256(text).digest()).decode()
    await expect_error(
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=3, Checksum=wrong,
                              ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR"),
        "ValidationException", 400, VALIDATION_REASONS)


async def test_aggregate_in_put_order_instead_of_index_order_is_rejected(ebs):
    import base64
    import hashlib
    sid = await _with_blocks(ebs, WRITTEN)  # put order 2, 0, 1000
    h = hashlib.sha256()
    for i in WRITTEN:
        h.update(hashlib.sha256(WRITTEN[i]).digest())
    wrong = base64.b64encode(h.digest()).decode()
    assert wrong != linear_checksum(WRITTEN)
    await expect_error(
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=3, Checksum=wrong,
                              ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR"),
        "ValidationException", 400, VALIDATION_REASONS)


async def test_linear_checksum_uses_final_data_of_overwritten_block(ebs):
    sid = await _with_blocks(ebs, {5: block("old")})
    await put(ebs, sid, 5, block("new"))
    await expect_error(complete(ebs, sid, {5: block("old")}), "ValidationException", 400)


async def test_linear_checksum_of_overwritten_block_final_data_completes(ebs):
    sid = await _with_blocks(ebs, {5: block("old")})
    await put(ebs, sid, 5, block("new"))
    assert (await complete(ebs, sid, {5: block("new")}))["Status"] == "completed"


async def test_complete_unknown_snapshot_is_404(ebs):
    await expect_error(ebs.complete_snapshot(SnapshotId="snap-0fedcba987654321f",
                                             ChangedBlocksCount=0),
                       "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")
