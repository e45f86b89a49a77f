"""Three real ``fspd serve`` hosts on one fleet share 30 small jobs of four kinds: upload
(file → snapshot), copy (snapshot → snapshot in another region), movetos3 (snapshot → S3
archive on moto) and download (snapshot → a per-host path, ``{host}`` in it). Every job
completes exactly once, every result is byte-identical, every upload and copy made exactly one
snapshot, and no multipart upload is left in moto."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import AioSession

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, download_job, upload_job, wait_for, write_config
from tests.daemon.test_control_socket import _get
from tests.daemon.test_crash_resume import assert_same_volume_across_regions
from tests.fleet.conftest import make_bucket
from tests.fleet.test_fleet_serve import SERVE_FLEET
from tests.s3._support import (
    assert_archive_is_exactly,
    assert_file_is_volume,
    run,
    s3_client,
)

make_daemon = daemon_fixtures.make_daemon

HOSTS = ("host-a", "host-b", "host-c")
ARCHIVES = "fleet-archives"
GIB = 1 << 30
KINDS = {"upload": 8, "copy": 8, "movetos3": 7, "download": 7}  # 30 jobs


def _jobs(emulator: EmulatorControl, moto: str, tmp_path: Path, sources: list[str]
          ) -> dict[str, tuple[str, str, Any]]:
    """name → (kind, job file text, what to check it against)."""
    out: dict[str, tuple[str, str, Any]] = {}
    for i in range(KINDS["upload"]):
        image = tmp_path / f"in-{i}.img"
        image.write_bytes(os.urandom((1 + i % 3) << 19) + bytes(1 << 19) + os.urandom(777))
        out[f"up-{i}"] = ("upload", upload_job(emulator, image), image)
    for i in range(KINDS["copy"]):
        snap = sources[i % len(sources)]
        out[f"cp-{i}"] = ("copy", "\n".join([
            'verb = "copy"', f'snapshot_id = "{snap}"', 'destination_region = "eu-west-1"',
            f'endpoint_url = "{emulator.url}"', ""]), snap)
    for i in range(KINDS["movetos3"]):
        snap = sources[i % len(sources)]
        out[f"arch-{i}"] = ("movetos3", "\n".join([
            "[source]", 'type = "ebs"', f'snapshot_id = "{snap}"',
            f'endpoint_url = "{emulator.url}"', "[[destinations]]", 'type = "s3"',
            f'bucket = "{ARCHIVES}"', f'prefix = "arch-{i}"', f'endpoint_url = "{moto}"',
            "segment_blocks = 8", "zstd_level = 1", ""]), snap)
    for i in range(KINDS["download"]):
        snap = sources[i % len(sources)]
        path = tmp_path / "out-{host}" / f"dl-{i}.img"  # each host writes its own directory
        out[f"dl-{i}"] = ("download", download_job(emulator, snap, path), snap)
    return out


def _metric(metrics: str, event: str) -> int:
    return sum(int(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("fspd_fleet_jobs_total{") and f'event="{event}"' in line)


@pytest.mark.timeout(400)  # 90-100 s at load average 13 on 2 cores: three daemons, 30 jobs
async def test_three_hosts_share_thirty_jobs_and_each_completes_exactly_once(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, fleet_cli: Runner,
        fleet_endpoints: str, ebs: Any, aws_session: AioSession, tmp_path: Path) -> None:
    moto = fleet_endpoints
    make_bucket(moto)
    s3_client(moto).create_bucket(Bucket=ARCHIVES)
    assert fleet_cli("fspd fleet init").returncode == 0
    sources = [emulator.synthetic(volume_size=1, allocation="sparse", density=0.004,
                                  zero_fraction=0.1, seed=seed) for seed in (31, 32)]
    jobs = _jobs(emulator, moto, tmp_path, sources)
    hosts: dict[str, Daemon] = {}
    for host in HOSTS:  # all three polling before the first job is queued
        (tmp_path / f"out-{host}").mkdir()
        config = write_config(tmp_path / f"{host}.toml", SERVE_FLEET.replace(
            "receive_wait_s = 1", f'receive_wait_s = 1\nhost = "{host}"').replace(
            "lease_s = 10.0\nheartbeat_s = 1.0", "lease_s = 60.0\nheartbeat_s = 10.0")
            + "\n[daemon]\nworkers = 1\n")  # no take-over here: few heartbeats to moto
        hosts[host] = make_daemon("--config", str(config), root=tmp_path / host)
    for name, (_kind, text, _want) in jobs.items():
        (tmp_path / f"{name}.toml").write_text(f'name = "{name}"\n{text}')
    with ThreadPoolExecutor(4) as pool:
        submitted = list(pool.map(lambda n: fleet_cli(f"fspd submit --fleet {n}.toml"), jobs))
    assert [r.returncode for r in submitted] == [0] * len(jobs)

    def ended() -> int:
        """Jobs the hosts have finished (their socket: cheaper to poll than the table)."""
        return sum(1 for d in hosts.values() for j in d.api("/v1/jobs")["jobs"]
                   if j["state"] in ("completed", "failed", "cancelled"))

    wait_for(lambda: ended() >= len(jobs), 180, "the hosts to finish all 30 fleet jobs")
    items = {j["job"]: j for j in
             json.loads(fleet_cli("fspd status --fleet --json").stdout)["jobs"]}
    assert {n: (i["state"], i["attempt"]) for n, i in items.items()} == \
        {n: ("done", 1) for n in jobs}

    # exactly once: each job completed on exactly one host, and the done counters sum to 30
    ran: dict[str, tuple[str, dict[str, Any]]] = {}
    for host, d in hosts.items():
        for summary in d.api("/v1/jobs")["jobs"]:
            assert summary["state"] == "completed", (host, summary)
            assert summary["job"] not in ran, f"{summary['job']} ran on two hosts"
            ran[summary["job"]] = (host, d.api(f"/v1/jobs/{summary['job']}"))
    assert sorted(ran) == sorted(jobs)
    metrics = {h: (await _get(d.socket, "/metrics"))[1] for h, d in hosts.items()}
    assert sum(_metric(m, "done") for m in metrics.values()) == 30, metrics
    assert sum(_metric(m, "taken") for m in metrics.values()) == 30, metrics
    assert all(_metric(m, "done") >= 1 for m in metrics.values()), metrics  # all three shared

    made: list[str] = []
    for name, (kind, _text, want) in jobs.items():
        host, record = ran[name]
        snapshots = list(record["snapshot_ids"].values())
        if kind == "upload":
            [snap] = snapshots
            made.append(snap)
            assert emulator.image(snap, length=want.stat().st_size) == want.read_bytes(), name
        elif kind == "copy":
            [snap] = snapshots
            made.append(snap)
            await assert_same_volume_across_regions(emulator, aws_session, (snap, "eu-west-1"),
                                                    (want, "us-east-1"))
        elif kind == "movetos3":
            assert_archive_is_exactly(moto, ARCHIVES, name)
            restored = tmp_path / f"restored-{name}.img"
            await run({"source": {"type": "s3", "bucket": ARCHIVES, "prefix": name,
                                  "endpoint_url": moto},
                       "destinations": [{"type": "file", "path": str(restored)}]})
            await assert_file_is_volume(restored, emulator, ebs, want, GIB)
        else:
            index = name.partition("-")[2]
            await assert_file_is_volume(tmp_path / f"out-{host}" / f"dl-{index}.img",
                                        emulator, ebs, want, GIB)
            others = [h for h in HOSTS if (tmp_path / f"out-{h}" / f"dl-{index}.img").exists()]
            assert others == [host], (name, others)  # written by the host that ran it only
    # one snapshot per upload and copy destination: nothing else made, none pending
    real = [s for s in emulator.snapshots() if s["id"] not in sources]
    assert sorted(s["id"] for s in real) == sorted(made)
    assert {s["status"] for s in real} == {"completed"}
    assert s3_client(moto).list_multipart_uploads(Bucket=ARCHIVES).get("Uploads", []) == []
