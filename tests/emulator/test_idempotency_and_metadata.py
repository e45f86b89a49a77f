"""StartSnapshot ClientToken idempotency; tags, description, encryption and KMS metadata."""

from __future__ import annotations

from ._blocks import block, expect_error, make_snapshot

KMS = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
TAGS = [{"Key": "Name", "Value": "fspd-test"}, {"Key": "team", "Value": "storage"}]


def _tagdict(tags) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or []}


async def test_same_client_token_same_params_returns_same_snapshot(ebs):
    a = await ebs.start_snapshot(VolumeSize=1, ClientToken="tok-1", Description="same")
    b = await ebs.start_snapshot(VolumeSize=1, ClientToken="tok-1", Description="same")
    assert a["SnapshotId"] == b["SnapshotId"]
    assert b["Status"] == "pending"
    assert b["VolumeSize"] == 1


async def test_same_client_token_different_params_is_409_conflict(ebs):
    await ebs.start_snapshot(VolumeSize=1, ClientToken="tok-2")
    await expect_error(ebs.start_snapshot(VolumeSize=2, ClientToken="tok-2"),
                       "ConflictException", 409)
    await expect_error(ebs.start_snapshot(VolumeSize=1, ClientToken="tok-2",
                                          Description="changed"),
                       "ConflictException", 409)


async def test_different_client_tokens_give_different_snapshots(ebs):
    a = await ebs.start_snapshot(VolumeSize=1, ClientToken="tok-a")
    b = await ebs.start_snapshot(VolumeSize=1, ClientToken="tok-b")
    assert a["SnapshotId"] != b["SnapshotId"]


async def test_client_token_replay_does_not_create_a_second_snapshot(emulator, ebs, ec2):
    for _ in range(3):
        await ebs.start_snapshot(VolumeSize=1, ClientToken="tok-3")
    snaps = (await ec2.describe_snapshots(OwnerIds=["self"]))["Snapshots"]
    assert len(snaps) == 1
    assert len(emulator.snapshots(region="us-east-1")) == 1


async def test_client_tokens_are_scoped_per_region(emulator, ebs):
    from ._blocks import aws_client
    a = await ebs.start_snapshot(VolumeSize=1, ClientToken="tok-r")
    async with aws_client("ebs", emulator.url, region="eu-west-1") as eu:
        b = await eu.start_snapshot(VolumeSize=2, ClientToken="tok-r")
    assert a["SnapshotId"] != b["SnapshotId"]


async def test_start_returns_tags_description_kms(ebs):
    resp = await ebs.start_snapshot(VolumeSize=1, Tags=TAGS, Description="meta",
                                    Encrypted=True, KmsKeyArn=KMS)
    assert _tagdict(resp["Tags"]) == _tagdict(TAGS)
    assert resp["Description"] == "meta"
    assert resp["KmsKeyArn"] == KMS


async def test_describe_snapshots_shows_metadata(ebs, ec2):
    resp = await ebs.start_snapshot(VolumeSize=3, Tags=TAGS, Description="meta2",
                                    Encrypted=True, KmsKeyArn=KMS)
    sid = resp["SnapshotId"]
    snap = (await ec2.describe_snapshots(SnapshotIds=[sid]))["Snapshots"][0]
    assert snap["SnapshotId"] == sid
    assert snap["Encrypted"] is True
    assert snap["KmsKeyId"] == KMS
    assert snap["Description"] == "meta2"
    assert snap["VolumeSize"] == 3
    assert _tagdict(snap["Tags"]) == _tagdict(TAGS)
    assert snap["State"] == "pending"
    assert snap["OwnerId"] == resp["OwnerId"]


async def test_unencrypted_snapshot_is_described_unencrypted(ebs, ec2):
    sid = await make_snapshot(ebs, {0: block(0)})
    snap = (await ec2.describe_snapshots(SnapshotIds=[sid]))["Snapshots"][0]
    assert snap["Encrypted"] is False
    assert not snap.get("KmsKeyId")


async def test_encrypted_with_parent_is_validation_error(ebs):
    parent = await make_snapshot(ebs, {0: block(0)})
    await expect_error(ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent, Encrypted=True),
                       "ValidationException", 400)


async def test_encrypted_without_kms_key_uses_a_default_key(ebs, ec2):
    resp = await ebs.start_snapshot(VolumeSize=1, Encrypted=True)
    snap = (await ec2.describe_snapshots(SnapshotIds=[resp["SnapshotId"]]))["Snapshots"][0]
    assert snap["Encrypted"] is True


async def test_more_than_50_tags_is_rejected(ebs):
    tags = [{"Key": f"k{i}", "Value": "v"} for i in range(51)]
    await expect_error(ebs.start_snapshot(VolumeSize=1, Tags=tags), "ValidationException", 400)


async def test_child_of_encrypted_parent_is_encrypted(ebs, ec2):
    parent = await make_snapshot(ebs, {0: block(0)}, Encrypted=True, KmsKeyArn=KMS)
    child = (await ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent))["SnapshotId"]
    snap = (await ec2.describe_snapshots(SnapshotIds=[child]))["Snapshots"][0]
    assert snap["Encrypted"] is True


async def test_client_token_replay_after_completion_returns_same_snapshot(ebs):
    first = await ebs.start_snapshot(VolumeSize=1, ClientToken="tok-done")
    await ebs.complete_snapshot(SnapshotId=first["SnapshotId"], ChangedBlocksCount=0)
    again = await ebs.start_snapshot(VolumeSize=1, ClientToken="tok-done")
    assert again["SnapshotId"] == first["SnapshotId"]
