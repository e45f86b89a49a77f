"""kill -9 of a fleet host mid-job, for every kind of job: another host takes it over after the
lease and continues from the S3 checkpoint. A copy continues the same pending snapshot, a
movetos3 the same multipart upload, a download the same file when that file is reachable from
the new host, and restarts (saying why) when it is not (a per-host path).

Host-a is stopped at a known point (the emulator's ``hold_after``, or moto's held UploadPart
in tests/fleet/atomic_moto.py), never by a latency race."""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import AioSession

from fspd.emulator.control import EmulatorControl
from tests.checkpoints import _bits
from tests.cli.conftest import Runner
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, download_job, upload_job, wait_for, write_config
from tests.daemon.test_crash_resume import assert_same_volume_across_regions
from tests.fleet.conftest import BUCKET, make_bucket
from tests.fleet.test_fleet_serve import TAKEOVER, _fleet_item, _s3_journal
from tests.s3._support import assert_archive_is_exactly, assert_file_is_volume, s3_client

make_daemon = daemon_fixtures.make_daemon  # a real `fspd serve` per host

# Each test waits out a 10 s lease between two daemons' start-ups: generous on a loaded machine.
pytestmark = pytest.mark.timeout(300)

ARCHIVES = "fleet-archives"


def host_config(tmp_path: Path, host: str, extra: str = "") -> Path:
    """The take-over settings (lease 10 s, heartbeat 1 s) for a host named ``host``."""
    text = TAKEOVER.replace("receive_wait_s = 1", f'receive_wait_s = 1\nhost = "{host}"')
    return write_config(tmp_path / f"{host}.toml", text + extra)


def submit(fleet_cli: Runner, tmp_path: Path, name: str, body: str) -> None:
    (tmp_path / f"{name}.toml").write_text(f'name = "{name}"\n{body}')
    assert fleet_cli(f"fspd submit --fleet {name}.toml").returncode == 0


def journal_sink(fleet_cli: Runner, moto: str, job: str) -> dict[str, Any] | None:
    """The job's one destination as its current checkpoint in S3 has it."""
    item = _fleet_item(fleet_cli, job)
    if not item.get("checkpoint_key"):
        return None
    sinks = _s3_journal(moto, item)["sinks"]
    return next(iter(sinks.values()), None)


def kill_9(d: Daemon) -> None:
    assert d.proc is not None
    d.proc.kill()
    d.proc.wait()
    d.proc = None


def start_fleet(make_daemon: Callable[..., Daemon], fleet_cli: Runner, moto: str,
                tmp_path: Path, host: str, extra: str = "") -> Daemon:
    return make_daemon("--config", str(host_config(tmp_path, host, extra)),
                       root=tmp_path / host)


def finished(fleet_cli: Runner, job: str) -> dict[str, Any]:
    return dict(wait_for(lambda: _fleet_item(fleet_cli, job).get("state") == "done"
                         and _fleet_item(fleet_cli, job), 120, f"{job} to finish"))


def init(fleet_cli: Runner, moto: str) -> None:
    make_bucket(moto)
    assert fleet_cli("fspd fleet init").returncode == 0


# --- download ------------------------------------------------------------------------------

def _download_taken_over(make_daemon: Callable[..., Daemon], emulator: EmulatorControl,
                         fleet_cli: Runner, moto: str, tmp_path: Path, path: str,
                         meanwhile: Callable[[], None] = lambda: None
                         ) -> tuple[str, int, Daemon, dict[str, Any]]:
    """A download held after 4 GETs on host-a, killed once its S3 journal claims blocks
    (then ``meanwhile``), finished by host-b: (snapshot, blocks host-a's journal claimed,
    host-b, its record)."""
    init(fleet_cli, moto)
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=21)
    emulator.faults(hold_after=4, operations=["GetSnapshotBlock"])
    submit(fleet_cli, tmp_path, "dl", download_job(emulator, snap, Path(path)))
    a = start_fleet(make_daemon, fleet_cli, moto, tmp_path, "host-a")

    def claimed() -> int:
        sink = journal_sink(fleet_cli, moto, "dl")
        return _bits(sink["bitmap"]) if sink and sink.get("bitmap") else 0

    durable = wait_for(lambda: claimed() >= 2 and claimed(), 60,
                       "host-a's journal in S3 to claim written blocks")
    kill_9(a)
    meanwhile()
    emulator.clear_faults()
    emulator.reset_stats()
    b = start_fleet(make_daemon, fleet_cli, moto, tmp_path, "host-b")
    assert finished(fleet_cli, "dl")["attempt"] == 2
    return snap, durable, b, b.api("/v1/jobs/dl")


