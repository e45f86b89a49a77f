"""Commands typed as the README shows them must do what they say (issue 11, items 1–4): the
effect is checked in the emulator (encryption, lineage, bytes, request counts), not only the
exit code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from fspd.blocks import BLOCK_SIZE
from fspd.emulator.control import EmulatorControl
from tests.images import assert_volume_file, make_image, put_snapshot

from .conftest import Runner

B = BLOCK_SIZE
GIB = 1 << 30
EAST, WEST = "us-east-1", "eu-west-1"
KMS = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def _json(result: Any) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _record(emulator: EmulatorControl, snapshot_id: str, region: str) -> dict[str, Any]:
    return next(s for s in emulator.snapshots(region) if s["id"] == snapshot_id)


def _image_digest(emulator: EmulatorControl, snapshot_id: str, region: str,
                  size: int = GIB) -> str:
    """SHA-256 of the whole volume as the emulator reads it (in 64 MiB pieces)."""
    h = hashlib.sha256()
    for offset in range(0, size, 64 << 20):
        h.update(emulator.image(snapshot_id, region=region, offset=offset,
                                length=min(64 << 20, size - offset)))
    return h.hexdigest()


def _puts(emulator: EmulatorControl, snapshot_id: str) -> int:
    return emulator.stats()["by_snapshot"].get(snapshot_id, {}).get("PutSnapshotBlock", 0)


# --- item 2: sync ---------------------------------------------------------------------------

# Every block the lineage below writes lies in its first 8 MiB; past that all of them read
# zeros (unencrypted, never written), so comparing this much compares the volumes.
LINEAGE_SPAN = 8 << 20


async def _lineage(ebs: Any) -> tuple[str, str]:
    """A (blocks 0, 1, 2, 5) and B, its child, where blocks 1 and 3 changed and 5 became
    zeros: three changed blocks."""
    a = await put_snapshot(ebs, {0: b"a0", 1: b"a1", 2: b"a2", 5: b"a5"})
    b = await put_snapshot(ebs, {1: b"b1", 3: b"b3", 5: b""}, parent=a)
    return a, b


async def test_sync_as_typed_makes_a_copy_of_b_whose_parent_is_c(
        fspd: Runner, emulator: EmulatorControl, ebs: Any) -> None:
    a, b = await _lineage(ebs)
    c = _json(fspd(f"fspd copy {a} -d {WEST} --json"))["destinations"][0]["snapshot_id"]
    emulator.reset_stats()
    result = _json(fspd(f"fspd sync {a} {b} {c} -d {WEST} --json"))
    d = result["destinations"][0]["snapshot_id"]
    record = _record(emulator, d, WEST)
    assert record["parent"] == c and record["status"] == "completed"
    assert _image_digest(emulator, d, WEST, LINEAGE_SPAN) == _image_digest(
        emulator, b, EAST, LINEAGE_SPAN)
    assert _puts(emulator, d) == 3  # only the changed blocks


async def test_sync_from_a_job_file_with_the_verb_shorthand(
        fspd: Runner, emulator: EmulatorControl, ebs: Any, tmp_path: Path) -> None:
    a, b = await _lineage(ebs)
    c = _json(fspd(f"fspd copy {a} -d {WEST} --json"))["destinations"][0]["snapshot_id"]
    (tmp_path / "sync.toml").write_text(
        f'verb = "sync"\nbase_snapshot_id = "{a}"\nsnapshot_id = "{b}"\n'
        f'parent_snapshot_id = "{c}"\ndestination_region = "{WEST}"\n')
    emulator.reset_stats()
    d = _json(fspd("fspd run sync.toml --json"))["destinations"][0]["snapshot_id"]
    assert _record(emulator, d, WEST)["parent"] == c
    assert _image_digest(emulator, d, WEST, LINEAGE_SPAN) == _image_digest(
        emulator, b, EAST, LINEAGE_SPAN)
    assert _puts(emulator, d) == 3


# --- item 1: a KMS key means an encrypted snapshot --------------------------------------------

def _start_snapshot_calls(emulator: EmulatorControl) -> int:
    return emulator.stats()["requests"].get("StartSnapshot", 0)


def test_copy_with_a_kms_key_makes_a_snapshot_encrypted_with_that_key(
        fspd: Runner, emulator: EmulatorControl) -> None:
    snap = emulator.synthetic(region=EAST, volume_size=1, allocation="sparse", density=0.01,
                              seed=11)
    copy = _json(fspd(f"fspd copy {snap} -d {WEST} --kms-key-arn {KMS} --json"))
    record = _record(emulator, copy["destinations"][0]["snapshot_id"], WEST)
    assert record["encrypted"] is True and record["kms_key_arn"] == KMS
    assert record["sse_type"] == "sse-kms"


async def test_upload_with_a_kms_key_makes_a_snapshot_encrypted_with_that_key(
        fspd: Runner, emulator: EmulatorControl, ec2: Any, tmp_path: Path) -> None:
    key = KMS.replace(WEST, EAST)
    make_image(tmp_path / "disk.img", "DZD", seed=12)
    up = _json(fspd(f"fspd upload disk.img --kms-key-arn {key} --json"))
    snap = up["destinations"][0]["snapshot_id"]
    described = (await ec2.describe_snapshots(SnapshotIds=[snap]))["Snapshots"][0]
    assert described["Encrypted"] is True and described["KmsKeyId"] == key


def test_no_encrypted_with_a_kms_key_is_bad_input_naming_both_flags(
        fspd: Runner, emulator: EmulatorControl) -> None:
    snap = emulator.synthetic(region=EAST, volume_size=1, allocation="sparse", density=0.01)
    emulator.reset_stats()
    result = fspd(f"fspd copy {snap} -d {WEST} --kms-key-arn {KMS} --no-encrypted")
    assert result.returncode == 2
    assert "--kms-key-arn" in result.stderr and "--no-encrypted" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert emulator.stats()["requests"] == {}


def test_job_file_with_encrypted_false_and_a_kms_key_is_bad_input_naming_both_fields(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    make_image(tmp_path / "disk.img", "D", seed=13)
    (tmp_path / "job.toml").write_text(
        f'[source]\ntype = "file"\npath = "{tmp_path / "disk.img"}"\n'
        f'[[destinations]]\ntype = "ebs"\nencrypted = false\nkms_key_arn = "{KMS}"\n')
    emulator.reset_stats()
    result = fspd("fspd run job.toml")
    assert result.returncode == 2
    assert "destinations[0].encrypted" in result.stderr and "kms_key_arn" in result.stderr
    assert emulator.stats()["requests"] == {}


def test_upload_with_a_parent_and_a_kms_key_is_bad_input_before_any_request(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    """A child snapshot takes its parent's encryption; EBS refuses encryption fields with a
    parent, so fspd says so instead of starting anything."""
    parent = emulator.synthetic(region=EAST, volume_size=1, allocation="sparse", density=0.01)
    make_image(tmp_path / "disk.img", "D", seed=14)
    key = KMS.replace(WEST, EAST)
    emulator.reset_stats()
    for flags in (f"--kms-key-arn {key}", "--encrypted", "--no-encrypted"):
        result = fspd(f"fspd upload disk.img --parent {parent} {flags}")
        assert result.returncode == 2, result.stderr
        assert "--parent" in result.stderr and flags.split()[0] in result.stderr
    assert _start_snapshot_calls(emulator) == 0


# --- item 3: upload onto a larger parent --------------------------------------------------------

@pytest.mark.parametrize("parent_gib", [1, 2])
def test_upload_of_a_small_file_onto_a_larger_parent_reads_zeros_past_the_file(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path, parent_gib: int) -> None:
    """The parent (data scattered all over its 1 or 2 GiB) is bigger than the file (3 blocks,
    1 GiB once rounded): none of its blocks past the file's end may show through in the
    child, which is as large as its parent."""
    parent = emulator.synthetic(region=EAST, volume_size=parent_gib, allocation="sparse",
                                density=0.05, seed=21)
    image = make_image(tmp_path / "small.img", "DZT", seed=22)
    up = _json(fspd(f"fspd upload small.img --parent {parent} --json"))
    child = up["destinations"][0]["snapshot_id"]
    record = _record(emulator, child, EAST)
    assert record["parent"] == parent and record["volume_size"] == parent_gib
    assert fspd(f"fspd download {child} out.img").returncode == 0
    assert_volume_file(tmp_path / "out.img", image, volume_size=parent_gib * GIB)


# --- item 4: --dry-run plans what the run sends ---------------------------------------------

# Data, written zeros, holes, compressible data and a partial last block.
SPARSE_LAYOUT = "DZHHDCZZHDHHZDZT"


def _planned_and_sent(fspd: Runner, emulator: EmulatorControl, command: str
                      ) -> tuple[dict[str, Any], int]:
    """(the dry run's plan, the PutSnapshotBlock requests the real run then sent)."""
    emulator.reset_stats()
    plan = _json(fspd(f"{command} --dry-run --json"))["plan"]
    assert emulator.stats()["requests"].get("PutSnapshotBlock", 0) == 0
    _json(fspd(f"{command} --json"))
    return plan, emulator.stats()["requests"].get("PutSnapshotBlock", 0)


@pytest.mark.parametrize("command", [
    "fspd upload disk.img",
    "fspd upload disk.img --encrypted",
    "fspd upload disk.img --parent {parent}",
    "fspd fanout disk.img us-west-2 eu-west-1",
])
def test_dry_run_of_a_sparse_image_plans_the_puts_the_run_sends(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path, command: str) -> None:
    make_image(tmp_path / "disk.img", SPARSE_LAYOUT, seed=31)
    parent = emulator.synthetic(region=EAST, volume_size=1, allocation="sparse", density=0.02,
                                seed=32)
    plan, sent = _planned_and_sent(fspd, emulator, command.format(parent=parent))
    assert sent > 0
    assert plan["put_requests"] == sent
    assert plan["estimated_cost_usd"] == pytest.approx(
        (plan["list_requests"] * 0.0006 + plan["get_requests"] * 0.003 + sent * 0.006) / 1000,
        abs=1e-9)


# --- item 13, fspd's side: no encryption fields with a parent ---------------------------------

async def test_an_encrypted_chain_copy_sends_the_key_once_and_children_inherit_it(
        fspd: Runner, emulator: EmulatorControl, ebs: Any, tmp_path: Path) -> None:
    """The first copy is encrypted with the key; every later step has a parent, so it must
    send neither Encrypted nor KmsKeyArn (the emulator, like EBS, refuses them) and inherits."""
    a, b = await _lineage(ebs)
    c = await put_snapshot(ebs, {4: b"c4"}, parent=b)
    (tmp_path / "chain.toml").write_text(
        f'[source]\ntype = "ebs-chain"\nsnapshot_ids = ["{a}", "{b}", "{c}"]\n'
        f'[[destinations]]\ntype = "ebs"\nregion = "{WEST}"\nkms_key_arn = "{KMS}"\n')
    result = _json(fspd("fspd run chain.toml --json"))
    copies = [step["snapshot_id"] for step in result["steps"]]
    assert len(copies) == 3
    for copy in copies:
        record = _record(emulator, copy, WEST)
        assert record["encrypted"] is True and record["kms_key_arn"] == KMS
    assert [_record(emulator, x, WEST)["parent"] for x in copies] == [None, *copies[:2]]
