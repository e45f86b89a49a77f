"""ListSnapshotBlocks pagination, page tokens and block tokens, GetSnapshotBlock checks."""

from __future__ import annotations

import asyncio

import pytest

from ._blocks import (
    BLOCKS_PER_GIB,
    block,
    expect_error,
    list_all,
    make_snapshot,
    read_block,
    tokens,
)

UNKNOWN = "snap-0123456789abcdef0"


async def _snapshot_of(ebs, indexes, same: bool = False) -> tuple[str, dict[int, bytes]]:
    shared = block("L-shared")
    written = {i: shared if same else block(("L", i)) for i in indexes}
    return await make_snapshot(ebs, written), written


async def test_max_results_honoured_and_pages_unique_ascending(ebs):
    indexes = list(range(0, 2 * 210, 2))  # 210 blocks
    sid, _ = await _snapshot_of(ebs, indexes, same=True)
    listed, pages = await list_all(ebs, sid, MaxResults=100)
    assert all(len(p["Blocks"]) <= 100 for p in pages)
    assert len(pages) >= 3
    got = [b["BlockIndex"] for b in listed]
    assert got == indexes  # unique, ascending, complete
    assert pages[-1].get("NextToken") is None
    assert all(p.get("NextToken") for p in pages[:-1])


async def test_starting_block_index_starts_at_or_after_it(ebs):
    sid, _ = await _snapshot_of(ebs, [1, 5, 9, 700])
    page = await ebs.list_snapshot_blocks(SnapshotId=sid, StartingBlockIndex=5)
    assert [b["BlockIndex"] for b in page["Blocks"]][:3] == [5, 9, 700]
    listed, _ = await list_all(ebs, sid, StartingBlockIndex=6)
    assert [b["BlockIndex"] for b in listed] == [9, 700]
    listed, _ = await list_all(ebs, sid, StartingBlockIndex=701)
    assert listed == []


async def test_next_token_overrides_starting_block_index(emulator, ebs):
    indexes = list(range(BLOCKS_PER_GIB))
    sid = emulator.synthetic(volume_size=1, allocation="full", seed=21)
    first = await ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100)
    token = first["NextToken"]
    assert token
    last_seen = first["Blocks"][-1]["BlockIndex"]
    # A StartingBlockIndex of 0 alongside the token must be ignored.
    second = await ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100, NextToken=token,
                                            StartingBlockIndex=0)
    got = [b["BlockIndex"] for b in second["Blocks"]]
    assert got, "the second page should continue after the first"
    assert got[0] > last_seen
    seen = [b["BlockIndex"] for b in first["Blocks"]] + got
    tok = second.get("NextToken")
    while tok:
        page = await ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=1000, NextToken=tok,
                                              StartingBlockIndex=2000)
        seen += [b["BlockIndex"] for b in page["Blocks"]]
        tok = page.get("NextToken")
    assert seen == indexes


async def test_sparse_volume_walk_has_empty_pages_with_next_token(emulator, ebs):
    emulator.config(page_scan_blocks=64)
    # Two blocks far apart on a 1 GiB volume: the scan between them needs several pages.
    sid, _ = await _snapshot_of(ebs, [3, 2000])
    listed, pages = await list_all(ebs, sid, MaxResults=100)
    assert [b["BlockIndex"] for b in listed] == [3, 2000]
    empty_with_token = [p for p in pages if not p.get("Blocks") and p.get("NextToken")]
    assert empty_with_token, "a sparse scan must yield empty pages that still carry NextToken"
    assert len(pages) >= BLOCKS_PER_GIB // 64 // 2


async def test_sparse_synthetic_walk_has_empty_pages_and_returns_allocated_set(emulator, ebs):
    emulator.config(page_scan_blocks=16)
    sid = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=11)
    listed, pages = await list_all(ebs, sid, MaxResults=100)
    got = [b["BlockIndex"] for b in listed]
    assert got == sorted(set(got))
    assert 3 <= len(got) <= 60  # ~20 expected at density 0.01 over 2048 blocks
    assert got[-1] < BLOCKS_PER_GIB
    assert any(not p.get("Blocks") and p.get("NextToken") for p in pages), \
        "a sparse scan in 16-block windows must yield empty pages that carry NextToken"
    assert all(len(p.get("Blocks", [])) <= 16 for p in pages)
    # The same set comes back however it is paged.
    again, _ = await list_all(ebs, sid, MaxResults=10000)
    assert [b["BlockIndex"] for b in again] == got
    emulator.config(page_scan_blocks=65536)
    whole, whole_pages = await list_all(ebs, sid, MaxResults=10000)
    assert [b["BlockIndex"] for b in whole] == got
    assert len(whole_pages) == 1


