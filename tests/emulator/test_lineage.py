"""Parent/child snapshots: inheritance, ListChangedBlocks tokens, chains, unrelated snapshots."""

from __future__ import annotations

import pytest

from ._blocks import (
    BLOCKS_PER_GIB,
    block,
    changed_all,
    complete,
    expect_error,
    list_all,
    make_snapshot,
    put,
    read_block,
    tokens,
)

PARENT = {0: block("p0"), 1: block("p1"), 5: block("p5"), 100: block("p100")}
# Child (2 GiB): overwrite 1, add 7, and add 3000 beyond the parent's 1 GiB end.
CHILD = {1: block("c1"), 7: block("c7"), BLOCKS_PER_GIB + 952: block("c3000")}
GRANDCHILD = {2: block("g2"), 5: block("g5")}


async def _family(ebs):
    parent = await make_snapshot(ebs, PARENT)
    child = await make_snapshot(ebs, CHILD, volume_size=2, ParentSnapshotId=parent)
    return parent, child


def _view(*layers: dict[int, bytes]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for layer in layers:
        out.update(layer)
    return out


async def test_start_snapshot_echoes_parent_id(ebs):
    parent = await make_snapshot(ebs, PARENT)
    resp = await ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)
    assert resp["ParentSnapshotId"] == parent


async def test_child_lists_inherited_and_own_blocks(ebs):
    _, child = await _family(ebs)
    listed, pages = await list_all(ebs, child)
    assert [b["BlockIndex"] for b in listed] == sorted(_view(PARENT, CHILD))
    assert pages[0]["VolumeSize"] == 2


async def test_child_reads_parent_data_for_inherited_blocks_and_own_for_overwritten(ebs):
    _, child = await _family(ebs)
    expect = _view(PARENT, CHILD)
    toks = await tokens(ebs, child)
    for index, token in toks.items():
        data, _ = await read_block(ebs, child, index, token)
        assert data == expect[index], index


async def test_parent_is_unchanged_by_child(ebs):
    parent, _ = await _family(ebs)
    toks = await tokens(ebs, parent)
    assert sorted(toks) == sorted(PARENT)
    data, _ = await read_block(ebs, parent, 1, toks[1])
    assert data == PARENT[1]


async def test_changed_blocks_parent_to_child_is_exactly_the_written_set(ebs):
    parent, child = await _family(ebs)
    changed = await changed_all(ebs, child, parent)
    assert [c["BlockIndex"] for c in changed] == sorted(CHILD)
    for entry in changed:
        index = entry["BlockIndex"]
        # FirstBlockToken iff the block exists in the parent; SecondBlockToken iff in child.
        assert ("FirstBlockToken" in entry) == (index in PARENT), entry
        assert "SecondBlockToken" in entry, entry


async def test_changed_blocks_tokens_read_the_right_snapshot(ebs):
    parent, child = await _family(ebs)
    changed = {c["BlockIndex"]: c for c in await changed_all(ebs, child, parent)}
    old, _ = await read_block(ebs, parent, 1, changed[1]["FirstBlockToken"])
    assert old == PARENT[1]
    for index, entry in changed.items():
        new, _ = await read_block(ebs, child, index, entry["SecondBlockToken"])
        assert new == CHILD[index]


async def test_changed_blocks_response_shape(ebs):
    parent, child = await _family(ebs)
    page = await ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child)
    assert page["BlockSize"] == 524288
    assert page["VolumeSize"] == 2
    assert page["ExpiryTime"]


async def test_changed_blocks_without_first_returns_all_of_second(ebs):
    _, child = await _family(ebs)
    changed = await changed_all(ebs, child)
    assert [c["BlockIndex"] for c in changed] == sorted(_view(PARENT, CHILD))
    for entry in changed:
        assert "SecondBlockToken" in entry
        assert "FirstBlockToken" not in entry


async def test_changed_blocks_paginates_with_max_results_and_starting_index(ebs):
    parent = await make_snapshot(ebs, {i: block(("cp", i)) for i in range(10)})
    shared = block("cc")
    child_blocks = {i: shared for i in range(0, 420, 2)}  # 210 changed
    child = await make_snapshot(ebs, child_blocks, ParentSnapshotId=parent)
    token = None
    seen: list[int] = []
    pages = 0
    while True:
        kwargs = {"NextToken": token} if token else {}
        page = await ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child,
                                             MaxResults=100, **kwargs)
        pages += 1
        assert len(page["ChangedBlocks"]) <= 100
        seen += [c["BlockIndex"] for c in page["ChangedBlocks"]]
        token = page.get("NextToken")
        if not token:
            break
    assert seen == sorted(child_blocks)
    assert pages >= 3
    tail = await changed_all(ebs, child, parent, StartingBlockIndex=401)
    assert [c["BlockIndex"] for c in tail] == [i for i in sorted(child_blocks) if i >= 401]


async def test_grandchild_inherits_through_the_chain(ebs):
    _parent, child = await _family(ebs)
    grand = await make_snapshot(ebs, GRANDCHILD, volume_size=2, ParentSnapshotId=child)
    expect = _view(PARENT, CHILD, GRANDCHILD)
    toks = await tokens(ebs, grand)
    assert sorted(toks) == sorted(expect)
    for index in (0, 1, 2, 5, 7, 100):
        data, _ = await read_block(ebs, grand, index, toks[index])
        assert data == expect[index], index


