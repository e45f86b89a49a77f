"""README's archive lines (movetos3, getfroms3, verify), run as typed against the emulator and
moto's S3, checked by their effect: restored bytes, the objects in the bucket, requests."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from fspd.emulator.control import EmulatorControl
from tests.cli._readme import data_requests, readme_command, snapshot_ids, typed
from tests.cli.conftest import Runner
from tests.images import assert_volume_file, make_image, put_snapshot
from tests.s3._support import (
    GIB,
    assert_archive_is_exactly,
    assert_file_is_volume,
    assert_same_volume,
    listed,
    s3_client,
)
from tests.s3.test_fsp_import import BLOCKS, PREFIX, assert_restored, write_fsp_archive

BUCKET = "bucket"  # as the README types it
URL = "s3://bucket/backups/web01"


@pytest.fixture
def readme_bucket(moto: str) -> str:
    s3_client(moto).create_bucket(Bucket=BUCKET)
    return BUCKET


def _ok(result: Any) -> None:
    assert result.returncode == 0, (result.stdout, result.stderr)


def _keys(moto: str, prefix: str = "") -> list[str]:
    listing = s3_client(moto).list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for o in listing.get("Contents", [])]


async def test_movetos3_getfroms3_and_verify_round_trip_a_snapshot(
        fspd_s3: Runner, emulator: EmulatorControl, ebs: Any, moto: str, readme_bucket: str,
        tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02,
                              zero_fraction=0.1, seed=31)
    _ok(fspd_s3(typed(readme_command("movetos3"), {"snap-A": snap})))
    assert_archive_is_exactly(moto, BUCKET, "backups/web01")
    assert emulator.stats()["requests"]["GetSnapshotBlock"] == len(await listed(ebs, snap))

    verified = fspd_s3(readme_command("verify"))
    _ok(verified)
    assert f"{URL}: OK" in verified.stdout, verified.stdout

    (tmp_path / "srv").mkdir()
    out = tmp_path / "srv" / "disk.img"
    emulator.reset_stats()
    _ok(fspd_s3(typed(readme_command("getfroms3"), {"/srv/disk.img": str(out)})))
    await assert_file_is_volume(out, emulator, ebs, snap, GIB)
    assert data_requests(emulator.stats()) == {}  # restored from S3 alone


async def test_getfroms3_to_snapshot_makes_a_snapshot_that_reads_the_same(
        fspd_s3: Runner, emulator: EmulatorControl, ebs: Any, readme_bucket: str) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=32)
    _ok(fspd_s3(typed(readme_command("movetos3"), {"snap-A": snap})))
    result = fspd_s3(f"fspd getfroms3 {URL} --to-snapshot")
    _ok(result)
    new = [s for s in emulator.snapshots() if s["id"] != snap]
    assert len(new) == 1 and new[0]["status"] == "completed", new
    assert new[0]["id"] in snapshot_ids(result.stdout)
    await assert_same_volume(emulator, ebs, new[0]["id"], snap)


async def test_movetos3_with_base_and_parent_stores_only_the_changes_and_restores_b(
        fspd_s3: Runner, emulator: EmulatorControl, ebs: Any, moto: str, readme_bucket: str,
        tmp_path: Path) -> None:
    a = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=33)
    a_blocks = await listed(ebs, a)
    changes = {a_blocks[0]: b"new 0", a_blocks[1]: b"", 1500: b"added"}
    b = await put_snapshot(ebs, changes, parent=a)
    _ok(fspd_s3(typed(readme_command("movetos3"), {"snap-A": a})))
    emulator.reset_stats()
    _ok(fspd_s3(f"fspd movetos3 {b} s3://bucket/backups/web01-b --base {a} "
                "--parent backups/web01"))
    # Only B's own blocks were read (a block B zeroed needs no read).
    assert emulator.stats()["requests"].get("GetSnapshotBlock", 0) <= len(changes)
    assert_archive_is_exactly(moto, BUCKET, "backups/web01-b")

    verified = fspd_s3("fspd verify s3://bucket/backups/web01-b")
    _ok(verified)
    assert "(parent s3://bucket/backups/web01)" in verified.stdout, verified.stdout
    out = tmp_path / "b.img"
    _ok(fspd_s3(f"fspd getfroms3 s3://bucket/backups/web01-b {out}"))
    await assert_file_is_volume(out, emulator, ebs, b, GIB)


def test_movetos3_of_a_file_round_trips_byte_for_byte(
        fspd_s3: Runner, emulator: EmulatorControl, moto: str, readme_bucket: str,
        tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", "DDZHDCT", seed=34)
    _ok(fspd_s3(f"fspd movetos3 disk.img {URL}"))
    assert_archive_is_exactly(moto, BUCKET, "backups/web01")
    _ok(fspd_s3(f"fspd getfroms3 {URL} back.img"))
    assert_volume_file(tmp_path / "back.img", image)
    assert data_requests(emulator.stats()) == {}


def test_getfroms3_and_verify_read_an_archive_in_fsps_layout(
        fspd_s3: Runner, moto: str, readme_bucket: str, tmp_path: Path) -> None:
    write_fsp_archive(s3_client(moto), BUCKET)
    url = f"s3://{BUCKET}/{PREFIX}"
    verified = fspd_s3(f"fspd verify {url} --format fsp")
    _ok(verified)
    assert f"{url}: OK" in verified.stdout, verified.stdout
    _ok(fspd_s3(f"fspd getfroms3 {url} out.img --format fsp"))
    assert_restored(tmp_path / "out.img", set(BLOCKS))


def test_verify_fails_with_exit_4_when_a_segment_is_damaged(
        fspd_s3: Runner, emulator: EmulatorControl, moto: str, readme_bucket: str) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=35)
    _ok(fspd_s3(typed(readme_command("movetos3"), {"snap-A": snap})))
    s3 = s3_client(moto)
    segment = next(k for k in _keys(moto, "backups/web01/") if not k.endswith("manifest.jsonl"))
    body = bytearray(s3.get_object(Bucket=BUCKET, Key=segment)["Body"].read())
    body[len(body) // 2] ^= 0xFF
    s3.put_object(Bucket=BUCKET, Key=segment, Body=bytes(body))
    result = fspd_s3(readme_command("verify"))
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert segment.rsplit("/", 1)[1] in result.stdout + result.stderr


async def test_dry_run_of_the_archive_verbs_sends_no_data_request_and_stores_nothing(
        fspd_s3: Runner, emulator: EmulatorControl, ebs: Any, moto: str, readme_bucket: str,
        tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=36)
    emulator.reset_stats()
    result = fspd_s3(f"fspd movetos3 {snap} {URL} --dry-run")
    _ok(result)
    assert "dry run" in result.stdout, result.stdout
    assert data_requests(emulator.stats()) == {}
    assert _keys(moto) == []

    _ok(fspd_s3(typed(readme_command("movetos3"), {"snap-A": snap})))
    stored = _keys(moto)
    snapshots = emulator.snapshots()
    emulator.reset_stats()
    for command in (f"fspd getfroms3 {URL} out.img --dry-run",
                    f"fspd getfroms3 {URL} --to-snapshot --dry-run",
                    f"fspd getfroms3 {URL} --dry-run"):
        result = fspd_s3(command)
        _ok(result)
        assert "blocks" in result.stdout, (command, result.stdout)
    assert data_requests(emulator.stats()) == {}
    assert emulator.snapshots() == snapshots and _keys(moto) == stored
    assert not os.path.exists(tmp_path / "out.img")
