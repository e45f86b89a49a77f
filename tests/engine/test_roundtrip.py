"""Upload → download round trips through the strict emulator are byte-exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from fspd.blocks import BLOCK_SIZE
from fspd.emulator.control import EmulatorControl
from tests.engine._support import (
    assert_matches_snapshot,
    assert_volume_file,
    download,
    make_image,
    run,
    upload,
)

SHAPES = {
    "data_only": "DDDD",
    "partial_tail": "DDDT",
    "holes_and_zeros": "DHHZDZHDT",
    "leading_hole": "HHHHDD",
    "all_zero": "ZZZ",
    "single_partial": "T",
}


@pytest.mark.parametrize("layout", SHAPES.values(), ids=list(SHAPES))
async def test_upload_then_download_is_byte_identical(
        emulator: EmulatorControl, tmp_path: Path, layout: str) -> None:
    image = make_image(tmp_path / "src.img", layout, seed=len(layout))
    snap = await upload(emulator.url, tmp_path / "src.img")
    # The snapshot reads exactly like the file (and zeros past its end).
    assert emulator.image(snap, length=len(image)) == image
    out = tmp_path / "out.img"
    await download(emulator.url, snap, out)
    assert_volume_file(out, image)


async def test_upload_records_original_length_and_sets_volume_size(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "DT")
    snap = await upload(emulator.url, tmp_path / "src.img")
    record = next(s for s in emulator.snapshots() if s["id"] == snap)
    assert record["volume_size"] == 1
    assert record["tags"]["fspd:byte-length"] == str(len(image))
    assert record["status"] == "completed"


async def test_unencrypted_upload_skips_zero_blocks_but_encrypted_writes_them(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "DZHD")
    plain = await upload(emulator.url, tmp_path / "src.img")
    enc = await upload(emulator.url, tmp_path / "src.img", encrypted=True)
    records = {s["id"]: s for s in emulator.snapshots()}
    assert records[plain]["written_count"] == 2
    assert records[enc]["written_count"] == 4  # zeros and holes written explicitly
    assert records[enc]["encrypted"] is True
    # An encrypted snapshot's unwritten blocks read as random bytes: the zero blocks must
    # therefore have been written, or the image would differ here.
    assert emulator.image(enc, length=len(image)) == image
    past_end = emulator.image(enc, offset=4 * BLOCK_SIZE, length=BLOCK_SIZE)
    assert past_end != bytes(BLOCK_SIZE)


async def test_download_overwrites_a_used_target_leaving_no_stale_byte(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "HDHZT")
    snap = await upload(emulator.url, tmp_path / "src.img")
    out = tmp_path / "used.img"
    out.write_bytes(b"\xa5" * (3 << 30 >> 8))  # garbage, and not the volume's size
    await download(emulator.url, snap, out)
    assert_volume_file(out, image)


async def test_download_of_a_synthetic_snapshot_matches_its_image(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.05, zero_fraction=0.2, seed=7)
    out = tmp_path / "out.img"
    result = await download(emulator.url, snap, out)
    assert_matches_snapshot(out, emulator, snap)
    listed = await run({"source": {"type": "ebs", "snapshot_id": snap,
                                   "endpoint_url": emulator.url}})
    assert result["blocks_done"] == listed["blocks"] > 0
