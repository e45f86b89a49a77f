"""README's "Using it" transfer lines, run as typed (``fspd`` console script, a subprocess)
against the emulator, each checked by its effect: bytes, tags, encryption, request counts."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest

from fspd.emulator.control import EmulatorControl
from tests.checkpoints import durable_blocks
from tests.cli._readme import (
    data_requests,
    describe,
    readme_command,
    snapshot_ids,
    tags_of,
    typed,
    using_it_lines,
)
from tests.cli.conftest import Runner, fspd_argv
from tests.conftest import ROOT, TEST_AWS_CONFIG
from tests.daemon.conftest import wait_for
from tests.images import B, assert_volume_file, make_image, put_snapshot
from tests.s3._support import GIB, assert_file_is_volume, listed

LAYOUT = "DDZDHHDCZDDT"  # data, zeros, holes, a partial last block
NONZERO = sum(LAYOUT.count(c) for c in "DCT")


def _only_new_snapshot(emulator: EmulatorControl, region: str, before: set[str]) -> str:
    new = [s for s in emulator.snapshots(region=region) if s["id"] not in before]
    assert len(new) == 1 and new[0]["status"] == "completed", new
    return str(new[0]["id"])


def _ok(result: Any) -> None:
    assert result.returncode == 0, (result.stdout, result.stderr)


def test_upload_with_region_and_tag_makes_a_tagged_snapshot_of_the_file(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", LAYOUT, seed=1)
    result = fspd(readme_command("upload"))  # run in tmp_path: disk.img is there
    _ok(result)
    snap = _only_new_snapshot(emulator, "us-east-1", set())
    assert snap in snapshot_ids(result.stdout)
    assert emulator.image(snap, length=len(image)) == image
    tags = tags_of(describe(emulator.url, snap))
    assert tags["team"] == "storage" and tags["fspd:byte-length"] == str(len(image)), tags
    # One put per non-zero block: zeros and holes of a new snapshot are skipped.
    assert emulator.stats()["requests"]["PutSnapshotBlock"] == NONZERO


def test_list_counts_the_allocated_blocks(fspd: Runner, emulator: EmulatorControl) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=2)
    result = fspd(typed(readme_command("list"), {"snap-0123456789abcdef0": snap}))
    _ok(result)
    count = len(_listed_sync(emulator, snap))
    assert f"{snap} in us-east-1: {count} allocated blocks, {count * B / 2**20:.1f} MiB" \
        in result.stdout, result.stdout
    assert "GetSnapshotBlock" not in emulator.stats()["requests"]  # listing reads no data


def _listed_sync(emulator: EmulatorControl, snap: str) -> list[int]:
    import boto3

    ebs = boto3.client("ebs", region_name="us-east-1", endpoint_url=emulator.url)
    out: list[int] = []
    params: dict[str, Any] = {"SnapshotId": snap, "MaxResults": 10000}
    while True:
        page = ebs.list_snapshot_blocks(**params)
        out += [b["BlockIndex"] for b in page.get("Blocks", [])]
        if not page.get("NextToken"):
            return out
        params["NextToken"] = page["NextToken"]


async def _lineage(emulator: EmulatorControl, ebs: Any) -> tuple[str, str, dict[int, bytes]]:
    """A (synthetic) and B, its child that rewrites three blocks, adds one and zeroes one."""
    a = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=3)
    a_blocks = await listed(ebs, a)
    changes = {a_blocks[0]: b"changed 0", a_blocks[1]: b"changed 1", a_blocks[2]: b"",
               2000: b"new block"}
    b = await put_snapshot(ebs, changes, parent=a)
    return a, b, changes


async def test_diff_counts_the_blocks_changed_between_two_snapshots(
        fspd: Runner, emulator: EmulatorControl, ebs: Any) -> None:
    a, b, changes = await _lineage(emulator, ebs)
    result = fspd(typed(readme_command("diff"), {"snap-A": a, "snap-B": b}))
    _ok(result)
    assert f"{len(changes)} changed blocks" in result.stdout, result.stdout


async def test_download_writes_the_snapshot_byte_for_byte_fetching_each_block_once(
        fspd: Runner, emulator: EmulatorControl, ebs: Any, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=4)
    (tmp_path / "srv").mkdir()
    out = tmp_path / "srv" / "disk.img"
    _ok(fspd(typed(readme_command("download"),
                   {"snap-0123456789abcdef0": snap, "/srv/disk.img": str(out)})))
    await assert_file_is_volume(out, emulator, ebs, snap, GIB)
    assert emulator.stats()["requests"]["GetSnapshotBlock"] == len(await listed(ebs, snap))


def test_download_size_of_gives_back_the_uploaded_file(fspd: Runner, tmp_path: Path) -> None:
    """The README's round trip: a download is the whole volume; ``--size-of`` cuts it back to
    the file that was uploaded, so the two compare equal."""
    original = tmp_path / "disk.img"
    original.write_bytes(os.urandom(2 * B + 12345))
    up = fspd("fspd upload disk.img --json")
    _ok(up)
    snap = json.loads(up.stdout)["destinations"][0]["snapshot_id"]
    _ok(fspd(typed(readme_command("download", containing="--size-of"),
                   {"snap-0123456789abcdef0": snap})))
    assert (tmp_path / "back.img").read_bytes() == original.read_bytes()


async def test_deltadownload_turns_an_image_of_a_into_b_reading_only_the_changes(
        fspd: Runner, emulator: EmulatorControl, ebs: Any, tmp_path: Path) -> None:
    a, b, changes = await _lineage(emulator, ebs)
    out = tmp_path / "disk.img"
    _ok(fspd(f"fspd download {a} {out}"))
    emulator.reset_stats()
    _ok(fspd(typed(readme_command("deltadownload"),
                   {"snap-A": a, "snap-B": b, "/srv/disk.img": str(out)})))
    await assert_file_is_volume(out, emulator, ebs, b, GIB)
    # Only B's own blocks are read (the zeroed one need not be: it is known to be zeros).
    assert emulator.stats()["requests"].get("GetSnapshotBlock", 0) <= len(changes)


def _copy_line(extra: str) -> str:
    """The README's copy line with its key flag swapped for ``extra`` (``--kms-key-arn`` is
    proven in another file; the destination part is kept as typed)."""
    line = readme_command("copy")
    head = line.split(" --kms-key-arn", 1)[0]
    assert head == "fspd copy snap-A -d eu-west-1", line
    return f"{head} {extra}"


async def test_copy_encrypted_to_another_region_makes_an_encrypted_identical_copy(
        fspd: Runner, emulator: EmulatorControl, ebs: Any) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=5)
    result = fspd(typed(_copy_line("--encrypted"), {"snap-A": snap}))
    _ok(result)
    copy = _only_new_snapshot(emulator, "eu-west-1", set())
    assert copy in snapshot_ids(result.stdout)
    described = describe(emulator.url, copy, "eu-west-1")
    assert described["Encrypted"] is True and described.get("KmsKeyId"), described
    for index in await listed(ebs, snap):
        assert emulator.image(copy, "eu-west-1", index * B, B) == \
            emulator.image(snap, "us-east-1", index * B, B), f"block {index}"


def test_copy_with_a_tag_tags_the_copy(fspd: Runner, emulator: EmulatorControl) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=6)
    _ok(fspd(typed(_copy_line("--tag team=storage --tag env=prod"), {"snap-A": snap})))
    copy = _only_new_snapshot(emulator, "eu-west-1", set())
    described = describe(emulator.url, copy, "eu-west-1")
    assert tags_of(described)["team"] == "storage" and tags_of(described)["env"] == "prod"
    assert described["Encrypted"] is False


def test_fanout_reads_once_and_makes_one_identical_snapshot_per_region(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", LAYOUT, seed=7)
    line = readme_command("fanout")
    _ok(fspd(line))
    regions = line.split()[3:]
    assert regions == ["us-west-2", "eu-west-1", "ap-southeast-2"]
    by_region = emulator.stats()["by_region"]
    for region in regions:
        snap = _only_new_snapshot(emulator, region, set())
        assert emulator.image(snap, region, 0, len(image)) == image
        assert by_region[region]["PutSnapshotBlock"] == NONZERO  # each block put once there
    assert "us-east-1" not in {s["region"] for s in emulator.snapshots()}


async def test_multiclone_fetches_each_block_once_for_every_target(
        fspd: Runner, emulator: EmulatorControl, ebs: Any, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=8)
    targets = [tmp_path / "xvdf", tmp_path / "xvdg"]
    _ok(fspd(typed(readme_command("multiclone"),
                   {"snap-A": snap, "/dev/xvdf": str(targets[0]),
                    "/dev/xvdg": str(targets[1])})))
    for target in targets:
        await assert_file_is_volume(target, emulator, ebs, snap, GIB)
    assert emulator.stats()["requests"]["GetSnapshotBlock"] == len(await listed(ebs, snap))


@pytest.fixture
def immutable_file(tmp_path: Path) -> Iterator[Path]:
    """A file nobody may write, root included (``chattr +i``; ext4, xfs, btrfs…)."""
    path = tmp_path / "immutable.img"
    path.write_bytes(b"")
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not supported here")
    yield path
    subprocess.run(["chattr", "-i", str(path)], check=True)


async def test_multiclone_drop_failed_finishes_the_other_targets(
        fspd: Runner, emulator: EmulatorControl, ebs: Any, tmp_path: Path,
        immutable_file: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=9)
    good = tmp_path / "xvdf"
    result = fspd(typed(readme_command("multiclone"),
                        {"snap-A": snap, "/dev/xvdf": str(good),
                         "/dev/xvdg": str(immutable_file)}))
    _ok(result)
    await assert_file_is_volume(good, emulator, ebs, snap, GIB)
    assert immutable_file.stat().st_size == 0
    assert "failed" in result.stdout + result.stderr, (result.stdout, result.stderr)
    assert emulator.stats()["requests"]["GetSnapshotBlock"] == len(await listed(ebs, snap))


DRY_RUNS = [
    "fspd list {a} --dry-run",
    "fspd diff {a} {b} --dry-run",
    "fspd download {a} out.img --dry-run",
    "fspd deltadownload {a} {b} out.img --dry-run",
    "fspd upload disk.img --region us-east-1 --tag team=storage --dry-run",
    "fspd copy {a} -d eu-west-1 --encrypted --dry-run",
    "fspd fanout disk.img us-west-2 eu-west-1 ap-southeast-2 --dry-run",
    "fspd multiclone {a} xvdf xvdg --drop-failed --dry-run",
]


async def test_dry_run_of_every_transfer_verb_sends_no_data_request_and_writes_nothing(
        fspd: Runner, emulator: EmulatorControl, ebs: Any, tmp_path: Path) -> None:
    a, b, _ = await _lineage(emulator, ebs)
    make_image(tmp_path / "disk.img", LAYOUT, seed=10)
    snapshots = emulator.snapshots()
    for command in DRY_RUNS:
        emulator.reset_stats()
        result = fspd(command.format(a=a, b=b))
        _ok(result)
        assert data_requests(emulator.stats()) == {}, (command, emulator.stats()["requests"])
        assert "blocks" in result.stdout, (command, result.stdout)
    assert emulator.snapshots() == snapshots
    assert sorted(os.listdir(tmp_path)) == ["disk.img"]


def test_upload_round_trips_through_download(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    """upload then download: the image, then zeros to the volume's end."""
    image = make_image(tmp_path / "disk.img", LAYOUT, seed=11)
    _ok(fspd(readme_command("upload")))
    snap = _only_new_snapshot(emulator, "us-east-1", set())
    _ok(fspd(f"fspd download {snap} back.img"))
    assert_volume_file(tmp_path / "back.img", image)


