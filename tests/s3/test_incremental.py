"""Incremental archives: each holds the blocks changed since its parent's snapshot, and
restoring the newest of a chain gives exactly the newest snapshot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fspd.emulator.control import EmulatorControl
from fspd.errors import BadInput
from tests.s3._support import (
    GIB,
    assert_file_is_volume,
    assert_same_volume,
    put_snapshot,
    run,
    s3_client,
)


def archive(moto: str, bucket: str, prefix: str, **kw: Any) -> dict[str, Any]:
    return {"type": "s3", "bucket": bucket, "prefix": prefix, "endpoint_url": moto, **kw}


async def movetos3(emulator: EmulatorControl, moto: str, bucket: str, snap: str, prefix: str,
                   base: str | None = None, parent: str | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {"type": "ebs", "snapshot_id": snap, "endpoint_url": emulator.url}
    if base:
        source["base_snapshot_id"] = base
    dest = archive(moto, bucket, prefix, **({"parent_prefix": parent} if parent else {}))
    result = await run({"source": source, "destinations": [dest]})
    return dict(result["destinations"][0])


async def make_chain(emulator: EmulatorControl, ebs: Any) -> list[str]:
    """Three snapshots of one lineage: changed blocks, blocks that became zero, and growth."""
    s0 = await put_snapshot(ebs, {0: b"a0" * 9, 1: b"b0" * 9, 5: b"c0" * 9, 70: b"d0" * 9})
    s1 = await put_snapshot(ebs, {1: b"b1" * 9, 5: b"", 100: b"e1" * 9}, parent=s0)
    s2 = await put_snapshot(ebs, {0: b"a2" * 9, 70: b"", 2100: b"f2" * 9}, parent=s1,
                            volume_size=2)
    return [s0, s1, s2]


async def test_three_archive_chain_restores_to_exactly_the_newest_snapshot(
        emulator: EmulatorControl, ebs: Any, moto: str, bucket: str, tmp_path: Path) -> None:
    s0, s1, s2 = await make_chain(emulator, ebs)
    full = await movetos3(emulator, moto, bucket, s0, "chain/0")
    inc1 = await movetos3(emulator, moto, bucket, s1, "chain/1", base=s0, parent="chain/0")
    inc2 = await movetos3(emulator, moto, bucket, s2, "chain/2", base=s1,
                          parent=f"s3://{bucket}/chain/1")
    assert full["stored_blocks"] == 4
    # Only what changed is stored; a block that became zero is recorded as zero.
    assert (inc1["stored_blocks"], inc1["zero_blocks"]) == (2, 1)
    # The volume grew by 1 GiB: the new blocks read zeros (all but block 2100), recorded so.
    assert (inc2["stored_blocks"], inc2["zero_blocks"]) == (2, 1 + 2047)
    assert inc2["parent"] == f"s3://{bucket}/chain/1"

    out = tmp_path / "restored.img"
    got = await run({"source": archive(moto, bucket, "chain/2"),
                     "destinations": [{"type": "file", "path": str(out)}]})
    assert got["source_report"]["chain"] == [f"s3://{bucket}/chain/{i}" for i in (2, 1, 0)]
    await assert_file_is_volume(out, emulator, ebs, s2, 2 * GIB)

    back = await run({"source": archive(moto, bucket, "chain/2"),
                      "destinations": [{"type": "ebs", "endpoint_url": emulator.url}]})
    await assert_same_volume(emulator, ebs, back["destinations"][0]["snapshot_id"], s2)

    # The middle of the chain restores to its own snapshot, not the newest.
    mid = tmp_path / "mid.img"
    await run({"source": archive(moto, bucket, "chain/1"),
               "destinations": [{"type": "file", "path": str(mid)}]})
    await assert_file_is_volume(mid, emulator, ebs, s1, GIB)


async def test_a_replaced_parent_archive_is_detected(
        emulator: EmulatorControl, ebs: Any, moto: str, bucket: str, tmp_path: Path) -> None:
    s0, s1, _ = await make_chain(emulator, ebs)
    await movetos3(emulator, moto, bucket, s0, "p/0")
    await movetos3(emulator, moto, bucket, s1, "p/1", base=s0, parent="p/0")
    s3 = s3_client(moto)
    key = "p/0/manifest.jsonl"
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    s3.put_object(Bucket=bucket, Key=key, Body=body.replace(b'"origin":"', b'"origin":"x', 1))
    with pytest.raises(Exception, match=r"s3://fspd-archives/p/0 changed after s3://fspd-ar"):
        await run({"source": archive(moto, bucket, "p/1"),
                   "destinations": [{"type": "file", "path": str(tmp_path / "o.img")}]})


async def test_changed_blocks_need_the_archive_of_their_base_as_parent(
        emulator: EmulatorControl, ebs: Any, moto: str, bucket: str) -> None:
    s0, s1, s2 = await make_chain(emulator, ebs)
    with pytest.raises(BadInput, match="parent_prefix"):
        await movetos3(emulator, moto, bucket, s1, "bad/1", base=s0)
    await movetos3(emulator, moto, bucket, s0, "bad/0")
    with pytest.raises(BadInput, match=f"holds {s0}, but the changed blocks are relative "
                                       f"to {s1}"):
        await movetos3(emulator, moto, bucket, s2, "bad/2", base=s1, parent="bad/0")
    with pytest.raises(BadInput, match="already exists at s3://fspd-archives/bad/0"):
        await movetos3(emulator, moto, bucket, s0, "bad/0")