async def test_a_download_taken_over_skips_the_blocks_written_to_the_same_file(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, ebs: Any, tmp_path: Path) -> None:
    out = tmp_path / "shared" / "out.img"  # one path both hosts reach (one machine here)
    out.parent.mkdir()

    def seen_from_another_host() -> None:
        """A shared (NFS) file has another device number on each host: host-a's journal
        says so. Its inode, size and sampled blocks are what identify it."""
        item = _fleet_item(fleet_cli, "dl")
        journal = _s3_journal(fleet_endpoints, item)
        for sink in journal["sinks"].values():
            sink["target"]["dev"] += 1
        s3_client(fleet_endpoints).put_object(Bucket=BUCKET, Key=item["checkpoint_key"],
                                              Body=json.dumps(journal).encode())

    snap, durable, _b, record = _download_taken_over(
        make_daemon, emulator, fleet_cli, fleet_endpoints, tmp_path, str(out),
        seen_from_another_host)
    assert record["state"] == "completed", record
    result = record["result"]
    assert result["resumed"] and result["blocks_resumed"] >= durable, result
    assert not result.get("notes"), result
    gets = emulator.stats()["requests"].get("GetSnapshotBlock", 0)
    assert gets <= result["blocks_done"] - durable, (gets, result)
    await assert_file_is_volume(out, emulator, ebs, snap, 1 << 30)


async def test_a_download_to_a_per_host_path_restarts_on_the_new_host_and_says_why(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, ebs: Any, tmp_path: Path) -> None:
    snap, _durable, b, record = _download_taken_over(
        make_daemon, emulator, fleet_cli, fleet_endpoints, tmp_path,
        str(tmp_path / "out-{host}.img"))
    assert record["state"] == "completed", record
    [note] = record["result"]["notes"]
    assert "fleet host host-a" in note and "out-host-a.img" in note, note
    assert "restarting" in note and "out-host-b.img" in note, note
    assert record["result"]["blocks_resumed"] == 0
    # every block read again, into host-b's own file
    assert emulator.stats()["requests"]["GetSnapshotBlock"] == record["result"]["blocks_done"]
    await assert_file_is_volume(tmp_path / "out-host-b.img", emulator, ebs, snap, 1 << 30)
    assert '"resume_refused"' in b.log()


async def test_a_download_whose_file_is_gone_on_the_new_host_restarts_and_says_why(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, ebs: Any, tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    snap, _durable, _b, record = _download_taken_over(
        make_daemon, emulator, fleet_cli, fleet_endpoints, tmp_path, str(out), out.unlink)
    assert record["state"] == "completed", record
    [note] = record["result"]["notes"]
    assert f"fleet host host-a wrote {out}, which does not exist on this host (host-b)" \
        in note and "restarting" in note, note
    assert record["result"]["blocks_resumed"] == 0
    assert emulator.stats()["requests"]["GetSnapshotBlock"] == record["result"]["blocks_done"]
    await assert_file_is_volume(out, emulator, ebs, snap, 1 << 30)


def test_host_placeholder_outside_a_fleet_job_is_refused_naming_the_field(
        fleet_cli: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.001, seed=2)
    (tmp_path / "dl.toml").write_text(download_job(emulator, snap, tmp_path / "o-{host}.img"))
    for command in ("fspd run dl.toml", "fspd submit dl.toml"):
        result = fleet_cli(command)
        assert result.returncode == 2, result
        assert "destinations[0].path" in result.stderr and "{host}" in result.stderr, \
            result.stderr
    assert not list(tmp_path.glob("o-*"))


# --- copy ----------------------------------------------------------------------------------

async def test_a_copy_taken_over_continues_the_same_pending_snapshot(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, aws_session: AioSession, tmp_path: Path) -> None:
    init(fleet_cli, fleet_endpoints)
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=22)
    emulator.faults(hold_after=4, operations=["PutSnapshotBlock"])
    submit(fleet_cli, tmp_path, "cp", "\n".join([
        'verb = "copy"', f'snapshot_id = "{snap}"', 'destination_region = "eu-west-1"',
        f'endpoint_url = "{emulator.url}"', ""]))
    a = start_fleet(make_daemon, fleet_cli, fleet_endpoints, tmp_path, "host-a")

    def pending() -> tuple[str, int] | None:
        sink = journal_sink(fleet_cli, fleet_endpoints, "cp")
        written = _bits(sink["written"]) if sink and sink.get("written") else 0
        return (sink["snapshot_id"], written) if sink and written >= 2 else None

    copy, durable = wait_for(pending, 60, "host-a's journal in S3 to claim puts")
    kill_9(a)
    emulator.clear_faults()
    emulator.reset_stats()
    b = start_fleet(make_daemon, fleet_cli, fleet_endpoints, tmp_path, "host-b")
    assert finished(fleet_cli, "cp")["attempt"] == 2
    record = b.api("/v1/jobs/cp")
    assert list(record["snapshot_ids"].values()) == [copy], record
    [made] = emulator.snapshots(region="eu-west-1")
    assert (made["id"], made["status"]) == (copy, "completed")
    puts = emulator.stats()["requests"].get("PutSnapshotBlock", 0)
    assert puts <= made["written_count"] - durable, (puts, made)
    await assert_same_volume_across_regions(emulator, aws_session, (copy, "eu-west-1"),
                                            (snap, "us-east-1"))