async def test_max_results_below_100_is_rejected(raw_ebs):
    sid, _ = await _snapshot_of(raw_ebs, [0])
    await expect_error(raw_ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=99),
                       "ValidationException", 400)


async def test_max_results_above_10000_is_rejected(ebs):
    sid, _ = await _snapshot_of(ebs, [0])
    await expect_error(ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=10001),
                       "ValidationException", 400)


async def test_max_results_bounds_100_and_10000_accepted(ebs):
    sid, _ = await _snapshot_of(ebs, [0])
    for n in (100, 10000):
        page = await ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=n)
        assert [b["BlockIndex"] for b in page["Blocks"]] == [0]


async def test_garbage_page_token_is_invalid_page_token(ebs):
    sid, _ = await _snapshot_of(ebs, [0])
    await expect_error(ebs.list_snapshot_blocks(SnapshotId=sid, NextToken="Z2FyYmFnZQ=="),
                       "ValidationException", 400, "INVALID_PAGE_TOKEN")


async def test_expired_page_token_is_invalid_page_token(emulator, ebs):
    sid = emulator.synthetic(volume_size=1, allocation="full", seed=22)
    emulator.config(page_token_ttl=0.3)
    first = await ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100)
    await asyncio.sleep(0.45)
    await expect_error(ebs.list_snapshot_blocks(SnapshotId=sid, NextToken=first["NextToken"]),
                       "ValidationException", 400, "INVALID_PAGE_TOKEN")


async def test_list_unknown_snapshot_is_404_never_500(ebs):
    await expect_error(ebs.list_snapshot_blocks(SnapshotId=UNKNOWN),
                       "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")


async def test_get_unknown_snapshot_is_404_never_500(ebs):
    sid, _ = await _snapshot_of(ebs, [0])
    token = (await tokens(ebs, sid))[0]
    await expect_error(ebs.get_snapshot_block(SnapshotId=UNKNOWN, BlockIndex=0, BlockToken=token),
                       "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")


async def test_changed_blocks_unknown_snapshot_is_404(ebs):
    sid, _ = await _snapshot_of(ebs, [0])
    await expect_error(ebs.list_changed_blocks(SecondSnapshotId=UNKNOWN),
                       "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")
    await expect_error(ebs.list_changed_blocks(FirstSnapshotId=UNKNOWN, SecondSnapshotId=sid),
                       "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")


async def test_malformed_snapshot_id_is_never_500(ebs):
    from botocore.exceptions import ClientError
    try:
        await ebs.list_snapshot_blocks(SnapshotId="not-a-snapshot")
    except ClientError as err:
        status = err.response["ResponseMetadata"]["HTTPStatusCode"]
        assert status in (400, 404), err.response
    else:
        raise AssertionError("a malformed snapshot id was accepted")


async def test_garbage_block_token_is_invalid_block_token(ebs):
    sid, _ = await _snapshot_of(ebs, [0])
    await expect_error(ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0,
                                              BlockToken="AAAAbm90LWEtdG9rZW4="),
                       "ValidationException", 400, "INVALID_BLOCK_TOKEN")


async def test_block_token_of_another_block_is_rejected(ebs):
    sid, _ = await _snapshot_of(ebs, [0, 1])
    toks = await tokens(ebs, sid)
    await expect_error(ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=1, BlockToken=toks[0]),
                       "ValidationException", 400, "INVALID_BLOCK_TOKEN")


async def test_block_token_of_another_snapshot_is_rejected(ebs):
    a, _ = await _snapshot_of(ebs, [0])
    b, _ = await _snapshot_of(ebs, [0])
    tok_a = (await tokens(ebs, a))[0]
    await expect_error(ebs.get_snapshot_block(SnapshotId=b, BlockIndex=0, BlockToken=tok_a),
                       "ValidationException", 400, "INVALID_BLOCK_TOKEN")


async def test_expired_block_token_is_rejected_and_relisting_works(emulator, ebs):
    emulator.config(block_token_ttl=0.3)
    sid, written = await _snapshot_of(ebs, [0])
    page = await ebs.list_snapshot_blocks(SnapshotId=sid)
    expiry = page["ExpiryTime"]
    import datetime as dt
    assert expiry <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30)
    token = page["Blocks"][0]["BlockToken"]
    await asyncio.sleep(0.45)
    await expect_error(ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockToken=token),
                       "ValidationException", 400, "INVALID_BLOCK_TOKEN")
    emulator.config(block_token_ttl=3600)
    fresh = (await tokens(ebs, sid))[0]
    data, _ = await read_block(ebs, sid, 0, fresh)
    assert data == written[0]


