"""pending → completed, completion_delay, reading pending snapshots, Timeout cancellation,
and the not-found window right after StartSnapshot."""

from __future__ import annotations

import asyncio
import time

from botocore.exceptions import ClientError

from ._blocks import block, complete, expect_error, list_all, make_snapshot, put, tokens

READ_REFUSED = {"ValidationException", "ResourceNotFoundException"}


async def _state(ec2, sid: str) -> str:
    return (await ec2.describe_snapshots(SnapshotIds=[sid]))["Snapshots"][0]["State"]


async def _wait_state(ec2, sid: str, want: str, limit: float = 5.0) -> float:
    start = time.monotonic()
    while time.monotonic() - start < limit:
        if await _state(ec2, sid) == want:
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"{sid} never reached {want}")


async def test_pending_until_complete_then_completed(ebs, ec2):
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    assert await _state(ec2, sid) == "pending"
    await put(ebs, sid, 0, block(0))
    assert await _state(ec2, sid) == "pending"
    await complete(ebs, sid, {0: block(0)})
    snap = (await ec2.describe_snapshots(SnapshotIds=[sid]))["Snapshots"][0]
    assert snap["State"] == "completed"
    assert snap["Progress"] == "100%"


async def test_pending_snapshot_cannot_be_listed_or_read(ebs):
    done = await make_snapshot(ebs, {0: block(0)})
    token = (await tokens(ebs, done))[0]
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    await put(ebs, sid, 0, block(0))
    await expect_error(ebs.list_snapshot_blocks(SnapshotId=sid), READ_REFUSED, (400, 404))
    await expect_error(ebs.list_changed_blocks(SecondSnapshotId=sid), READ_REFUSED, (400, 404))
    await expect_error(ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token),
                       READ_REFUSED, (400, 404))


async def test_completion_delay_reports_pending_then_completes(emulator, ebs, ec2):
    emulator.config(completion_delay=0.6)
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    await put(ebs, sid, 0, block(0))
    t0 = time.monotonic()
    resp = await complete(ebs, sid, {0: block(0)})
    assert resp["Status"] == "pending"
    assert await _state(ec2, sid) == "pending"
    await expect_error(ebs.list_snapshot_blocks(SnapshotId=sid), READ_REFUSED, (400, 404))
    await _wait_state(ec2, sid, "completed")
    assert time.monotonic() - t0 >= 0.5
    listed, _ = await list_all(ebs, sid)
    assert [b["BlockIndex"] for b in listed] == [0]


async def test_put_during_completion_delay_is_rejected(emulator, ebs, ec2):
    emulator.config(completion_delay=0.5)
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    await put(ebs, sid, 0, block(0))
    assert (await complete(ebs, sid, {0: block(0)}))["Status"] == "pending"
    await expect_error(put(ebs, sid, 1, block(1)), "ValidationException", 400)


async def test_snapshot_timeout_cancels_it(emulator, ebs, ec2):
    emulator.config(timeout_unit_seconds=0.05)  # Timeout=10 "minutes" → 0.5 s
    sid = (await ebs.start_snapshot(VolumeSize=1, Timeout=10))["SnapshotId"]
    await put(ebs, sid, 0, block(0))
    await _wait_state(ec2, sid, "error", limit=5.0)
    with_error = None
    try:
        await put(ebs, sid, 1, block(1))
    except ClientError as err:
        with_error = err
    assert with_error is not None, "a put to a cancelled snapshot succeeded"
    assert 400 <= with_error.response["ResponseMetadata"]["HTTPStatusCode"] < 500
    try:
        resp = await complete(ebs, sid, {0: block(0)})
    except ClientError:
        pass
    else:
        assert resp["Status"] == "error"


async def test_snapshot_timeout_is_not_hit_before_its_time(emulator, ebs, ec2):
    emulator.config(timeout_unit_seconds=0.2)  # Timeout=10 → 2 s
    sid = (await ebs.start_snapshot(VolumeSize=1, Timeout=10))["SnapshotId"]
    await put(ebs, sid, 0, block(0))
    assert await _state(ec2, sid) == "pending"
    assert (await complete(ebs, sid, {0: block(0)}))["Status"] == "completed"


