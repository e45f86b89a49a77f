"""copy, sync, incremental chains, fanout and multiclone: one source read once, N results,
each byte-identical; a failing destination is named and does not spoil the others."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from fspd.blocks import BLOCK_SIZE
from fspd.emulator.control import EmulatorControl
from fspd.errors import BadInput, PermissionProblem
from tests.engine._support import (
    assert_volume_file,
    make_image,
    put_snapshot,
    run,
    same_volume,
)

B = BLOCK_SIZE
WEST = "eu-west-1"


def _rand(rnd: random.Random, n: int = B) -> bytes:
    return rnd.randbytes(n)


async def _copy(emulator: EmulatorControl, snap: str, region: str = WEST,
                **dest: Any) -> dict[str, Any]:
    return await run({
        "source": {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url},
        "destinations": [{"type": "ebs", "region": region, "endpoint_url": emulator.url,
                          **dest}]})


async def test_copy_to_another_region_is_byte_identical(
        emulator: EmulatorControl, ebs: Any) -> None:
    rnd = random.Random(51)
    src = await put_snapshot(ebs, {0: _rand(rnd), 2: b"", 3: _rand(rnd), 5: _rand(rnd, 1000)},
                             Description="web01 root", Tags=[{"Key": "app", "Value": "web"}])
    result = await _copy(emulator, src)
    copy = result["destinations"][0]["snapshot_id"]
    same_volume(emulator, (src, "us-east-1"), (copy, WEST), range(8))
    record = next(s for s in emulator.snapshots(region=WEST) if s["id"] == copy)
    assert record["status"] == "completed" and record["volume_size"] == 1
    assert record["description"] == "web01 root"
    assert record["tags"]["app"] == "web"
    assert record["tags"]["fspd:source-snapshot"] == src
    assert not emulator.snapshots(region="us-east-1")[0]["encrypted"]


async def test_copy_of_an_encrypted_snapshot_is_encrypted_with_the_given_key(
        emulator: EmulatorControl, ebs: Any) -> None:
    rnd = random.Random(52)
    src = await put_snapshot(ebs, {0: _rand(rnd), 1: b"", 2: _rand(rnd, 777)}, Encrypted=True)
    key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    copy = (await _copy(emulator, src, kms_key_arn=key))["destinations"][0]["snapshot_id"]
    record = next(s for s in emulator.snapshots(region=WEST) if s["id"] == copy)
    assert record["encrypted"] is True
    assert record["kms_key_arn"] == key
    # Written blocks (zeros included) match; unwritten ones are random in both, as in AWS.
    same_volume(emulator, (src, "us-east-1"), (copy, WEST), range(3))


async def test_a_retried_copy_with_the_same_client_token_lands_on_the_same_snapshot(
        emulator: EmulatorControl, ebs: Any) -> None:
    src = await put_snapshot(ebs, {0: _rand(random.Random(53))})
    first = await _copy(emulator, src, client_token="migration-42")
    again = await _copy(emulator, src, client_token="migration-42")
    assert again["destinations"][0]["snapshot_id"] == first["destinations"][0]["snapshot_id"]
    assert len(emulator.snapshots(region=WEST)) == 1


def _evolve(rnd: random.Random, blocks: int) -> dict[int, bytes]:
    """Random changes for a child: overwrites, blocks zeroed, new blocks (some past the
    parent's end when the child is larger)."""
    changes: dict[int, bytes] = {}
    for index in rnd.sample(range(blocks), k=min(blocks, 6)):
        changes[index] = b"" if rnd.random() < 0.3 else _rand(rnd)
    return changes


@pytest.mark.parametrize("seed", [1, 2])
async def test_sync_makes_a_copy_of_b_from_a_copy_of_a(
        emulator: EmulatorControl, ebs: Any, seed: int) -> None:
    rnd = random.Random(seed)
    a = await put_snapshot(ebs, {i: _rand(rnd) for i in rnd.sample(range(12), 7)})
    changes = _evolve(rnd, 12)
    changes[2048 + 3] = _rand(rnd)  # B is larger than A: a block past A's end
    b = await put_snapshot(ebs, changes, parent=a, volume_size=2)
    c = (await _copy(emulator, a))["destinations"][0]["snapshot_id"]
    result = await run({
        "source": {"type": "ebs", "base_snapshot_id": a, "snapshot_id": b,
                   "endpoint_url": emulator.url},
        "destinations": [{"type": "ebs", "region": WEST, "endpoint_url": emulator.url,
                          "parent_snapshot_id": c}]})
    assert result["verb"] == "sync"
    d = result["destinations"][0]["snapshot_id"]
    record = next(s for s in emulator.snapshots(region=WEST) if s["id"] == d)
    assert record["volume_size"] == 2 and record["parent"] == c
    same_volume(emulator, (b, "us-east-1"), (d, WEST), range(12))
    same_volume(emulator, (b, "us-east-1"), (d, WEST), range(2048, 2048 + 6))


async def test_sync_writes_zeros_for_blocks_absent_from_b(
        emulator: EmulatorControl, ebs: Any) -> None:
    """Siblings A and B of one parent: blocks A wrote that B does not have must read as
    B reads them (the parent's bytes), not as A's."""
    rnd = random.Random(55)
    p = await put_snapshot(ebs, {0: _rand(rnd), 1: _rand(rnd)})
    a = await put_snapshot(ebs, {1: _rand(rnd), 3: _rand(rnd)}, parent=p)
    b = await put_snapshot(ebs, {0: _rand(rnd)}, parent=p)
    c = (await _copy(emulator, a))["destinations"][0]["snapshot_id"]
    result = await run({
        "source": {"type": "ebs", "base_snapshot_id": a, "snapshot_id": b,
                   "endpoint_url": emulator.url},
        "destinations": [{"type": "ebs", "region": WEST, "endpoint_url": emulator.url,
                          "parent_snapshot_id": c}]})
    d = result["destinations"][0]["snapshot_id"]
    same_volume(emulator, (b, "us-east-1"), (d, WEST), range(5))


async def test_incremental_chain_is_brought_over_in_one_job_then_only_the_new_step(
        emulator: EmulatorControl, ebs: Any) -> None:
    rnd = random.Random(56)
    chain = [await put_snapshot(ebs, {i: _rand(rnd) for i in range(6)})]
    for _ in range(3):
        chain.append(await put_snapshot(ebs, _evolve(rnd, 8), parent=chain[-1]))
    job = {"source": {"type": "ebs-chain", "snapshot_ids": chain, "endpoint_url": emulator.url},
           "destinations": [{"type": "ebs", "region": WEST, "endpoint_url": emulator.url}]}
    result = await run(job)
    assert result["verb"] == "sync" and result["already_copied"] == 0
    assert len(result["steps"]) == 4
    same_volume(emulator, (chain[-1], "us-east-1"), (result["latest_copy"], WEST), range(8))
    # A week later: one more snapshot in the source; only it is brought over.
    chain.append(await put_snapshot(ebs, _evolve(rnd, 8), parent=chain[-1]))
    emulator.reset_stats()
    again = await run({**job, "source": {**job["source"], "snapshot_ids": chain}})
    assert again["already_copied"] == 4 and len(again["steps"]) == 1
    same_volume(emulator, (chain[-1], "us-east-1"), (again["latest_copy"], WEST), range(8))
    reads = emulator.stats()["by_snapshot"]
    assert all(reads.get(s, {}).get("GetSnapshotBlock", 0) == 0 for s in chain[:-1])


async def test_fanout_to_three_regions_reads_each_block_once(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", "DDHZDT", seed=57)
    regions = ["us-west-2", WEST, "ap-southeast-2"]
    result = await run({
        "source": {"type": "file", "path": str(tmp_path / "disk.img")},
        "destinations": [{"type": "ebs", "region": r, "endpoint_url": emulator.url}
                         for r in regions]})
    assert result["verb"] == "fanout"
    assert result["source_reads"] == 5  # six blocks, each read once; the hole never
    for dest, region in zip(result["destinations"], regions, strict=True):
        assert dest["region"] == region
        assert emulator.image(dest["snapshot_id"], region=region, length=len(image)) == image


async def test_fanout_with_a_region_listed_twice_or_unknown_fails_before_starting(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    make_image(tmp_path / "disk.img", "D", seed=58)
    dest = {"type": "ebs", "region": WEST, "endpoint_url": emulator.url}
    with pytest.raises(BadInput, match=r"destinations\[1\].*listed twice"):
        await run({"source": {"type": "file", "path": str(tmp_path / "disk.img")},
                   "destinations": [dest, dest]})
    with pytest.raises(BadInput, match=r"destinations\[1\].region.*not enabled for this account"):
        await run({"source": {"type": "file", "path": str(tmp_path / "disk.img")},
                   "destinations": [dest, {**dest, "region": "xx-nowhere-9"}]})
    assert emulator.snapshots(region=WEST) == []


async def test_multiclone_to_three_files_fetches_each_block_once(
        emulator: EmulatorControl, ebs: Any, tmp_path: Path) -> None:
    rnd = random.Random(59)
    blocks = {0: _rand(rnd), 1: b"", 4: _rand(rnd), 9: _rand(rnd, 4096)}
    src = await put_snapshot(ebs, blocks)
    paths = [tmp_path / f"clone{i}.img" for i in range(3)]
    paths[1].write_bytes(b"\x5a" * (3 * B))  # a used target
    emulator.reset_stats()
    result = await run({
        "source": {"type": "ebs", "snapshot_id": src, "endpoint_url": emulator.url},
        "destinations": [{"type": "file", "path": str(p)} for p in paths]})
    assert result["verb"] == "multiclone"
    assert emulator.stats()["by_snapshot"][src]["GetSnapshotBlock"] == len(blocks)
    expected = emulator.image(src, length=10 * B)
    for p in paths:
        assert_volume_file(p, expected)


async def test_a_region_without_permission_is_named_and_the_others_complete(
        emulator: EmulatorControl, tmp_path: Path) -> None:
    image = make_image(tmp_path / "disk.img", "DDZD", seed=60)
    emulator.config(deny=[{"operations": ["PutSnapshotBlock"], "region": WEST}])
    regions = ["us-west-2", WEST, "ap-southeast-2"]
    job = {"source": {"type": "file", "path": str(tmp_path / "disk.img")},
           "destinations": [{"type": "ebs", "region": r, "endpoint_url": emulator.url,
                             "name": f"dr-{r}"} for r in regions],
           "on_destination_failure": "drop"}
    result = await run(job)
    by_name = {d["destination"]: d for d in result["destinations"]}
    assert by_name[f"dr-{WEST}"]["state"] == "failed"
    assert "ebs:PutSnapshotBlock" in by_name[f"dr-{WEST}"]["error"]
    for region in ("us-west-2", "ap-southeast-2"):
        dest = by_name[f"dr-{region}"]
        assert dest["state"] == "completed"
        assert emulator.image(dest["snapshot_id"], region=region, length=len(image)) == image
    with pytest.raises(PermissionProblem, match=f"destination dr-{WEST}"):
        await run({**job, "on_destination_failure": "fail"})