# --- movetos3 ------------------------------------------------------------------------------

def _hold_parts(moto: str, after: int | None) -> None:
    """moto answers only ``after`` more UploadPart requests (None: all again)."""
    path = "/_fspd/hold" + ("" if after is None else f"/{after}")
    req = urllib.request.Request(moto + path, method="DELETE" if after is None else "POST")
    urllib.request.urlopen(req, timeout=10).close()


ARCHIVE_SETTINGS = """
[s3]
multipart_threshold = 5242880
part_size = 5242880
"""


def test_a_movetos3_taken_over_continues_the_same_multipart_upload(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, tmp_path: Path) -> None:
    init(fleet_cli, fleet_endpoints)
    s3_client(fleet_endpoints).create_bucket(Bucket=ARCHIVES)
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(32 << 20))  # two windows of 32 blocks: 16 MiB segments
    (tmp_path / "up.toml").write_text(upload_job(emulator, image))
    up = fleet_cli("fspd run --json up.toml")
    assert up.returncode == 0, up.stderr
    snap = json.loads(up.stdout)["destinations"][0]["snapshot_id"]
    _hold_parts(fleet_endpoints, 2)  # host-a stops inside its multipart uploads
    (tmp_path / "arch.json").write_text(json.dumps({
        "name": "arch",
        "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
        "destinations": [{"type": "s3", "bucket": ARCHIVES, "prefix": "arch",
                          "endpoint_url": fleet_endpoints, "segment_blocks": 32,
                          "zstd_level": 1}]}))
    assert fleet_cli("fspd submit --fleet arch.json").returncode == 0
    a = start_fleet(make_daemon, fleet_cli, fleet_endpoints, tmp_path, "host-a",
                    ARCHIVE_SETTINGS)

    def uploads_with_parts() -> dict[str, Any] | None:
        sink = journal_sink(fleet_cli, fleet_endpoints, "arch")
        uploads = (sink or {}).get("uploads") or {}
        return uploads if any(u["parts"] for u in uploads.values()) else None

    uploads = wait_for(uploads_with_parts, 60, "host-a's journal in S3 to claim parts")
    kill_9(a)
    _hold_parts(fleet_endpoints, None)
    b = start_fleet(make_daemon, fleet_cli, fleet_endpoints, tmp_path, "host-b",
                    ARCHIVE_SETTINGS)
    assert finished(fleet_cli, "arch")["attempt"] == 2
    [dest] = b.api("/v1/jobs/arch")["result"]["destinations"]
    assert dest["state"] == "completed", dest
    claimed = sum(len(u["parts"]) for u in uploads.values())
    assert dest["parts_resumed"] >= claimed, (dest, uploads)  # the same uploads, continued
    assert_archive_is_exactly(fleet_endpoints, ARCHIVES, "arch")  # no orphaned upload
    (tmp_path / "get.json").write_text(json.dumps({
        "source": {"type": "s3", "bucket": ARCHIVES, "prefix": "arch",
                   "endpoint_url": fleet_endpoints},
        "destinations": [{"type": "file", "path": str(tmp_path / "restored.img")}]}))
    assert fleet_cli("fspd run get.json").returncode == 0
    restored = (tmp_path / "restored.img").read_bytes()
    assert restored[:32 << 20] == image.read_bytes()
    assert restored[32 << 20:] == bytes(len(restored) - (32 << 20))