async def test_a_dropped_target_that_never_opened_does_not_stop_a_resumable_run(
        fspd: Runner, emulator: EmulatorControl, ebs: Any, tmp_path: Path,
        immutable_file: Path) -> None:
    """The same with a state directory: the checkpoint journals only the open target."""
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=12)
    good = tmp_path / "xvdf"
    (tmp_path / "job.toml").write_text(
        f'verb = "multiclone"\nsnapshot_id = "{snap}"\n'
        f'paths = ["{good}", "{immutable_file}"]\non_destination_failure = "drop"\n')
    result = fspd(f"fspd run job.toml --state-dir {tmp_path / 'state'} --json")
    _ok(result)
    states = {d["destination"]: d["state"] for d in json.loads(result.stdout)["destinations"]}
    assert sorted(states.values()) == ["completed", "failed"], states
    await assert_file_is_volume(good, emulator, ebs, snap, GIB)


# --- fspd run JOB --state-dir DIR, with the example job files -----------------------------

def _example(name: str, **values: str) -> str:
    """A job file of config/examples/ with its ${placeholders} filled in."""
    text = (ROOT / "config" / "examples" / name).read_text(encoding="utf-8")
    for key, value in values.items():
        assert "${" + key + "}" in text, (name, key)
        text = text.replace("${" + key + "}", value)
    assert "${" not in text, text
    return text


