"""Commands typed as the README shows them must do what they say (issue 11, items 1–4): the
effect is checked in the emulator (encryption, lineage, bytes, request counts), not only the
exit code."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from fspd.blocks import BLOCK_SIZE
from fspd.emulator.control import EmulatorControl
from tests.images import put_snapshot

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
