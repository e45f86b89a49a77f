"""Throttling at configured rates, fault injection (latency, 5xx, resets, corruption), seeds,
and the request counters."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest
from botocore.exceptions import BotoCoreError, ClientError

from ._blocks import (
    THROTTLE_CODES,
    THROTTLE_REASONS,
    assert_error,
    aws_client,
    block,
    checksum,
    error_code,
    error_reason,
    expect_error,
    make_snapshot,
    put,
    read_block,
    tokens,
)


def _assert_throttled(err: ClientError) -> None:
    assert_error(err, THROTTLE_CODES, (400, 429))
    if error_code(err) == "RequestThrottledException":
        assert error_reason(err) in THROTTLE_REASONS, err.response


async def _one_block(ebs1) -> tuple[str, str]:
    sid = await make_snapshot(ebs1, {0: block("f0")})
    return sid, (await tokens(ebs1, sid))[0]


async def _burst_get(url: str, sid: str, token: str, n: int) -> list[object]:
    async with aws_client("ebs", url, max_pool_connections=n) as client:
        async def one() -> object:
            try:
                data, _ = await read_block(client, sid, 0, token)
                return data
            except ClientError as err:
                return err
        return await asyncio.gather(*(one() for _ in range(n)))


async def test_burst_over_low_get_rate_is_throttled_and_counted(emulator, ebs1):
    sid, token = await _one_block(ebs1)
    emulator.config(throttling=True, get_rate=10, burst_seconds=1)
    emulator.reset_stats()
    results = await _burst_get(emulator.url, sid, token, 80)
    errors = [r for r in results if isinstance(r, ClientError)]
    ok = [r for r in results if isinstance(r, bytes)]
    assert errors, "80 concurrent GETs at a 10/s limit were never throttled"
    assert ok, "even a throttled burst lets the allowed rate through"
    for err in errors:
        _assert_throttled(err)
    assert all(r == block("f0") for r in ok)
    assert emulator.stats()["throttled"] >= len(errors)


async def test_throttling_off_ignores_low_rates(emulator, ebs1):
    sid, token = await _one_block(ebs1)
    emulator.config(throttling=False, get_rate=5, account_get_rate=5, burst_seconds=1)
    results = await _burst_get(emulator.url, sid, token, 40)
    assert all(isinstance(r, bytes) for r in results), [
        error_code(r) for r in results if isinstance(r, ClientError)]


async def test_list_rate_throttles_list_calls(emulator, ebs1):
    sid, _ = await _one_block(ebs1)
    emulator.config(throttling=True, list_rate=5, burst_seconds=1)

    async def one() -> object:
        try:
            return await ebs1.list_snapshot_blocks(SnapshotId=sid)
        except ClientError as err:
            return err
    results = await asyncio.gather(*(one() for _ in range(30)))
    errors = [r for r in results if isinstance(r, ClientError)]
    assert errors
    for err in errors:
        _assert_throttled(err)


async def test_put_rate_throttles_puts(emulator, ebs1):
    sid = (await ebs1.start_snapshot(VolumeSize=1))["SnapshotId"]
    emulator.config(throttling=True, put_rate=5, burst_seconds=1)
    data = block("pr")

    async def one(i: int) -> object:
        try:
            return await put(ebs1, sid, i, data)
        except ClientError as err:
            return err
    results = await asyncio.gather(*(one(i) for i in range(40)))
    errors = [r for r in results if isinstance(r, ClientError)]
    assert errors
    for err in errors:
        _assert_throttled(err)


async def test_error_rate_gives_500_only_on_chosen_operation(emulator, ebs1):
    sid, token = await _one_block(ebs1)
    emulator.faults(error_rate=1.0, operations=["GetSnapshotBlock"])
    for _ in range(3):
        await expect_error(ebs1.get_snapshot_block(SnapshotId=sid, BlockIndex=0,
                                                  BlockToken=token),
                           "InternalServerException", 500)
    page = await ebs1.list_snapshot_blocks(SnapshotId=sid)
    assert [b["BlockIndex"] for b in page["Blocks"]] == [0]
    faults = emulator.stats()["faults"]
    assert sum(faults.values()) >= 3


async def test_error_rate_in_one_region_only(emulator, ebs1):
    sid, _ = await _one_block(ebs1)
    emulator.faults(error_rate=1.0, region="eu-west-1")
    async with aws_client("ebs", emulator.url, region="eu-west-1") as eu:
        await expect_error(eu.start_snapshot(VolumeSize=1), "InternalServerException", 500)
    await ebs1.list_snapshot_blocks(SnapshotId=sid)


async def test_reset_rate_makes_client_see_connection_error(emulator, ebs1):
    sid, token = await _one_block(ebs1)
    emulator.faults(reset_rate=1.0, operations=["GetSnapshotBlock"])
    with pytest.raises((BotoCoreError, aiohttp.ClientError, ConnectionError, OSError,
                        asyncio.IncompleteReadError)) as info:
        await read_block(ebs1, sid, 0, token)
    assert not isinstance(info.value, ClientError)
    emulator.clear_faults()
    data, _ = await read_block(ebs1, sid, 0, token)
    assert data == block("f0")


async def test_corrupt_rate_returns_body_not_matching_true_checksum(emulator, ebs1):
    sid, token = await _one_block(ebs1)
    emulator.faults(corrupt_rate=1.0, operations=["GetSnapshotBlock"])
    data, meta = await read_block(ebs1, sid, 0, token)
    assert meta["Checksum"] == checksum(block("f0"))  # the header is the TRUE checksum
    assert checksum(data) != meta["Checksum"]
    assert data != block("f0")
    emulator.clear_faults()
    data, meta = await read_block(ebs1, sid, 0, token)
    assert data == block("f0")
    assert checksum(data) == meta["Checksum"]


async def test_latency_is_added(emulator, ebs1):
    sid, _ = await _one_block(ebs1)
    emulator.faults(latency_ms=250, operations=["ListSnapshotBlocks"])
    t0 = time.monotonic()
    await ebs1.list_snapshot_blocks(SnapshotId=sid)
    assert time.monotonic() - t0 >= 0.24


async def test_hold_after_answers_the_first_requests_and_holds_the_rest_until_cleared(
        emulator, ebs1):
    sid, _ = await _one_block(ebs1)
    emulator.faults(hold_after=1, operations=["ListSnapshotBlocks"])
    first = await ebs1.list_snapshot_blocks(SnapshotId=sid)  # answered
    assert [b["BlockIndex"] for b in first["Blocks"]] == [0]
    held = [asyncio.ensure_future(ebs1.list_snapshot_blocks(SnapshotId=sid)) for _ in range(2)]
    while (await asyncio.to_thread(emulator.faults))["counts"].get("held", 0) < 2:
        await asyncio.sleep(0.01)  # polls the emulator's count of held requests
    await ebs1.list_changed_blocks(SecondSnapshotId=sid)  # another operation is not held
    assert not any(task.done() for task in held)
    await asyncio.to_thread(emulator.clear_faults)
    for answer in await asyncio.gather(*held):
        assert [b["BlockIndex"] for b in answer["Blocks"]] == [0]


async def test_cleared_faults_restore_normal_behaviour(emulator, ebs1):
    sid, token = await _one_block(ebs1)
    emulator.faults(error_rate=1.0)
    await expect_error(ebs1.list_snapshot_blocks(SnapshotId=sid), "InternalServerException", 500)
    emulator.clear_faults()
    data, _ = await read_block(ebs1, sid, 0, token)
    assert data == block("f0")


async def _outcomes(ebs1, sid: str, n: int) -> list[bool]:
    out = []
    for _ in range(n):
        try:
            await ebs1.list_snapshot_blocks(SnapshotId=sid)
            out.append(True)
        except ClientError as err:
            assert err.response["ResponseMetadata"]["HTTPStatusCode"] == 500
            out.append(False)
    return out


async def test_seeded_faults_are_reproducible(emulator, ebs1):
    sid, _ = await _one_block(ebs1)
    emulator.faults(error_rate=0.5, operations=["ListSnapshotBlocks"], seed=1234)
    first = await _outcomes(ebs1, sid, 24)
    emulator.clear_faults()
    emulator.faults(error_rate=0.5, operations=["ListSnapshotBlocks"], seed=1234)
    second = await _outcomes(ebs1, sid, 24)
    assert first == second
    assert True in first and False in first
    emulator.clear_faults()
    emulator.faults(error_rate=0.5, operations=["ListSnapshotBlocks"], seed=999)
    third = await _outcomes(ebs1, sid, 24)
    assert third != first  # 2**-24 chance of a false alarm


async def test_stats_count_requests_by_operation_and_snapshot(emulator, ebs1):
    sid = (await ebs1.start_snapshot(VolumeSize=1))["SnapshotId"]
    emulator.reset_stats()
    for i in range(3):
        await put(ebs1, sid, i, block(i))
    await ebs1.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=3)
    await ebs1.list_snapshot_blocks(SnapshotId=sid)
    stats = emulator.stats()
    assert stats["requests"]["PutSnapshotBlock"] == 3
    assert stats["requests"]["CompleteSnapshot"] == 1
    assert stats["requests"]["ListSnapshotBlocks"] == 1
    assert stats["requests"].get("StartSnapshot", 0) == 0
    assert stats["by_snapshot"][sid]["PutSnapshotBlock"] == 3
    emulator.reset_stats()
    after = emulator.stats()
    assert sum(after["requests"].values()) == 0


async def test_stats_count_regions(emulator, ebs1):
    emulator.reset_stats()
    await ebs1.start_snapshot(VolumeSize=1)
    async with aws_client("ebs", emulator.url, region="us-west-2") as west:
        await west.start_snapshot(VolumeSize=1)
        await west.start_snapshot(VolumeSize=1)
    by_region = emulator.stats()["by_region"]  # {region: {op: n}}, like by_snapshot
    assert by_region["us-west-2"]["StartSnapshot"] == 2
    assert by_region["us-east-1"]["StartSnapshot"] == 1
    assert "eu-west-1" not in by_region or not any(by_region["eu-west-1"].values())


async def test_default_quotas_throttle_a_burst_of_start_snapshot(emulator, ebs1):
    # AWS: StartSnapshot 10/s per account. Restore the default throttling and burst past it.
    emulator.config(throttling=True)

    async def one() -> object:
        try:
            return await ebs1.start_snapshot(VolumeSize=1)
        except ClientError as err:
            return err
    results = await asyncio.gather(*(one() for _ in range(40)))
    errors = [r for r in results if isinstance(r, ClientError)]
    assert errors, "40 concurrent StartSnapshot calls passed a 10/s quota"
    for err in errors:
        _assert_throttled(err)


async def test_account_get_rate_throttles_across_snapshots(emulator, ebs1):
    a, tok_a = await _one_block(ebs1)
    b, tok_b = await _one_block(ebs1)
    emulator.config(throttling=True, get_rate=1000, account_get_rate=5, burst_seconds=1)
    async with aws_client("ebs", emulator.url, max_pool_connections=60) as client:
        async def one(sid: str, tok: str) -> object:
            try:
                return (await read_block(client, sid, 0, tok))[0]
            except ClientError as err:
                return err
        results = await asyncio.gather(*(one(a, tok_a) for _ in range(30)),
                                       *(one(b, tok_b) for _ in range(30)))
    errors = [r for r in results if isinstance(r, ClientError)]
    # 60 GETs over two snapshots, each far under its 1000/s, but over the account's 5/s.
    assert len(errors) >= 10
    for err in errors:
        _assert_throttled(err)


async def test_per_snapshot_rate_does_not_throttle_another_snapshot(emulator, ebs1):
    a, tok_a = await _one_block(ebs1)
    b, tok_b = await _one_block(ebs1)
    emulator.config(throttling=True, get_rate=10, account_get_rate=1000, burst_seconds=1)
    hammered = await _burst_get(emulator.url, a, tok_a, 40)
    assert any(isinstance(r, ClientError) for r in hammered)
    # Snapshot b has its own per-snapshot bucket.
    data, _ = await read_block(ebs1, b, 0, tok_b)
    assert data == block("f0")


async def test_reset_on_put_leaves_snapshot_consistent(emulator, ebs1):
    sid = (await ebs1.start_snapshot(VolumeSize=1))["SnapshotId"]
    emulator.faults(reset_rate=1.0, operations=["PutSnapshotBlock"])
    with pytest.raises((BotoCoreError, aiohttp.ClientError, ConnectionError, OSError)) as info:
        await put(ebs1, sid, 0, block("r0"))
    assert not isinstance(info.value, ClientError)
    emulator.clear_faults()
    await put(ebs1, sid, 0, block("r0"))
    from ._blocks import complete, list_all
    assert (await complete(ebs1, sid, {0: block("r0")}))["Status"] == "completed"
    listed, _ = await list_all(ebs1, sid)
    assert [b["BlockIndex"] for b in listed] == [0]


async def test_too_many_pending_snapshots_is_refused(emulator, ebs1):
    # AWS: at most 100 pending snapshots per account (per region).
    for _ in range(100):
        await ebs1.start_snapshot(VolumeSize=1)
    await expect_error(ebs1.start_snapshot(VolumeSize=1),
                       {"ConcurrentLimitExceededException", "ServiceQuotaExceededException"},
                       (400, 402))


async def test_error_responses_carry_error_type_header_and_json_body(emulator, ebs1):
    err = await expect_error(ebs1.list_snapshot_blocks(SnapshotId="snap-0123456789abcdef0"),
                             "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")
    headers = err.response["ResponseMetadata"]["HTTPHeaders"]
    assert headers.get("x-amzn-errortype", "").split(":")[0] == "ResourceNotFoundException"
    assert err.response["Error"]["Message"]


async def test_throttle_rate_fault_gives_throttling_errors_only_there(emulator, ebs1):
    sid, token = await _one_block(ebs1)
    emulator.faults(throttle_rate=1.0, operations=["GetSnapshotBlock"])
    with pytest.raises(ClientError) as info:
        await read_block(ebs1, sid, 0, token)
    _assert_throttled(info.value)
    page = await ebs1.list_snapshot_blocks(SnapshotId=sid)
    assert page["Blocks"]


async def test_latency_with_jitter_never_below_base_latency(emulator, ebs1):
    sid, _ = await _one_block(ebs1)
    emulator.faults(latency_ms=100, latency_jitter_ms=50, operations=["ListSnapshotBlocks"])
    for _ in range(3):
        t0 = time.monotonic()
        await ebs1.list_snapshot_blocks(SnapshotId=sid)
        assert time.monotonic() - t0 >= 0.095


async def test_corruption_is_counted_in_stats(emulator, ebs1):
    sid, token = await _one_block(ebs1)
    emulator.reset_stats()
    emulator.faults(corrupt_rate=1.0, operations=["GetSnapshotBlock"])
    for _ in range(2):
        data, meta = await read_block(ebs1, sid, 0, token)
        assert checksum(data) != meta["Checksum"]
    assert sum(emulator.stats()["faults"].values()) >= 2
