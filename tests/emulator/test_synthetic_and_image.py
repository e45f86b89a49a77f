"""Synthetic snapshots (full, sparse, huge) and image(): what a restored volume reads."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl, EmulatorProcess

from ._blocks import (
    BLOCK_SIZE,
    BLOCKS_PER_GIB,
    ZERO_BLOCK,
    ZERO_BLOCK_CHECKSUM,
    aws_client,
    block,
    changed_all,
    checksum,
    list_all,
    make_snapshot,
    read_block,
)

COUNT_KEYS = ("blocks", "block_count", "allocated", "allocated_blocks", "nblocks_allocated",
              "BlockCount", "allocated_count")


def _record(emulator, sid: str, region: str = "us-east-1") -> dict:
    for entry in emulator.snapshots(region=region):
        if sid in (entry.get("SnapshotId"), entry.get("snapshot_id"), entry.get("id")):
            return entry
    raise AssertionError(f"{sid} not in emulator.snapshots({region!r})")


async def test_full_synthetic_lists_every_block(emulator, ebs):
    sid = emulator.synthetic(volume_size=1, allocation="full", seed=1)
    listed, pages = await list_all(ebs, sid, MaxResults=1000)
    assert [b["BlockIndex"] for b in listed] == list(range(BLOCKS_PER_GIB))
    assert pages[0]["VolumeSize"] == 1


async def test_sparse_synthetic_with_density_one_lists_every_block(emulator, ebs):
    sid = emulator.synthetic(volume_size=1, allocation="sparse", density=1.0, seed=2)
    listed, _ = await list_all(ebs, sid, MaxResults=10000)
    assert len(listed) == BLOCKS_PER_GIB


async def test_sparse_synthetic_walk_matches_record_and_blocks_verify(emulator, ebs):
    emulator.config(page_scan_blocks=128)
    sid = emulator.synthetic(volume_size=1, allocation="sparse", density=0.03, seed=3)
    listed, _pages = await list_all(ebs, sid, MaxResults=100)
    got = [b["BlockIndex"] for b in listed]
    assert got == sorted(set(got))
    assert 10 < len(got) < 200  # ~61 expected at density 0.03 over 2048 blocks
    record = _record(emulator, sid)
    counts = [record[k] for k in COUNT_KEYS if isinstance(record.get(k), int)]
    if counts:
        assert counts[0] == len(got)
    for entry in listed:
        data, meta = await read_block(ebs, sid, entry["BlockIndex"], entry["BlockToken"])
        assert len(data) == BLOCK_SIZE
        assert checksum(data) == meta["Checksum"], entry["BlockIndex"]


async def test_synthetic_same_seed_same_contents(emulator, ebs):
    a = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=77)
    b = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=77)
    c = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=78)
    la, _ = await list_all(ebs, a, MaxResults=10000)
    lb, _ = await list_all(ebs, b, MaxResults=10000)
    lc, _ = await list_all(ebs, c, MaxResults=10000)
    ia = [x["BlockIndex"] for x in la]
    assert ia == [x["BlockIndex"] for x in lb]
    assert ia != [x["BlockIndex"] for x in lc]
    for xa, xb in list(zip(la, lb, strict=True))[:5]:
        da, _ = await read_block(ebs, a, xa["BlockIndex"], xa["BlockToken"])
        db, _ = await read_block(ebs, b, xb["BlockIndex"], xb["BlockToken"])
        assert da == db


async def test_zero_fraction_one_gives_zero_blocks(emulator, ebs):
    sid = emulator.synthetic(volume_size=1, allocation="full", zero_fraction=1.0, seed=4)
    page = await ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100)
    for entry in page["Blocks"][:5]:
        data, meta = await read_block(ebs, sid, entry["BlockIndex"], entry["BlockToken"])
        assert data == ZERO_BLOCK
        assert meta["Checksum"] == ZERO_BLOCK_CHECKSUM


async def test_zero_fraction_zero_gives_non_zero_blocks(emulator, ebs):
    sid = emulator.synthetic(volume_size=1, allocation="full", zero_fraction=0.0, seed=5)
    page = await ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=100)
    for entry in page["Blocks"][:5]:
        data, _ = await read_block(ebs, sid, entry["BlockIndex"], entry["BlockToken"])
        assert data != ZERO_BLOCK


async def test_synthetic_metadata_is_described(emulator, ec2):
    sid = emulator.synthetic(volume_size=2, allocation="sparse", density=0.01, seed=6,
                             description="synthetic one", tags={"Name": "syn"})
    snap = (await ec2.describe_snapshots(SnapshotIds=[sid]))["Snapshots"][0]
    assert snap["State"] == "completed"
    assert snap["VolumeSize"] == 2
    assert snap["Description"] == "synthetic one"
    assert {t["Key"]: t["Value"] for t in snap["Tags"]} == {"Name": "syn"}
    assert snap["Encrypted"] is False


async def test_synthetic_in_another_region(emulator):
    sid = emulator.synthetic(region="eu-west-1", volume_size=1, allocation="sparse",
                             density=0.01, seed=7)
    async with aws_client("ec2", emulator.url, region="eu-west-1") as eu:
        snaps = (await eu.describe_snapshots(SnapshotIds=[sid]))["Snapshots"]
    assert [s["SnapshotId"] for s in snaps] == [sid]
    assert emulator.snapshots(region="us-east-1") == []
    async with aws_client("ebs", emulator.url, region="eu-west-1") as eu_ebs:
        listed, _ = await list_all(eu_ebs, sid)
        first = listed[0]
        data, _ = await read_block(eu_ebs, sid, first["BlockIndex"], first["BlockToken"])
    img = emulator.image(sid, region="eu-west-1", offset=first["BlockIndex"] * BLOCK_SIZE,
                         length=BLOCK_SIZE)
    assert img == data


async def test_synthetic_child_has_lineage_with_parent(emulator, ebs):
    parent = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=8)
    child = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=9,
                               parent_snapshot_id=parent)
    changed = await changed_all(ebs, child, parent)
    parent_set = {b["BlockIndex"] for b in (await list_all(ebs, parent))[0]}
    child_set = {b["BlockIndex"] for b in (await list_all(ebs, child))[0]}
    assert parent_set <= child_set
    assert {c["BlockIndex"] for c in changed} <= child_set
    assert changed
    for entry in changed[:5]:
        data, meta = await read_block(ebs, child, entry["BlockIndex"], entry["SecondBlockToken"])
        assert checksum(data) == meta["Checksum"]


# --- image() ---------------------------------------------------------------------------------

async def test_image_of_unencrypted_snapshot_has_zeros_where_unwritten(emulator, ebs):
    sid = await make_snapshot(ebs, {1: block("i1"), 3: block("i3")})
    img = emulator.image(sid, offset=0, length=5 * BLOCK_SIZE)
    assert len(img) == 5 * BLOCK_SIZE
    chunks = [img[i * BLOCK_SIZE:(i + 1) * BLOCK_SIZE] for i in range(5)]
    assert chunks[0] == ZERO_BLOCK
    assert chunks[1] == block("i1")
    assert chunks[2] == ZERO_BLOCK
    assert chunks[3] == block("i3")
    assert chunks[4] == ZERO_BLOCK


async def test_image_offset_and_length_inside_a_block(emulator, ebs):
    sid = await make_snapshot(ebs, {2: block("i2")})
    img = emulator.image(sid, offset=2 * BLOCK_SIZE + 100, length=1000)
    assert img == block("i2")[100:1100]


async def test_image_of_child_shows_inherited_blocks(emulator, ebs):
    parent = await make_snapshot(ebs, {0: block("ip0"), 1: block("ip1")})
    child = await make_snapshot(ebs, {1: block("ic1")}, ParentSnapshotId=parent)
    img = emulator.image(child, offset=0, length=3 * BLOCK_SIZE)
    assert img[:BLOCK_SIZE] == block("ip0")
    assert img[BLOCK_SIZE:2 * BLOCK_SIZE] == block("ic1")
    assert img[2 * BLOCK_SIZE:] == ZERO_BLOCK


async def test_image_of_encrypted_snapshot_has_random_bytes_where_unwritten(emulator, ebs):
    sid = await make_snapshot(ebs, {1: block("e1")}, Encrypted=True)
    img = emulator.image(sid, offset=0, length=3 * BLOCK_SIZE)
    assert img[BLOCK_SIZE:2 * BLOCK_SIZE] == block("e1")
    for unwritten in (img[:BLOCK_SIZE], img[2 * BLOCK_SIZE:]):
        assert unwritten != ZERO_BLOCK
        # Random, not a fill pattern: many distinct byte values.
        assert len(set(unwritten[:4096])) > 200


async def test_image_of_encrypted_synthetic_has_random_unwritten_blocks(emulator, ebs):
    sid = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=10,
                             encrypted=True)
    allocated = {b["BlockIndex"] for b in (await list_all(ebs, sid))[0]}
    hole = next(i for i in range(BLOCKS_PER_GIB) if i not in allocated)
    img = emulator.image(sid, offset=hole * BLOCK_SIZE, length=BLOCK_SIZE)
    assert img != ZERO_BLOCK
    assert len(set(img[:4096])) > 200


async def test_image_of_unencrypted_synthetic_matches_listed_blocks(emulator, ebs):
    sid = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=12)
    listed = (await list_all(ebs, sid))[0]
    allocated = {b["BlockIndex"]: b["BlockToken"] for b in listed}
    hole = next(i for i in range(BLOCKS_PER_GIB) if i not in allocated)
    assert emulator.image(sid, offset=hole * BLOCK_SIZE, length=BLOCK_SIZE) == ZERO_BLOCK
    first = min(allocated)
    data, _ = await read_block(ebs, sid, first, allocated[first])
    assert emulator.image(sid, offset=first * BLOCK_SIZE, length=BLOCK_SIZE) == data


# --- huge synthetic snapshot on its own process (to measure its data dir) ---------------------

@pytest.fixture(scope="module")
def huge_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorControl,
                                                                              Path]]:
    data_dir = tmp_path_factory.mktemp("emulator-huge")
    proc = EmulatorProcess(data_dir=data_dir)
    proc.start()
    try:
        yield EmulatorControl(proc.url), data_dir
    finally:
        proc.stop()


def _du(path: Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


async def test_16_tib_synthetic_lists_quickly_and_costs_no_disk(huge_emulator):
    control, data_dir = huge_emulator
    control.reset()
    sid = control.synthetic(volume_size=16384, allocation="full", seed=13)
    nblocks = 16384 * BLOCKS_PER_GIB
    async with aws_client("ebs", control.url) as ebs:
        t0 = time.monotonic()
        token = None
        seen = 0
        for _ in range(3):
            kwargs = {"NextToken": token} if token else {}
            page = await ebs.list_snapshot_blocks(SnapshotId=sid, MaxResults=10000, **kwargs)
            assert [b["BlockIndex"] for b in page["Blocks"]] == list(range(seen, seen + 10000))
            seen += 10000
            token = page["NextToken"]
        assert time.monotonic() - t0 < 10
        assert page["VolumeSize"] == 16384
        tail = await ebs.list_snapshot_blocks(SnapshotId=sid, StartingBlockIndex=nblocks - 2)
        assert [b["BlockIndex"] for b in tail["Blocks"]] == [nblocks - 2, nblocks - 1]
        assert not tail.get("NextToken")
        last = tail["Blocks"][-1]
        data, meta = await read_block(ebs, sid, last["BlockIndex"], last["BlockToken"])
        assert checksum(data) == meta["Checksum"]
    assert _du(data_dir) < 64 * 1024 * 1024
