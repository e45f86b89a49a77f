"""EC2 query API on the emulator: DescribeSnapshots, DescribeRegions, DeleteSnapshot."""

from __future__ import annotations

import datetime as dt

from ._blocks import TEST_REGIONS, block, expect_error, make_snapshot


async def test_describe_snapshot_by_id_fields(ebs, ec2):
    started = await ebs.start_snapshot(VolumeSize=2, Description="d1",
                                       Tags=[{"Key": "Name", "Value": "one"}])
    sid = started["SnapshotId"]
    await ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)
    resp = await ec2.describe_snapshots(SnapshotIds=[sid])
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    [snap] = resp["Snapshots"]
    assert snap["SnapshotId"] == sid
    assert snap["State"] == "completed"
    assert snap["VolumeSize"] == 2
    assert snap["Description"] == "d1"
    assert snap["OwnerId"] == started["OwnerId"]
    assert snap["Encrypted"] is False
    assert snap["Progress"] == "100%"
    assert isinstance(snap["StartTime"], dt.datetime)
    assert abs((snap["StartTime"] - started["StartTime"]).total_seconds()) < 1
    assert {t["Key"]: t["Value"] for t in snap["Tags"]} == {"Name": "one"}


async def test_describe_several_ids(ebs, ec2):
    a = await make_snapshot(ebs, {0: block(0)})
    b = await make_snapshot(ebs, {0: block(1)})
    await make_snapshot(ebs, {0: block(2)})
    snaps = (await ec2.describe_snapshots(SnapshotIds=[a, b]))["Snapshots"]
    assert sorted(s["SnapshotId"] for s in snaps) == sorted([a, b])


async def test_describe_by_tag_and_status_filters(ebs, ec2):
    tagged = (await ebs.start_snapshot(VolumeSize=1,
                                       Tags=[{"Key": "job", "Value": "x"}]))["SnapshotId"]
    other = await make_snapshot(ebs, {0: block(0)}, Tags=[{"Key": "job", "Value": "y"}])
    by_tag = (await ec2.describe_snapshots(
        Filters=[{"Name": "tag:job", "Values": ["x"]}]))["Snapshots"]
    assert [s["SnapshotId"] for s in by_tag] == [tagged]
    pending = (await ec2.describe_snapshots(
        Filters=[{"Name": "status", "Values": ["pending"]}]))["Snapshots"]
    assert [s["SnapshotId"] for s in pending] == [tagged]
    completed = (await ec2.describe_snapshots(
        Filters=[{"Name": "status", "Values": ["completed"]}]))["Snapshots"]
    assert [s["SnapshotId"] for s in completed] == [other]
    both = (await ec2.describe_snapshots(
        Filters=[{"Name": "tag:job", "Values": ["x", "y"]}]))["Snapshots"]
    assert sorted(s["SnapshotId"] for s in both) == sorted([tagged, other])


async def test_describe_by_snapshot_id_filter_and_owner_self(ebs, ec2):
    a = await make_snapshot(ebs, {0: block(0)})
    await make_snapshot(ebs, {0: block(1)})
    snaps = (await ec2.describe_snapshots(
        Filters=[{"Name": "snapshot-id", "Values": [a]}]))["Snapshots"]
    assert [s["SnapshotId"] for s in snaps] == [a]
    mine = (await ec2.describe_snapshots(OwnerIds=["self"]))["Snapshots"]
    assert len(mine) == 2


async def test_describe_unknown_id_is_invalid_snapshot_not_found(ec2):
    await expect_error(ec2.describe_snapshots(SnapshotIds=["snap-0123456789abcdef0"]),
                       "InvalidSnapshot.NotFound", 400)


async def test_describe_regions_lists_default_regions(ec2):
    resp = await ec2.describe_regions()
    names = {r["RegionName"] for r in resp["Regions"]}
    assert set(TEST_REGIONS) <= names
    for region in resp["Regions"]:
        assert region["Endpoint"]


async def test_describe_regions_by_name_and_filter(ec2):
    by_name = (await ec2.describe_regions(RegionNames=["eu-west-1"]))["Regions"]
    assert [r["RegionName"] for r in by_name] == ["eu-west-1"]
    by_filter = (await ec2.describe_regions(
        Filters=[{"Name": "region-name", "Values": ["ap-southeast-2", "us-west-2"]}]))["Regions"]
    assert sorted(r["RegionName"] for r in by_filter) == ["ap-southeast-2", "us-west-2"]


async def test_delete_snapshot_then_not_found(ebs, ec2):
    sid = await make_snapshot(ebs, {0: block(0)})
    resp = await ec2.delete_snapshot(SnapshotId=sid)
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    await expect_error(ec2.describe_snapshots(SnapshotIds=[sid]), "InvalidSnapshot.NotFound", 400)
    await expect_error(ebs.list_snapshot_blocks(SnapshotId=sid), "ResourceNotFoundException",
                       404, "SNAPSHOT_NOT_FOUND")


async def test_delete_unknown_snapshot_is_not_found(ec2):
    await expect_error(ec2.delete_snapshot(SnapshotId="snap-0123456789abcdef0"),
                       "InvalidSnapshot.NotFound", 400)


async def test_deleted_parent_keeps_child_readable(ebs, ec2):
    # AWS snapshots are incremental but deleting a parent never breaks a child.
    from ._blocks import read_block, tokens
    parent = await make_snapshot(ebs, {0: block("dp0"), 1: block("dp1")})
    child = await make_snapshot(ebs, {1: block("dc1")}, ParentSnapshotId=parent)
    await ec2.delete_snapshot(SnapshotId=parent)
    toks = await tokens(ebs, child)
    assert sorted(toks) == [0, 1]
    data, _ = await read_block(ebs, child, 0, toks[0])
    assert data == block("dp0")


async def test_describe_snapshots_paginates_with_max_results(ebs, ec2):
    ids = {(await ebs.start_snapshot(VolumeSize=1))["SnapshotId"] for _ in range(7)}
    first = await ec2.describe_snapshots(OwnerIds=["self"], MaxResults=5)
    assert len(first["Snapshots"]) == 5
    assert first.get("NextToken")
    second = await ec2.describe_snapshots(OwnerIds=["self"], MaxResults=5,
                                          NextToken=first["NextToken"])
    assert not second.get("NextToken")
    got = [s["SnapshotId"] for s in first["Snapshots"] + second["Snapshots"]]
    assert sorted(got) == sorted(ids)


async def test_describe_progress_of_pending_snapshot_is_below_100(ebs, ec2):
    sid = (await ebs.start_snapshot(VolumeSize=1))["SnapshotId"]
    snap = (await ec2.describe_snapshots(SnapshotIds=[sid]))["Snapshots"][0]
    assert snap["State"] == "pending"
    assert snap["Progress"].endswith("%")
    assert int(snap["Progress"].rstrip("%")) < 100


async def test_describe_with_one_unknown_id_among_known_fails(ebs, ec2):
    sid = await make_snapshot(ebs, {0: block(0)})
    await expect_error(ec2.describe_snapshots(SnapshotIds=[sid, "snap-0123456789abcdef0"]),
                       "InvalidSnapshot.NotFound", 400)


async def test_describe_malformed_id_is_malformed_error(ec2):
    await expect_error(ec2.describe_snapshots(SnapshotIds=["snap-NOT-HEX"]),
                       "InvalidSnapshotID.Malformed", 400)
