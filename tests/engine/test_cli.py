"""The command line: FSP's verbs work end to end, bad input exits 2 naming the field, and no
error ever shows a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl
from tests.conftest import TEST_AWS_CONFIG
from tests.engine._support import assert_volume_file, make_image


def fspd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", "fspd", "--log-level", "warning", *args],
                          capture_output=True, text=True, timeout=timeout, env=env)


def test_upload_list_download_from_the_command_line(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", "DHZT", seed=31)
    up = fspd("upload", str(tmp_path / "disk.img"), "--endpoint-url", emulator.url,
              "--tag", "team=storage", "--json")
    assert up.returncode == 0, up.stderr
    snap = json.loads(up.stdout)["destinations"][0]["snapshot_id"]
    listed = fspd("list", snap, "--endpoint-url", emulator.url, "--json")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["blocks"] == 2
    human = fspd("list", snap, "--endpoint-url", emulator.url)
    assert "2 allocated blocks" in human.stdout
    down = fspd("download", snap, str(tmp_path / "out.img"), "--endpoint-url", emulator.url)
    assert down.returncode == 0, down.stderr
    assert_volume_file(tmp_path / "out.img", image)
    record = next(s for s in emulator.snapshots() if s["id"] == snap)
    assert record["tags"]["team"] == "storage"


def test_dry_run_plans_without_writing(emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=2, allocation="sparse",
                              density=0.1, zero_fraction=0.0, seed=4)
    out = tmp_path / "never.img"
    result = fspd("download", snap, str(out), "--endpoint-url", emulator.url, "--dry-run",
                  "--json")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)["plan"]
    assert not out.exists()
    assert plan["get_requests"] == plan["blocks_to_move"] > 0
    assert plan["estimated_cost_usd"] == pytest.approx(
        (plan["get_requests"] * 0.003 + plan["list_requests"] * 0.0006) / 1000, abs=1e-6)
    assert emulator.stats()["requests"].get("GetSnapshotBlock", 0) == 0


@pytest.mark.parametrize(("args", "field"), [
    (["download", "snap-xyz", "/tmp/x"], "source.snapshot_id"),
    (["upload", "/nonexistent/disk.img"], "source.path"),
    (["download", "snap-0123456789abcdef0", "/dev/fspd-no-such-device"], "path"),
    (["list", "snap-0123456789abcdef0", "--region", "moon"], "region"),
])
def test_bad_input_exits_2_naming_the_field(args: list[str], field: str,
                                            emulator: EmulatorControl) -> None:
    result = fspd(*args, "--endpoint-url", emulator.url)
    assert result.returncode == 2, result.stderr
    assert field in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_job_file_names_the_field(tmp_path: Path) -> None:
    job = tmp_path / "job.toml"
    job.write_text('[source]\ntype = "ebs"\nsnapshot_id = "snap-0123456789abcdef0"\n'
                   'colour = "blue"\n')
    result = fspd("run", str(job))
    assert result.returncode == 2
    assert "source.colour: unknown field" in result.stderr
    job.write_bytes(b"\xff\xfe not toml")
    result = fspd("run", str(job))
    assert result.returncode == 2 and "not UTF-8" in result.stderr
    assert "Traceback" not in result.stderr


def test_permission_problem_exits_3(emulator: EmulatorControl, tmp_path: Path) -> None:
    make_image(tmp_path / "disk.img", "D", seed=32)
    emulator.config(deny=[{"operations": ["StartSnapshot"]}])
    result = fspd("upload", str(tmp_path / "disk.img"), "--endpoint-url", emulator.url)
    assert result.returncode == 3, result.stderr
    assert "ebs:StartSnapshot" in result.stderr
    assert "Traceback" not in result.stderr


def test_job_file_runs_a_download(emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", "DD", seed=33)
    up = fspd("upload", str(tmp_path / "disk.img"), "--endpoint-url", emulator.url, "--json")
    snap = json.loads(up.stdout)["destinations"][0]["snapshot_id"]
    job = tmp_path / "job.json"
    job.write_text(json.dumps({
        "name": "nightly-restore",
        "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
        "destinations": [{"type": "file", "path": str(tmp_path / "restored.img")}],
    }))
    config = tmp_path / "fspd.toml"
    config.write_text(TEST_AWS_CONFIG)  # the operator allows the job's endpoint_url
    result = fspd("run", str(job), "--json", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["job_id"] == "nightly-restore"
    assert_volume_file(tmp_path / "restored.img", image)


def test_copy_fanout_and_multiclone_from_the_command_line(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", "DZT", seed=34)
    regions = tmp_path / "regions.txt"
    regions.write_text("# disaster recovery\nus-west-2\neu-west-1\n")
    fan = fspd("fanout", str(tmp_path / "disk.img"), f"@{regions}", "--endpoint-url",
               emulator.url, "--json")
    assert fan.returncode == 0, fan.stderr
    made = json.loads(fan.stdout)["destinations"]
    assert [d["region"] for d in made] == ["us-west-2", "eu-west-1"]
    copy = fspd("copy", made[0]["snapshot_id"], "--region", "us-west-2", "-d", "ap-southeast-2",
                "--endpoint-url", emulator.url, "--json")
    assert copy.returncode == 0, copy.stderr
    copied = json.loads(copy.stdout)["destinations"][0]["snapshot_id"]
    assert emulator.image(copied, region="ap-southeast-2", length=len(image)) == image
    clones = [tmp_path / "a.img", tmp_path / "b.img"]
    multi = fspd("multiclone", copied, *map(str, clones), "--region", "ap-southeast-2",
                 "--endpoint-url", emulator.url)
    assert multi.returncode == 0, multi.stderr
    for clone in clones:
        assert_volume_file(clone, image)