def _run_line(home: Path) -> str:
    """The README's run line as a shell would pass it: ``~`` is HOME (here ``home``)."""
    line = readme_command("run")
    assert " ~/" in line, line
    return line.replace(" ~/", f" {home}/")


@pytest.mark.parametrize("example", ["download.toml", "upload.toml", "copy-region.toml"])
async def test_run_with_a_state_dir_runs_each_example_job_file(
        fspd: Runner, emulator: EmulatorControl, ebs: Any, tmp_path: Path,
        example: str) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=13)
    image = make_image(tmp_path / "disk.img", LAYOUT, seed=13)
    out = tmp_path / "web01.img"
    job = _example(example, **{k: v for k, v in {
        "source_snapshot_id": snap, "endpoint_url": emulator.url, "download_path": str(out),
        "image_path": str(tmp_path / "disk.img")}.items()
        if "${" + k + "}" in (ROOT / "config" / "examples" / example).read_text()})
    (tmp_path / "job.toml").write_text(job)
    name = tomllib.loads(job)["name"]
    result = fspd(_run_line(tmp_path), extra_env={"HOME": str(tmp_path)})
    _ok(result)
    if example == "download.toml":
        await assert_file_is_volume(out, emulator, ebs, snap, GIB)
    elif example == "upload.toml":
        new = _only_new_snapshot(emulator, "us-east-1", {snap})
        assert emulator.image(new, length=len(image)) == image
        assert tags_of(describe(emulator.url, new))["origin"] == "fspd-demo"
        assert describe(emulator.url, new)["Description"] == "uploaded by fspd demo"
    else:
        copy = _only_new_snapshot(emulator, "us-west-2", set())
        for index in await listed(ebs, snap):
            assert emulator.image(copy, "us-west-2", index * B, B) == \
                emulator.image(snap, "us-east-1", index * B, B), f"block {index}"
    # The state directory held this job's journal, removed once the job succeeded.
    state = tmp_path / ".local" / "state" / "fspd" / name
    assert state.is_dir() and not (state / "checkpoint.json").exists()


