"""Volumes go into an archive and come back byte for byte: file, snapshot, new snapshot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl
from tests.s3._support import (
    GIB,
    B,
    assert_file_is_volume,
    assert_same_volume,
    assert_volume_file,
    make_image,
    run,
    written,
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


def test_cli_verbs_move_a_snapshot_to_s3_and_back_to_a_new_snapshot(
        emulator: EmulatorControl, moto: str, bucket: str, tmp_path: Path, fspd_cli: Any,
        capsys: Any, monkeypatch: Any) -> None:
    make_image(tmp_path / "src.img", LAYOUT, seed=3)
    assert fspd_cli("upload", str(tmp_path / "src.img"), "--endpoint-url", emulator.url,
                    "--json") == 0
    snap = json.loads(capsys.readouterr().out)["destinations"][0]["snapshot_id"]
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto)  # S3 endpoint as botocore reads it
    url = f"s3://{bucket}/cli/{snap}"
    assert fspd_cli("movetos3", snap, url, "--endpoint-url", emulator.url, "--json") == 0
    moved = json.loads(capsys.readouterr().out)
    assert (moved["verb"], moved["destinations"][0]["stored_blocks"]) == ("movetos3", 7)
    assert fspd_cli("getfroms3", url, "--dry-run", "--json") == 0
    planned = json.loads(capsys.readouterr().out)
    assert (planned["blocks"], planned["unlisted_blocks"]) == (7, 2048 - 7)
    assert fspd_cli("getfroms3", url, "--to-snapshot", "--endpoint-url", emulator.url,
                    "--json") == 0
    new = json.loads(capsys.readouterr().out)["destinations"][0]["snapshot_id"]
    length = len(LAYOUT) * B
    assert emulator.image(new, length=length) == emulator.image(snap, length=length)
    assert written(emulator, new) == written(emulator, snap) == 7
    assert fspd_cli("getfroms3", url, str(tmp_path / "x.img"), "--to-snapshot") == 2
    assert "DEST" in capsys.readouterr().err
