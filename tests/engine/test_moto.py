"""The happy-path round trip also works against moto's server (a second implementation)."""

from __future__ import annotations

from pathlib import Path

from tests.engine._support import assert_volume_file, download, make_image, upload


async def test_upload_then_download_through_moto(moto: str, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "DDHDT", seed=41)
    snap = await upload(moto, tmp_path / "src.img")
    out = tmp_path / "out.img"
    await download(moto, snap, out)
    assert_volume_file(out, image)