def test_run_with_a_state_dir_resumes_after_kill_9(
        fspd: Runner, cli_env: dict[str, str], emulator: EmulatorControl,
        tmp_path: Path) -> None:
    """"resumes if cut off": kill -9 once the journal claims written blocks, run the same
    line again; it reads only the rest."""
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.1, seed=14)
    out = tmp_path / "web01.img"
    (tmp_path / "job.toml").write_text(_example(
        "download.toml", source_snapshot_id=snap, endpoint_url=emulator.url,
        download_path=str(out)))
    (tmp_path / "slow.toml").write_text("[transfer]\nfetch_concurrency = 2\n"
                                        "checkpoint_interval_s = 0.1\n" + TEST_AWS_CONFIG)
    env = {**cli_env, "HOME": str(tmp_path), "FSPD_CONFIG": str(tmp_path / "slow.toml")}
    emulator.faults(latency_ms=50, operations=["GetSnapshotBlock"])
    proc = subprocess.Popen(fspd_argv(_run_line(tmp_path)), cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoint = tmp_path / ".local" / "state" / "fspd" / "demo-download" / "checkpoint.json"
    try:
        wait_for(lambda: durable_blocks(checkpoint) >= 3 or proc.poll() is not None, 60,
                 "the journal to claim written blocks")
        assert proc.poll() is None, proc.communicate()
    finally:
        proc.kill()
        proc.communicate()
    emulator.clear_faults()
    emulator.reset_stats()
    result = fspd(_run_line(tmp_path) + " --json",
                  extra_env={"HOME": str(tmp_path), "FSPD_CONFIG": str(tmp_path / "slow.toml")})
    _ok(result)
    report = json.loads(result.stdout)
    assert report["resumed"] is True and report["blocks_resumed"] >= 3
    assert emulator.stats()["requests"]["GetSnapshotBlock"] == \
        report["blocks_done"] - report["blocks_resumed"]
    assert_same_as_snapshot(out, emulator, snap)


def assert_same_as_snapshot(path: Path, emulator: EmulatorControl, snap: str) -> None:
    size = path.stat().st_size
    assert size == GIB
    with path.open("rb") as f:
        for offset in range(0, size, 128 << 20):
            assert f.read(128 << 20) == emulator.image(snap, offset=offset,
                                                        length=128 << 20), offset


def test_run_dry_run_plans_an_example_job_without_data_requests(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.02, seed=15)
    (tmp_path / "job.toml").write_text(_example(
        "copy-region.toml", source_snapshot_id=snap, endpoint_url=emulator.url))
    emulator.reset_stats()
    result = fspd(_run_line(tmp_path) + " --dry-run", extra_env={"HOME": str(tmp_path)})
    _ok(result)
    assert "dry run" in result.stdout, result.stdout
    assert data_requests(emulator.stats()) == {}
    assert emulator.snapshots(region="us-west-2") == []


# --- fspd emulator --port N ------------------------------------------------------------------

def test_emulator_on_a_given_port_answers_ebs_and_ec2(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = readme_command("emulator")
    assert line == "fspd emulator --port 8484"
    proc = subprocess.Popen(fspd_argv(line.replace("8484", str(port))), cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            if proc.poll() is not None:
                raise AssertionError(proc.communicate())
            try:
                EmulatorControl(url, timeout=2).config()
            except OSError:
                return False
            return True

        wait_for(answers, 30, "the emulator to answer")
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=url)
        assert "us-east-1" in {r["RegionName"] for r in ec2.describe_regions()["Regions"]}
        ebs = boto3.client("ebs", region_name="us-east-1", endpoint_url=url)
        started = ebs.start_snapshot(VolumeSize=1)
        assert started["Status"] == "pending"
        assert EmulatorControl(url).snapshots()[0]["id"] == started["SnapshotId"]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "Traceback" not in err, err


# --- every line and every verb is proven somewhere ----------------------------------------

# Where each README "Using it" line and each verb of `fspd --help` is run as typed.
PROVEN = {
    "upload": "tests/cli/test_readme_transfer.py", "list": "tests/cli/test_readme_transfer.py",
    "diff": "tests/cli/test_readme_transfer.py",
    "download": "tests/cli/test_readme_transfer.py",
    "deltadownload": "tests/cli/test_readme_transfer.py",
    "copy": "tests/cli/test_readme_transfer.py (--encrypted, --tag)",
    "fanout": "tests/cli/test_readme_transfer.py",
    "multiclone": "tests/cli/test_readme_transfer.py",
    "run": "tests/cli/test_readme_transfer.py",
    "emulator": "tests/cli/test_readme_transfer.py",
    "movetos3": "tests/cli/test_readme_archive.py",
    "getfroms3": "tests/cli/test_readme_archive.py",
    "verify": "tests/cli/test_readme_archive.py",
    "submit": "tests/cli/test_readme_daemon.py", "status": "tests/cli/test_readme_daemon.py",
    "watch": "tests/cli/test_readme_daemon.py", "cancel": "tests/cli/test_readme_daemon.py",
    "pause": "tests/cli/test_readme_daemon.py", "resume": "tests/cli/test_readme_daemon.py",
    "bandwidth": "tests/cli/test_readme_daemon.py",
    "serve": "tests/cli/test_readme_daemon.py (and tests/daemon/)",
    "demo": "tests/daemon/test_demo_and_units.py",
    "sync": "tests/cli/test_wrong_results.py",
    "completion": "tests/cli/test_cli_conventions.py",
    "ui": "tests/cli/test_web_view_cli.py",
    "analyze": "tests/cli/test_analyze.py",
    "fleet": "tests/fleet/test_fleet_cli.py",
}


def test_every_readme_line_and_help_verb_is_proven() -> None:
    help_text = subprocess.run(fspd_argv("fspd --help"), capture_output=True, text=True,
                               check=True).stdout
    verbs = re.findall(r"^    (\w+)\s", help_text, re.MULTILINE)
    assert "run" in verbs and "emulator" in verbs, help_text
    readme_verbs = [line.split()[1] for line in using_it_lines()]
    assert sorted(set(verbs) | set(readme_verbs)) == sorted(PROVEN)
