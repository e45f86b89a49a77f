"""Volumes go into an archive and come back byte for byte: file, snapshot, new snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl
from tests.s3._support import (
    GIB,
    assert_file_is_volume,
    assert_same_volume,
    assert_volume_file,
    make_image,
    run,
)

LAYOUT = "HDDZHCDZ" + "H" * 60 + "DDT"  # holes, zeros, two windows, a partial tail


def dest(moto: str, bucket: str, prefix: str, **kw: Any) -> dict[str, Any]:
    return {"type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": moto, **kw}


def src(moto: str, bucket: str, prefix: str, **kw: Any) -> dict[str, Any]:
    return {"type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": moto, **kw}


async def test_file_to_s3_to_file_is_byte_identical(moto: str, bucket: str,
                                                    tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", LAYOUT, seed=1)
    put = await run({"source": {"type": "file", "path": str(tmp_path / "src.img")},
                     "destinations": [dest(moto, bucket, "vol/a")]})
    assert put["verb"] == "movetos3"
    record = put["destinations"][0]
    assert record["state"] == "completed"
    assert record["stored_blocks"] == 7  # D D C D | D D T: zeros and holes are not stored
    got = await run({"source": src(moto, bucket, "vol/a"),
                     "destinations": [{"type": "file", "path": str(tmp_path / "out.img")}]})
    assert got["verb"] == "getfroms3"
    assert got["byte_length"] == len(image)
    assert_volume_file(tmp_path / "out.img", image)


async def test_snapshot_to_s3_to_file_and_to_new_snapshot_are_byte_identical(
        emulator: EmulatorControl, ebs: Any, moto: str, bucket: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", LAYOUT, seed=2)
    up = await run({"source": {"type": "file", "path": str(tmp_path / "src.img")},
                    "destinations": [{"type": "ebs", "endpoint_url": emulator.url}]})
    snap = up["destinations"][0]["snapshot_id"]
    await run({"source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
               "destinations": [dest(moto, bucket, "snaps/one")]})
    await run({"source": src(moto, bucket, "snaps/one"),
               "destinations": [{"type": "file", "path": str(tmp_path / "out.img")}]})
    await assert_file_is_volume(tmp_path / "out.img", emulator, ebs, snap, GIB)
    assert_volume_file(tmp_path / "out.img", image)
    back = await run({"source": src(moto, bucket, "snaps/one"),
                      "destinations": [{"type": "ebs", "endpoint_url": emulator.url}]})
    new = back["destinations"][0]["snapshot_id"]
    assert new != snap
    await assert_same_volume(emulator, ebs, new, snap)
