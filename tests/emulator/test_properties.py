"""Property test: for random parent/child write sets and page sizes, listings and
ListChangedBlocks agree with a plain model of the documented semantics."""

from __future__ import annotations

import asyncio

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ._blocks import (
    BLOCK_SIZE,
    BLOCKS_PER_GIB,
    aws_client,
    changed_all,
    list_all,
    make_snapshot,
    read_block,
)


def _data(tag: int, index: int) -> bytes:
    # Cheap but distinct per (snapshot, index): the property is about indexes and tokens.
    return bytes([(tag * 7 + index) % 251 + 1]) * BLOCK_SIZE


parent_sets = st.sets(st.integers(0, BLOCKS_PER_GIB - 1), max_size=12)
child_sets = st.sets(st.integers(0, 2 * BLOCKS_PER_GIB - 1), max_size=12)


@settings(max_examples=6, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parent=parent_sets, child=child_sets, scan=st.sampled_from([16, 100, 700, 65536]),
       page=st.sampled_from([100, 1000]))
def test_listings_match_model(emulator, parent, child, scan, page):
    emulator.reset()
    emulator.config(throttling=False, page_scan_blocks=scan)

    async def run() -> None:
        async with aws_client("ebs", emulator.url) as ebs:
            p_blocks = {i: _data(1, i) for i in parent}
            c_blocks = {i: _data(2, i) for i in child}
            p = await make_snapshot(ebs, p_blocks)
            c = await make_snapshot(ebs, c_blocks, volume_size=2, ParentSnapshotId=p)
            listed, pages = await list_all(ebs, c, MaxResults=page)
            assert [b["BlockIndex"] for b in listed] == sorted(parent | child)
            assert all(len(x.get("Blocks", [])) <= page for x in pages)
            changed = await changed_all(ebs, c, p, MaxResults=page)
            assert [x["BlockIndex"] for x in changed] == sorted(child)
            for entry in changed:
                assert ("FirstBlockToken" in entry) == (entry["BlockIndex"] in parent)
                assert "SecondBlockToken" in entry
            view = {**p_blocks, **c_blocks}
            for entry in listed[:3] + listed[-2:]:
                data, _ = await read_block(ebs, c, entry["BlockIndex"], entry["BlockToken"])
                assert data == view[entry["BlockIndex"]]

    asyncio.run(run())