async def test_default_block_token_expiry_is_about_seven_days(ebs):
    import datetime as dt
    sid, _ = await _snapshot_of(ebs, [0])
    page = await ebs.list_snapshot_blocks(SnapshotId=sid)
    left = page["ExpiryTime"] - dt.datetime.now(dt.UTC)
    assert dt.timedelta(days=6) < left <= dt.timedelta(days=7, minutes=5)


async def test_get_unlisted_block_index_is_rejected(ebs):
    sid, _ = await _snapshot_of(ebs, [0])
    tok = (await tokens(ebs, sid))[0]
    from ._blocks import VALIDATION_REASONS
    await expect_error(ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=5, BlockToken=tok),
                       "ValidationException", 400, VALIDATION_REASONS)


async def test_page_token_of_another_snapshot_is_rejected(emulator, ebs):
    a = emulator.synthetic(volume_size=1, allocation="full", seed=23)
    b = emulator.synthetic(volume_size=1, allocation="full", seed=24)
    token = (await ebs.list_snapshot_blocks(SnapshotId=a, MaxResults=100))["NextToken"]
    await expect_error(ebs.list_snapshot_blocks(SnapshotId=b, NextToken=token),
                       "ValidationException", 400, "INVALID_PAGE_TOKEN")


async def test_get_index_past_volume_end_is_rejected(ebs):
    sid, _ = await _snapshot_of(ebs, [0])
    tok = (await tokens(ebs, sid))[0]
    from ._blocks import VALIDATION_REASONS
    await expect_error(ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=BLOCKS_PER_GIB,
                                              BlockToken=tok),
                       "ValidationException", 400, VALIDATION_REASONS)


async def test_encrypted_snapshot_round_trips_written_blocks(ebs):
    written = {0: block("enc0"), 9: block("enc9")}
    sid = await make_snapshot(ebs, written, Encrypted=True)
    listed, _ = await list_all(ebs, sid)
    assert [b["BlockIndex"] for b in listed] == [0, 9]
    for entry in listed:
        data, _ = await read_block(ebs, sid, entry["BlockIndex"], entry["BlockToken"])
        assert data == written[entry["BlockIndex"]]


TTL = 0.85


async def _list_just_after_a_whole_second(emulator, ebs, sid: str, **kwargs) -> dict:
    """ListSnapshotBlocks served within 0.15 s after a whole second (server clock, read back
    from ExpiryTime = now + block_token_ttl), with block and page token lifetimes of TTL."""
    import time
    emulator.config(block_token_ttl=TTL, page_token_ttl=TTL)
    for _ in range(8):
        await asyncio.sleep((1.05 - time.time() % 1.0) % 1.0)
        page = await ebs.list_snapshot_blocks(SnapshotId=sid, **kwargs)
        served = page["ExpiryTime"].timestamp() - TTL
        if served % 1.0 < 0.15:
            return page
    pytest.skip("could not hit the sub-second window on a loaded machine")


async def test_block_token_is_valid_until_its_expiry_time(emulator, ebs):
    # ExpiryTime is "the time when the BlockToken expires": a token used before then must
    # work. Listed just after a whole second with a 0.85 s lifetime, the token must not be
    # treated as expiring at that whole second (an expiry truncated to seconds would do that).
    import datetime as dt
    sid, written = await _snapshot_of(ebs, [0])
    page = await _list_just_after_a_whole_second(emulator, ebs, sid)
    data, _ = await read_block(ebs, sid, 0, page["Blocks"][0]["BlockToken"])
    assert dt.datetime.now(dt.UTC) < page["ExpiryTime"], "test too slow to be meaningful"
    assert data == written[0]


async def test_page_token_is_valid_for_its_whole_lifetime(emulator, ebs):
    # A page token issued just after a whole second with a 0.85 s lifetime is used at once:
    # it must still be valid (a lifetime truncated to whole seconds would already have ended).
    import time
    sid = emulator.synthetic(volume_size=1, allocation="full", seed=25)
    first = await _list_just_after_a_whole_second(emulator, ebs, sid, MaxResults=100)
    t0 = time.monotonic()
    second = await ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100,
                                            NextToken=first["NextToken"])
    assert time.monotonic() - t0 < TTL, "test too slow to be meaningful"
    assert second["Blocks"][0]["BlockIndex"] == 100
