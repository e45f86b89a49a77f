"""kill -9 of ``fspd serve`` (a real process; the emulator and moto are other processes) at a
random point after a job's checkpoint first claims durable blocks, then a restart on the same
spool and state: the job finishes in done/, resumed, with byte-identical results and nothing
duplicated, orphaned or left pending.

The kill waits for a condition, not for time: the checkpoint on disk claims at least a
(seeded, random) number of durable blocks. The job is slowed deterministically (emulator
latency set before it is submitted, two requests in flight) so it is still running then, even
on a busy machine."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import AioSession

from fspd.daemon.scheduler import engine_job_id
from fspd.emulator.control import EmulatorControl
from tests.checkpoints import durable_blocks
from tests.conftest import TEST_AWS_CONFIG, client_config
from tests.daemon.conftest import Daemon, wait_for
from tests.s3._support import (
    BUCKET,
    B,
    assert_archive_is_exactly,
    assert_file_is_volume,
    listed,
    make_image,
    run,
    s3_client,
)

CONFIG = """
[transfer]
fetch_concurrency = 2
put_concurrency = 2
worker_threads = 2
checkpoint_interval_s = 0.1
[retry]
backoff_base_s = 0.01
backoff_cap_s = 0.2
""" + TEST_AWS_CONFIG

GIB = 1 << 30


async def assert_same_volume_across_regions(emulator: EmulatorControl, session: AioSession,
                                            got: tuple[str, str], want: tuple[str, str]
                                            ) -> None:
    """Two snapshots (id, region) read the same: block by block over every block either
    lists; every other block reads zeros in both."""
    blocks: set[int] = set()
    for snap, region in (got, want):
        async with session.create_client("ebs", region_name=region, endpoint_url=emulator.url,
                                         config=client_config()) as ebs:
            blocks.update(await listed(ebs, snap))
    for index in sorted(blocks):
        assert emulator.image(got[0], got[1], index * B, B) == \
            emulator.image(want[0], want[1], index * B, B), f"block {index} differs"


@pytest.fixture
def crashable(make_daemon: Callable[..., Daemon], tmp_path: Path) -> Daemon:
    config = tmp_path / "fspd.toml"
    config.write_text(CONFIG)
    return make_daemon("--config", str(config), "--rescan-interval", "1")


def crash_mid_job(d: Daemon, job: str, seed: int) -> None:
    """kill -9 the daemon once the checkpoint on disk claims a random, seeded number of
    durable blocks (at least one, so the restart has something to resume)."""
    checkpoint = d.root / "state" / "jobs" / engine_job_id(job) / "checkpoint.json"
    want = random.Random(seed).randint(1, 8)
    wait_for(lambda: durable_blocks(checkpoint) >= want, 60,
             f"a checkpoint of {job} claiming {want} durable blocks")
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait(10)
    d.proc = None
    assert (d.spool.box("active") / job).exists(), f"{job} ended before the kill:\n{d.log()}"


def restart_and_finish(d: Daemon, job: str) -> dict[str, Any]:
    d.start()
    assert d.wait_finished(job, 60) == "done", d.log()
    result = d.sidecar("done", job)
    assert result["resumed"] is True and result["blocks_resumed"] > 0
    assert not list(d.spool.box("active").iterdir())
    return result


def submit(d: Daemon, spec: dict[str, Any]) -> str:
    return d.submit(json.dumps(spec), "job.json")


def only_snapshot(emulator: EmulatorControl, region: str) -> str:
    """The region holds exactly one snapshot, completed (none pending, none duplicated)."""
    snapshots = emulator.snapshots(region=region)
    assert [s["status"] for s in snapshots] == ["completed"], snapshots
    return str(snapshots[0]["id"])


@pytest.mark.parametrize("seed", [1, 2])
async def test_download_survives_kill_9_of_the_daemon_byte_identical(
        crashable: Daemon, emulator: EmulatorControl, ebs: Any, tmp_path: Path,
        seed: int) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.12, seed=seed)
    out = tmp_path / "out.img"
    emulator.faults(latency_ms=50, operations=["GetSnapshotBlock"])  # ~6 s at 2 in flight
    job = submit(crashable, {"verb": "download", "snapshot_id": snap, "path": str(out),
                             "endpoint_url": emulator.url})
    crash_mid_job(crashable, job, seed)
    emulator.clear_faults()
    emulator.reset_stats()
    result = restart_and_finish(crashable, job)
    gets = emulator.stats()["requests"]["GetSnapshotBlock"]
    assert gets == result["blocks_done"] - result["blocks_resumed"]  # none read twice
    await assert_file_is_volume(out, emulator, ebs, snap, GIB)


@pytest.mark.parametrize("seed", [3, 4])
def test_upload_survives_kill_9_of_the_daemon_into_one_snapshot(
        crashable: Daemon, emulator: EmulatorControl, tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    layout = "".join(rnd.choice("DDDDHZ") for _ in range(100)) + "T"
    image = make_image(tmp_path / "disk.img", layout, seed=seed)
    emulator.faults(latency_ms=100, operations=["PutSnapshotBlock"])  # ~3 s at 2 in flight
    job = submit(crashable, {"verb": "upload", "path": str(tmp_path / "disk.img"),
                             "endpoint_url": emulator.url})
    crash_mid_job(crashable, job, seed)
    emulator.clear_faults()
    result = restart_and_finish(crashable, job)
    snap = only_snapshot(emulator, "us-east-1")
    assert result["destinations"][0]["snapshot_id"] == snap
    assert emulator.image(snap, length=len(image)) == image


@pytest.mark.parametrize("seed", [5, 6])
async def test_copy_to_another_region_survives_kill_9_of_the_daemon(
        crashable: Daemon, emulator: EmulatorControl, aws_session: AioSession,
        seed: int) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.1,
                              zero_fraction=0.1, seed=seed)
    emulator.faults(latency_ms=60, operations=["PutSnapshotBlock"])  # ~6 s at 2 in flight
    job = submit(crashable, {"verb": "copy", "snapshot_id": snap, "region": "us-east-1",
                             "destination_region": "eu-west-1",
                             "endpoint_url": emulator.url})
    crash_mid_job(crashable, job, seed)
    emulator.clear_faults()
    result = restart_and_finish(crashable, job)
    copy = only_snapshot(emulator, "eu-west-1")
    assert result["destinations"][0]["snapshot_id"] == copy
    await assert_same_volume_across_regions(emulator, aws_session, (copy, "eu-west-1"),
                                            (snap, "us-east-1"))


@pytest.mark.parametrize("seed", [7, 8])
async def test_movetos3_survives_kill_9_of_the_daemon_and_restores_byte_identical(
        crashable: Daemon, emulator: EmulatorControl, ebs: Any, moto: str, tmp_path: Path,
        seed: int) -> None:
    s3_client(moto).create_bucket(Bucket=BUCKET)
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.1,
                              zero_fraction=0.1, seed=seed)
    emulator.faults(latency_ms=50, operations=["GetSnapshotBlock"])  # ~5 s at 2 in flight
    job = submit(crashable, {
        "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
        "destinations": [{"type": "s3", "bucket": BUCKET, "prefix": "arch",
                          "endpoint_url": moto, "segment_blocks": 8, "zstd_level": 1}]})
    crash_mid_job(crashable, job, seed)
    emulator.clear_faults()
    result = restart_and_finish(crashable, job)
    assert result["destinations"][0]["state"] == "completed"
    assert_archive_is_exactly(moto, BUCKET, "arch")
    out = tmp_path / "restored.img"
    await run({"source": {"type": "s3", "bucket": BUCKET, "prefix": "arch",
                          "endpoint_url": moto},
               "destinations": [{"type": "file", "path": str(out)}]})
    await assert_file_is_volume(out, emulator, ebs, snap, GIB)
