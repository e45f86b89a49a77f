"""Helpers for engine tests: images of awkward shapes, and running jobs against the emulator."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fspd import jobs
from fspd.blocks import BLOCK_SIZE
from fspd.config import AwsSettings, RetrySettings, Settings, TransferSettings
from fspd.progress import Progress
from fspd.run import run_job
from tests.conftest import TEST_ALLOW_ENDPOINTS
from tests.images import assert_volume_file as assert_volume_file
from tests.images import make_image as make_image  # re-exported for the suite
from tests.images import put_snapshot as put_snapshot
from tests.images import volume_size_for as volume_size_for

B = BLOCK_SIZE


def fast_settings(**transfer: Any) -> Settings:
    """Small pools and quick backoff so fault tests finish fast; bounds stay realistic."""
    t = {"fetch_concurrency": 16, "put_concurrency": 16, "queue_blocks": 32} | transfer
    return Settings(
        transfer=TransferSettings(**t),
        retry=RetrySettings(backoff_base_s=0.005, backoff_cap_s=0.1, max_attempts=12,
                            max_throttle_attempts=200, not_found_window_s=5,
                            completion_wait_s=30),
        aws=AwsSettings(allow_endpoints=TEST_ALLOW_ENDPOINTS),
    )


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
