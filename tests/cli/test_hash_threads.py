"""Hashing fetched blocks on threads (``[transfer] hash_in_threads``, fspd/hashing.py) gives
the same bytes as hashing them on the event loop, and still catches a corrupt block.

The verbs run as typed, with $FSPD_CONFIG switching the setting; the effect is compared
byte for byte (files, snapshots' blocks, archive objects)."""

from __future__ import annotations

import asyncio
import filecmp
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pytest

from fspd.blocks import BLOCK_SIZE
from fspd.config import TransferSettings
from fspd.emulator.control import EmulatorControl
from fspd.hashing import BlockHasher, thread_count
from tests.cli.conftest import Runner
from tests.conftest import TEST_AWS_CONFIG
from tests.s3._support import s3_client

MODES = {"loop": "hash_in_threads = false\n",
         "threads": "hash_in_threads = true\nhash_threads = 2\n"}


def _config(tmp_path: Path, mode: str) -> dict[str, str]:
    path = tmp_path / f"fspd-{mode}.toml"
    path.write_text(TEST_AWS_CONFIG + "[transfer]\n" + MODES[mode])
    return {"FSPD_CONFIG": str(path)}


def _assert_is_snapshot(path: Path, emulator: EmulatorControl, snapshot_id: str) -> None:
    """The file holds the snapshot's volume byte for byte (read in pieces)."""
    piece = 128 << 20
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        assert size == 1 << 30
        for offset in range(0, size, piece):
            assert f.read(piece) == emulator.image(snapshot_id, offset=offset, length=piece), \
                f"{path} differs from {snapshot_id} in [{offset}, {offset + piece})"


def _ok(result: Any) -> dict[str, Any]:
    assert result.returncode == 0, (result.stdout, result.stderr)
    return dict(json.loads(result.stdout))


@pytest.mark.timeout(300)
def test_download_is_byte_identical_with_hashing_on_threads_or_on_the_loop(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.05, seed=41)
    for mode in MODES:
        _ok(fspd(["download", snap, f"{mode}.img", "--json"],
                 extra_env=_config(tmp_path, mode)))
    assert filecmp.cmp(tmp_path / "threads.img", tmp_path / "loop.img", shallow=False)
    _assert_is_snapshot(tmp_path / "threads.img", emulator, snap)


def test_upload_gives_the_same_snapshot_with_hashing_on_threads_or_on_the_loop(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    data = bytearray(os.urandom(40 * BLOCK_SIZE))
    data[8 * BLOCK_SIZE:16 * BLOCK_SIZE] = bytes(8 * BLOCK_SIZE)  # zero blocks among them
    (tmp_path / "disk.img").write_bytes(data)
    results = {mode: _ok(fspd(["upload", "disk.img", "--json"],
                              extra_env=_config(tmp_path, mode)))["destinations"][0]
               for mode in MODES}
    assert results["threads"]["checksum"] == results["loop"]["checksum"]
    for result in results.values():
        assert emulator.image(result["snapshot_id"], length=len(data)) == bytes(data)


@pytest.mark.timeout(300)  # two archives and two 1 GiB restores, on a shared machine
def test_movetos3_archive_is_identical_with_hashing_on_threads_or_on_the_loop(
        fspd_s3: Runner, emulator: EmulatorControl, moto: str, tmp_path: Path) -> None:
    s3 = s3_client(moto)
    s3.create_bucket(Bucket="hashing")
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.03,
                              zero_fraction=0.1, seed=42)
    for mode in MODES:
        _ok(fspd_s3(["movetos3", snap, f"s3://hashing/{mode}", "--segment-blocks", "16",
                     "--json"], extra_env=_config(tmp_path, mode)))

    def segments(prefix: str) -> dict[str, bytes]:
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="hashing", Prefix=prefix + "/")
                .get("Contents", [])]
        return {key.removeprefix(prefix + "/"): s3.get_object(Bucket="hashing", Key=key)
                ["Body"].read() for key in keys if "manifest" not in key}

    threads, loop = segments("threads"), segments("loop")
    assert len(threads) > 4 and threads == loop
    for mode in MODES:
        _ok(fspd_s3(["getfroms3", f"s3://hashing/{mode}", f"{mode}.img", "--json"]))
    assert filecmp.cmp(tmp_path / "threads.img", tmp_path / "loop.img", shallow=False)
    _assert_is_snapshot(tmp_path / "threads.img", emulator, snap)


def test_a_corrupt_block_is_refetched_with_hashing_on_threads(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=43)
    emulator.faults(operations=["GetSnapshotBlock"], corrupt_rate=0.3, seed=7)
    try:
        result = _ok(fspd(["download", snap, "out.img", "--json"],
                          extra_env=_config(tmp_path, "threads")))
    finally:
        emulator.clear_faults()
    assert result["retries"].get("corrupt", 0) > 0, result["retries"]
    _assert_is_snapshot(tmp_path / "out.img", emulator, snap)


def test_a_block_that_never_matches_its_checksum_fails_the_download_with_threads(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.002, seed=44)
    emulator.faults(operations=["GetSnapshotBlock"], corrupt_rate=1.0, seed=8)
    try:
        result = fspd(["download", snap, "out.img"], extra_env={
            **_config(tmp_path, "threads"), "FSPD_CONFIG": _retry_config(tmp_path)})
    finally:
        emulator.clear_faults()
    assert result.returncode == 4, result.stderr
    assert "checksum mismatch" in result.stderr, result.stderr


def _retry_config(tmp_path: Path) -> str:
    path = tmp_path / "fspd-fast-fail.toml"
    path.write_text(TEST_AWS_CONFIG + "[transfer]\n" + MODES["threads"]
                    + "[retry]\nmax_attempts = 2\nbackoff_base_s = 0.01\n")
    return str(path)


@pytest.mark.parametrize(("cpus", "settings", "threads"), [
    (1, {}, 0),  # one CPU: the loop hashes, no thread hop
    (2, {}, 0),  # two: still the loop (GIL hand-overs cost more than the thread saves)
    (3, {}, 2),
    (16, {}, 4),
    (16, {"hash_threads": 2}, 2),
    (8, {"hash_in_threads": False}, 0),
    (1, {"hash_in_threads": True}, 1),
])
def test_the_default_follows_the_usable_cpus(cpus: int, settings: dict[str, Any],
                                             threads: int) -> None:
    assert thread_count(TransferSettings(**settings), cpus=cpus) == threads


async def test_the_hasher_gives_each_block_its_own_digest_under_load() -> None:
    hasher = BlockHasher(2, batch=4)
    blocks = [os.urandom(BLOCK_SIZE // 8) for _ in range(200)]
    try:
        futures = [hasher.digest(b) for b in blocks]
        futures[3].cancel()  # a fetch given up meanwhile does not disturb the others
        done = await asyncio.gather(*futures[4:])
    finally:
        hasher.close()
    assert done == [hashlib.sha256(b).digest() for b in blocks[4:]]
