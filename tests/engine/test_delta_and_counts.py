"""deltadownload turns A into B exactly; list and diff count what the emulator holds."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from fspd.blocks import BLOCK_SIZE
from fspd.emulator.control import EmulatorControl
from tests.engine._support import (
    assert_matches_snapshot,
    download,
    make_image,
    run,
    upload,
)

B = BLOCK_SIZE


def _mutate(path: Path, seed: int) -> None:
    """Overwrite one block, zero another, append a new one past the old end."""
    rnd = random.Random(seed)
    with open(path, "r+b") as f:
        f.seek(1 * B)
        f.write(rnd.randbytes(B))
        f.seek(3 * B)
        f.write(bytes(B))
        f.seek(0, 2)
        f.write(rnd.randbytes(B // 2))


async def test_child_upload_writes_blocks_that_became_zero(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    make_image(src, "DDDDD", seed=1)
    parent = await upload(emulator.url, src)
    _mutate(src, seed=2)
    child = await upload(emulator.url, src, parent_snapshot_id=parent)
    # Block 3 is zero now; with a parent it must be written or the parent's bytes show.
    image = src.read_bytes()
    assert emulator.image(child, length=len(image)) == image
    assert emulator.image(child, offset=3 * B, length=B) == bytes(B)


async def test_deltadownload_turns_an_image_of_a_into_b(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    make_image(src, "DDHDDZD", seed=3)
    a = await upload(emulator.url, src)
    _mutate(src, seed=4)
    b = await upload(emulator.url, src, parent_snapshot_id=a)
    target = tmp_path / "target.img"
    await download(emulator.url, a, target)
    result = await run({"source": {"type": "ebs", "base_snapshot_id": a, "snapshot_id": b,
                                   "endpoint_url": emulator.url},
                        "destinations": [{"type": "file", "path": str(target),
                                          "mode": "in-place"}]})
    assert_matches_snapshot(target, emulator, b)
    assert result["verb"] == "deltadownload"
    # Exactly the blocks written in the child moved (an upload with a parent writes every
    # block, zeros included, so that no parent byte survives).
    child = next(s for s in emulator.snapshots() if s["id"] == b)
    assert result["blocks_done"] == child["written_count"] == 8


async def test_deltadownload_reads_from_the_second_snapshot_only(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    make_image(src, "DDDD", seed=5)
    a = await upload(emulator.url, src)
    _mutate(src, seed=6)
    b = await upload(emulator.url, src, parent_snapshot_id=a)
    target = tmp_path / "target.img"
    await download(emulator.url, a, target)
    emulator.reset_stats()
    await run({"source": {"type": "ebs", "base_snapshot_id": a, "snapshot_id": b,
                          "endpoint_url": emulator.url},
               "destinations": [{"type": "file", "path": str(target), "mode": "in-place"}]})
    by_snapshot = emulator.stats()["by_snapshot"]
    assert by_snapshot.get(a, {}).get("GetSnapshotBlock", 0) == 0
    child = next(s for s in emulator.snapshots() if s["id"] == b)
    assert by_snapshot[b]["GetSnapshotBlock"] == child["written_count"]


async def test_list_and_diff_count_exactly_what_the_emulator_holds(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    make_image(src, "DHDZDD", seed=7)
    a = await upload(emulator.url, src)
    _mutate(src, seed=8)
    b = await upload(emulator.url, src, parent_snapshot_id=a)
    records = {s["id"]: s for s in emulator.snapshots()}
    listed = await run({"source": {"type": "ebs", "snapshot_id": a,
                                   "endpoint_url": emulator.url}})
    assert listed["verb"] == "list"
    assert listed["blocks"] == records[a]["written_count"] == 4
    assert listed["volume_size"] == 1 << 30
    diff = await run({"source": {"type": "ebs", "base_snapshot_id": a, "snapshot_id": b,
                                 "endpoint_url": emulator.url}})
    assert diff["verb"] == "diff"
    assert diff["blocks"] == records[b]["written_count"] == 7


async def _count_with_plain_client(ebs: Any, snapshot_id: str) -> int:
    count, token = 0, None
    while True:
        kw = {"NextToken": token} if token else {}
        page = await ebs.list_snapshot_blocks(SnapshotId=snapshot_id, MaxResults=10000, **kw)
        count += len(page["Blocks"])
        token = page.get("NextToken")
        if not token:
            return count


async def test_list_of_a_large_sparse_synthetic_snapshot_walks_every_page(
        emulator: EmulatorControl, ebs: Any) -> None:
    # About paging, not quotas: the plain client below makes one attempt per call.
    emulator.config(page_scan_blocks=4096, throttling=False)
    snap = emulator.synthetic(region="us-east-1", volume_size=64, allocation="sparse",
                              density=0.01, seed=11)
    full = emulator.synthetic(region="us-east-1", volume_size=8, allocation="full", seed=12)
    sparse = await run({"source": {"type": "ebs", "snapshot_id": snap,
                                   "endpoint_url": emulator.url}})
    dense = await run({"source": {"type": "ebs", "snapshot_id": full,
                                  "endpoint_url": emulator.url}})
    assert sparse["blocks"] == await _count_with_plain_client(ebs, snap) > 0
    assert dense["blocks"] == 8 * 2048
