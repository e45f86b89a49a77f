"""Helpers for engine tests: images of awkward shapes, and running jobs against the emulator."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from fspd import jobs
from fspd.blocks import BLOCK_SIZE
from fspd.config import RetrySettings, Settings, TransferSettings
from fspd.progress import Progress
from fspd.run import run_job
from tests.images import make_image as make_image  # re-exported for the suite
from tests.images import put_snapshot as put_snapshot

B = BLOCK_SIZE


def fast_settings(**transfer: Any) -> Settings:
    """Small pools and quick backoff so fault tests finish fast; bounds stay realistic."""
    t = {"fetch_concurrency": 16, "put_concurrency": 16, "queue_blocks": 32} | transfer
    return Settings(
        transfer=TransferSettings(**t),
        retry=RetrySettings(backoff_base_s=0.005, backoff_cap_s=0.1, max_attempts=12,
                            max_throttle_attempts=200, not_found_window_s=5,
                            completion_wait_s=30),
    )


def volume_size_for(image: bytes) -> int:
    """The size of the EBS volume that holds ``image``: whole GiB, at least one."""
    gib = 1 << 30
    return max(gib, -(-len(image) // gib) * gib)


async def run(spec: dict[str, Any], settings: Settings | None = None,
              progress: Progress | None = None) -> dict[str, Any]:
    return await run_job(jobs.validate(spec), settings or fast_settings(), progress=progress)


async def upload(emulator_url: str, path: Path, region: str = "us-east-1",
                 **dest: Any) -> str:
    result = await run({"source": {"type": "file", "path": str(path)},
                        "destinations": [{"type": "ebs", "region": region,
                                          "endpoint_url": emulator_url, **dest}]})
    return str(result["destinations"][0]["snapshot_id"])


async def download(emulator_url: str, snapshot_id: str, path: Path,
                   region: str = "us-east-1", **kw: Any) -> dict[str, Any]:
    return await run({"source": {"type": "ebs", "snapshot_id": snapshot_id, "region": region,
                                 "endpoint_url": emulator_url},
                      "destinations": [{"type": "file", "path": str(path)}]}, **kw)


def read_file(path: Path) -> bytes:
    return path.read_bytes()


def assert_volume_file(path: Path, image: bytes) -> None:
    """``path`` holds exactly a volume whose content is ``image`` then zeros to the GiB end.

    The zero tail is checked without reading holes: only allocated ranges are read."""
    expected_size = volume_size_for(image)
    assert path.stat().st_size == expected_size
    with open(path, "rb") as f:
        assert f.read(len(image)) == image
        fd = f.fileno()
        offset = len(image)
        while offset < expected_size:
            try:
                start = os.lseek(fd, offset, os.SEEK_DATA)
            except OSError:
                break
            end = min(os.lseek(fd, start, os.SEEK_HOLE), expected_size)
            while start < end:
                n = min(end - start, 64 * BLOCK_SIZE)
                assert os.pread(fd, n, start) == bytes(n), f"stale bytes at offset {start}"
                start += n
            offset = end


def assert_matches_snapshot(path: Path, emulator: Any, snapshot_id: str,
                            region: str = "us-east-1") -> None:
    """Compare a downloaded file with what the emulator says the volume reads."""
    size = path.stat().st_size
    chunk = 128 << 20
    with open(path, "rb") as f:
        for offset in range(0, size, chunk):
            want = emulator.image(snapshot_id, region=region, offset=offset,
                                  length=min(chunk, size - offset))
            assert f.read(len(want)) == want, f"differs in [{offset}, {offset + len(want)})"


def same_volume(emulator: Any, a: tuple[str, str], b: tuple[str, str], blocks: range) -> None:
    """Two snapshots (id, region) read the same over ``blocks`` (compared block by block)."""
    for index in blocks:
        left = emulator.image(a[0], region=a[1], offset=index * BLOCK_SIZE, length=BLOCK_SIZE)
        right = emulator.image(b[0], region=b[1], offset=index * BLOCK_SIZE, length=BLOCK_SIZE)
        assert left == right, f"block {index} differs between {a} and {b}"
