"""Real block devices (loop devices, where the machine lets us make them): a download leaves
no stale byte on a used device, and an upload reads the device byte for byte."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspd.blocks import BLOCK_SIZE
from fspd.config import PathSettings, Settings
from fspd.emulator.control import EmulatorControl
from tests.engine._support import fast_settings, make_image, run, upload


def _loop(tmp_path: Path, size: int) -> Iterator[str]:
    if os.geteuid() != 0 or not shutil.which("losetup"):
        pytest.skip("needs root and losetup")
    backing = tmp_path / f"backing-{size}.img"
    with open(backing, "wb") as f:  # a used disk: garbage everywhere
        f.truncate(size)
        f.seek(0)
        for _ in range(size // BLOCK_SIZE):
            f.write(b"\xee" * BLOCK_SIZE)
        f.write(b"\xee" * (size % BLOCK_SIZE))
    made = subprocess.run(["losetup", "--find", "--show", str(backing)],
                          capture_output=True, text=True, check=False)
    if made.returncode != 0:
        pytest.skip(f"cannot create a loop device here: {made.stderr.strip()}")
    device = made.stdout.strip()
    try:
        yield device
    finally:
        subprocess.run(["losetup", "-d", device], check=False)


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[str]:
    """A used 1 GiB + 32 MiB device: room for a 1 GiB volume and bytes past it."""
    yield from _loop(tmp_path, (2048 + 64) * BLOCK_SIZE)


SMALL = 40 * BLOCK_SIZE + 1000 * 512  # not a whole number of blocks


@pytest.fixture
def small_loop_device(tmp_path: Path) -> Iterator[str]:
    yield from _loop(tmp_path, SMALL)


def _allowing(device: str) -> Settings:
    base = fast_settings()
    return base.model_copy(update={"paths": PathSettings(allow_devices=(device,))})


async def test_download_to_a_used_device_leaves_no_stale_byte(
        emulator: EmulatorControl, tmp_path: Path, loop_device: str) -> None:
    image = make_image(tmp_path / "src.img", "DHZDT", seed=71)
    snap = await upload(emulator.url, tmp_path / "src.img")
    await run({"source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
               "destinations": [{"type": "file", "path": loop_device}]},
              settings=_allowing(loop_device))
    with open(loop_device, "rb") as dev:
        assert dev.read(len(image)) == image
        rest = (1 << 30) - len(image)
        while rest:
            chunk = dev.read(min(rest, 64 * BLOCK_SIZE))
            assert chunk == bytes(len(chunk)), "stale bytes survived on the device"
            rest -= len(chunk)
        assert dev.read(16) == b"\xee" * 16  # past the volume: untouched


async def test_devices_need_the_allow_list(emulator: EmulatorControl, loop_device: str) -> None:
    from fspd.errors import BadInput

    with pytest.raises(BadInput, match="allow_devices"):
        await run({"source": {"type": "ebs", "snapshot_id": "snap-0123456789abcdef0",
                              "endpoint_url": emulator.url},
                   "destinations": [{"type": "file", "path": loop_device}]})


async def test_upload_from_a_device_reads_it_byte_for_byte(
        emulator: EmulatorControl, small_loop_device: str) -> None:
    settings = _allowing(small_loop_device)
    result = await run({"source": {"type": "file", "path": small_loop_device},
                        "destinations": [{"type": "ebs", "endpoint_url": emulator.url}]},
                       settings=settings)
    snap = result["destinations"][0]["snapshot_id"]
    assert result["byte_length"] == SMALL
    assert emulator.image(snap, length=SMALL + BLOCK_SIZE) == \
        b"\xee" * SMALL + bytes(BLOCK_SIZE)
