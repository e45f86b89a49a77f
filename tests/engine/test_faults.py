"""Under injected faults results stay byte-identical; permanent errors fail fast and say why."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl
from fspd.errors import PermissionProblem, TransferFailed
from fspd.progress import Progress
from tests.engine._support import (
    assert_matches_snapshot,
    assert_volume_file,
    download,
    fast_settings,
    make_image,
    run,
    upload,
)

LAYOUT = "DDDDHDDZDDDDDDDDT"  # 17 blocks: enough requests for faults to land


@pytest.mark.parametrize("fault", [
    {"error_rate": 0.3},
    {"reset_rate": 0.3},
    {"throttle_rate": 0.4},
    {"corrupt_rate": 0.3},
], ids=["500s", "resets", "throttling", "corrupt_bodies"])
async def test_download_under_faults_is_byte_identical(
        emulator: EmulatorControl, tmp_path: Path, fault: dict[str, float]) -> None:
    image = make_image(tmp_path / "src.img", LAYOUT, seed=21)
    snap = await upload(emulator.url, tmp_path / "src.img")
    emulator.faults(operations=["GetSnapshotBlock"], seed=5, **fault)
    progress = Progress()
    out = tmp_path / "out.img"
    await download(emulator.url, snap, out, progress=progress)
    emulator.clear_faults()
    assert_volume_file(out, image)
    assert sum(progress.retries.values()) > 0, "faults were injected but nothing was retried"
    if "corrupt_rate" in fault:
        assert progress.retries["corrupt"] > 0


@pytest.mark.parametrize("fault", [
    {"error_rate": 0.3},
    {"reset_rate": 0.3},
    {"throttle_rate": 0.4},
], ids=["500s", "resets", "throttling"])
async def test_upload_under_faults_is_byte_identical(
        emulator: EmulatorControl, tmp_path: Path, fault: dict[str, float]) -> None:
    image = make_image(tmp_path / "src.img", LAYOUT, seed=22)
    emulator.faults(operations=["PutSnapshotBlock"], seed=6, **fault)
    snap = await upload(emulator.url, tmp_path / "src.img")
    emulator.clear_faults()
    assert emulator.image(snap, length=len(image)) == image


async def test_real_rate_limit_slows_the_job_down_instead_of_failing_it(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    emulator.config(throttling=True, get_rate=40, burst_seconds=0.1)
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.05, seed=3)
    progress = Progress()
    out = tmp_path / "out.img"
    await download(emulator.url, snap, out, progress=progress)
    assert_matches_snapshot(out, emulator, snap)
    stats = emulator.stats()
    gets = stats["requests"]["GetSnapshotBlock"]
    # The client backs off: throttled requests stay a bounded share of what it sent.
    assert stats["throttled"] < gets


async def test_access_denied_fails_fast_naming_the_permission(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    make_image(tmp_path / "src.img", "DD", seed=23)
    snap = await upload(emulator.url, tmp_path / "src.img")
    emulator.config(deny=[{"operations": ["GetSnapshotBlock"]}])
    started = time.monotonic()
    progress = Progress()
    with pytest.raises(PermissionProblem, match="ebs:GetSnapshotBlock"):
        await download(emulator.url, snap, tmp_path / "out.img", progress=progress)
    assert time.monotonic() - started < 5
    assert not progress.retries, "a permanent error must not be retried"


async def test_unknown_snapshot_is_bad_input_naming_the_field(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    from fspd.errors import BadInput

    with pytest.raises(BadInput, match=r"source.snapshot_id.*does not exist"):
        await download(emulator.url, "snap-0123456789abcdef0", tmp_path / "out.img")


async def test_persistent_500s_give_up_after_bounded_retries(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    make_image(tmp_path / "src.img", "D", seed=24)
    snap = await upload(emulator.url, tmp_path / "src.img")
    emulator.faults(operations=["GetSnapshotBlock"], error_rate=1.0, seed=1)
    settings = fast_settings()
    with pytest.raises(TransferFailed, match="gave up after"):
        await download(emulator.url, snap, tmp_path / "out.img", settings=settings)
    assert emulator.stats()["requests"]["GetSnapshotBlock"] == settings.retry.max_attempts


async def test_put_with_wrong_data_is_never_completed(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    """A snapshot that failed mid-upload is reported, not completed with missing blocks."""
    make_image(tmp_path / "src.img", "DDD", seed=25)
    emulator.config(deny=[{"operations": ["PutSnapshotBlock"]}])
    with pytest.raises(PermissionProblem, match="ebs:PutSnapshotBlock"):
        await run({"source": {"type": "file", "path": str(tmp_path / "src.img")},
                   "destinations": [{"type": "ebs", "endpoint_url": emulator.url}]})
    statuses = {s["status"] for s in emulator.snapshots()}
    assert "completed" not in statuses


async def test_a_failed_upload_says_which_snapshot_it_left_pending(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    make_image(tmp_path / "src.img", "DD", seed=26)
    emulator.config(deny=[{"operations": ["CompleteSnapshot"]}])
    with pytest.raises(PermissionProblem) as info:
        await run({"source": {"type": "file", "path": str(tmp_path / "src.img")},
                   "destinations": [{"type": "ebs", "endpoint_url": emulator.url}]})
    pending = emulator.snapshots()[0]
    assert pending["status"] == "pending"
    assert f"left pending snapshot {pending['id']} in us-east-1" in str(info.value)


async def test_expired_block_tokens_are_refreshed_by_listing_again(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "src.img", "DDDDDDDD", seed=27)
    snap = await upload(emulator.url, tmp_path / "src.img")
    # Tokens live 0.3 s; each GET takes 0.2 s and only two run at once: the later blocks'
    # tokens, handed out by the first listing, expire before their turn comes.
    emulator.config(block_token_ttl=0.3)
    emulator.faults(latency_ms=200, operations=["GetSnapshotBlock"])
    progress = Progress()
    out = tmp_path / "out.img"
    await download(emulator.url, snap, out, progress=progress,
                   settings=fast_settings(fetch_concurrency=2))
    assert progress.retries["token_refreshed"] > 0
    assert_volume_file(out, image)