async def test_not_found_window_gives_404_right_after_start_then_works(emulator, ebs):
    emulator.config(not_found_window=0.6)
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    t0 = time.monotonic()
    await expect_error(put(ebs, sid, 0, block(0)), "ResourceNotFoundException", 404,
                       "SNAPSHOT_NOT_FOUND")
    while time.monotonic() - t0 < 5:
        try:
            await put(ebs, sid, 0, block(0))
            break
        except ClientError as err:
            assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 404
            await asyncio.sleep(0.1)
    else:
        raise AssertionError("snapshot never became visible")
    assert time.monotonic() - t0 >= 0.4
    assert (await complete(ebs, sid, {0: block(0)}))["Status"] == "completed"


async def _while_not_found(call, limit: float = 5.0):
    """Repeat ``call`` while it answers 404 (the not-found window); its answer, or the error
    it raised otherwise."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return await call()
        except ClientError as err:
            if err.response["ResponseMetadata"]["HTTPStatusCode"] != 404:
                return err
            assert time.monotonic() < deadline, "the not-found window never ended"
            await asyncio.sleep(0.05)


async def test_not_found_window_also_applies_right_after_completion(emulator, ebs):
    # AWS advised retrying 404s for a while right after StartSnapshot and after completion.
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    await put(ebs, sid, 0, block(0))
    emulator.config(not_found_window=0.4)
    # Past the window that follows StartSnapshot: a pending snapshot cannot be read (400).
    refused = await _while_not_found(lambda: ebs.list_snapshot_blocks(SnapshotId=sid))
    assert isinstance(refused, ClientError)
    assert refused.response["Error"]["Code"] == "ValidationException"
    completing = time.monotonic()
    assert (await complete(ebs, sid, {0: block(0)}))["Status"] == "completed"
    await expect_error(ebs.list_snapshot_blocks(SnapshotId=sid), "ResourceNotFoundException", 404,
                       "SNAPSHOT_NOT_FOUND")
    listed, _ = await _while_not_found(lambda: list_all(ebs, sid))
    assert time.monotonic() - completing >= 0.35  # the window after completion was kept
    assert [b["BlockIndex"] for b in listed] == [0]


async def test_cancelled_snapshot_cannot_be_listed(emulator, ebs, ec2):
    emulator.config(timeout_unit_seconds=0.03)
    sid = (await ebs.start_snapshot(VolumeSize=1, Timeout=10))["SnapshotId"]
    await _wait_state(ec2, sid, "error")
    with_error = None
    try:
        await ebs.list_snapshot_blocks(SnapshotId=sid)
    except ClientError as err:
        with_error = err
    assert with_error is not None
    assert 400 <= with_error.response["ResponseMetadata"]["HTTPStatusCode"] < 500


async def test_concurrent_puts_all_land(ebs):
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    written = {i * 31: block(("cc", i)) for i in range(40)}
    await asyncio.gather(*(put(ebs, sid, i, d) for i, d in written.items()))
    assert (await complete(ebs, sid, written))["Status"] == "completed"
    listed, _ = await list_all(ebs, sid)
    assert [b["BlockIndex"] for b in listed] == sorted(written)


async def test_timeout_counts_from_the_last_write(emulator, ebs, ec2):
    # AWS cancels a snapshot when no block is written within Timeout, or when it is not
    # completed within Timeout of the LAST write: steady writes keep it alive.
    # Timeout=10 → 3 s; a write every 0.6 s leaves 2.4 s for a put on a busy machine
    emulator.config(timeout_unit_seconds=0.3)
    sid = (await ebs.start_snapshot(VolumeSize=1, Timeout=10))["SnapshotId"]
    written = {}
    for i in range(6):  # 6 × 0.6 s = 3.6 s, past 3 s since StartSnapshot
        written[i] = block(("keep", i))
        await put(ebs, sid, i, written[i])
        await asyncio.sleep(0.6)
    assert await _state(ec2, sid) == "pending"
    assert (await complete(ebs, sid, written))["Status"] == "completed"