async def test_changed_blocks_across_two_generations(ebs):
    parent, child = await _family(ebs)
    grand = await make_snapshot(ebs, GRANDCHILD, volume_size=2, ParentSnapshotId=child)
    changed = await changed_all(ebs, grand, parent)
    assert [c["BlockIndex"] for c in changed] == sorted(set(CHILD) | set(GRANDCHILD))
    for entry in changed:
        assert ("FirstBlockToken" in entry) == (entry["BlockIndex"] in PARENT), entry
        assert "SecondBlockToken" in entry
    one_gen = await changed_all(ebs, grand, child)
    assert [c["BlockIndex"] for c in one_gen] == sorted(GRANDCHILD)
    by_index = {c["BlockIndex"]: c for c in one_gen}
    # Block 5 exists in the child (inherited from the parent); block 2 exists nowhere before.
    assert "FirstBlockToken" in by_index[5]
    assert "FirstBlockToken" not in by_index[2]
    old5, _ = await read_block(ebs, child, 5, by_index[5]["FirstBlockToken"])
    assert old5 == PARENT[5]


async def test_siblings_missing_block_has_no_second_token(ebs):
    # Two children of one parent share a lineage; a block only the first sibling wrote is
    # "changed" and does not exist in the second: no SecondBlockToken.
    parent = await make_snapshot(ebs, PARENT)
    a = await make_snapshot(ebs, {9: block("a9")}, ParentSnapshotId=parent)
    b = await make_snapshot(ebs, {1: block("b1")}, ParentSnapshotId=parent)
    changed = {c["BlockIndex"]: c for c in await changed_all(ebs, b, a)}
    assert sorted(changed) == [1, 9]
    assert "FirstBlockToken" in changed[9] and "SecondBlockToken" not in changed[9]
    assert "FirstBlockToken" in changed[1] and "SecondBlockToken" in changed[1]


async def test_unrelated_snapshots_are_rejected(ebs):
    a = await make_snapshot(ebs, {0: block("ua")})
    b = await make_snapshot(ebs, {0: block("ub")})
    await expect_error(ebs.list_changed_blocks(FirstSnapshotId=a, SecondSnapshotId=b),
                       "ValidationException", 400, "UNRELATED_SNAPSHOTS")


async def test_child_linear_checksum_covers_only_its_own_writes(ebs):
    parent = await make_snapshot(ebs, PARENT)
    sid = (await ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent))["SnapshotId"]
    await put(ebs, sid, 7, block("own7"))
    # Including inherited blocks in count/aggregate is wrong...
    await expect_error(complete(ebs, sid, _view(PARENT, {7: block("own7")})),
                       "ValidationException", 400)


async def test_child_completes_with_count_and_checksum_of_own_writes(ebs):
    parent = await make_snapshot(ebs, PARENT)
    sid = (await ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent))["SnapshotId"]
    await put(ebs, sid, 7, block("own7"))
    assert (await complete(ebs, sid, {7: block("own7")}))["Status"] == "completed"


async def test_unknown_parent_is_rejected(ebs):
    from botocore.exceptions import ClientError
    try:
        await ebs.start_snapshot(VolumeSize=1, ParentSnapshotId="snap-0000000000000000f")
    except ClientError as err:
        status = err.response["ResponseMetadata"]["HTTPStatusCode"]
        assert status in (400, 404), err.response
        assert err.response["Error"]["Code"] in ("ValidationException",
                                                 "ResourceNotFoundException")
    else:
        raise AssertionError("StartSnapshot accepted a parent that does not exist")


async def test_first_block_token_does_not_read_the_second_snapshot(ebs):
    parent, child = await _family(ebs)
    changed = {c["BlockIndex"]: c for c in await changed_all(ebs, child, parent)}
    await expect_error(ebs.get_snapshot_block(SnapshotId=child, BlockIndex=1,
                                              BlockToken=changed[1]["FirstBlockToken"]),
                       "ValidationException", 400, "INVALID_BLOCK_TOKEN")


@pytest.mark.parametrize("max_results", [99, 10001])
async def test_changed_blocks_max_results_out_of_range_is_rejected(raw_ebs, max_results):
    parent = await make_snapshot(raw_ebs, {0: block("mr0")})
    child = await make_snapshot(raw_ebs, {1: block("mr1")}, ParentSnapshotId=parent)
    await expect_error(raw_ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child,
                                                   MaxResults=max_results),
                       "ValidationException", 400)


async def test_changed_blocks_garbage_page_token_is_invalid_page_token(ebs):
    parent, child = await _family(ebs)
    await expect_error(ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child,
                                               NextToken="Z2FyYmFnZQ=="),
                       "ValidationException", 400, "INVALID_PAGE_TOKEN")


async def test_changed_blocks_next_token_overrides_starting_block_index(emulator, ebs):
    parent = emulator.synthetic(volume_size=1, allocation="sparse", density=0.0, seed=30)
    child = emulator.synthetic(volume_size=1, allocation="full", seed=31,
                               parent_snapshot_id=parent)
    first = await ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child,
                                          MaxResults=100)
    assert [c["BlockIndex"] for c in first["ChangedBlocks"]] == list(range(100))
    second = await ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child,
                                           MaxResults=100, NextToken=first["NextToken"],
                                           StartingBlockIndex=1500)
    assert [c["BlockIndex"] for c in second["ChangedBlocks"]] == list(range(100, 200))
