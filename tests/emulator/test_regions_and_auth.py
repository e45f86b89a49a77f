"""Regions are separate namespaces; access keys, signatures and deny rules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fspd.emulator.control import EmulatorControl, EmulatorProcess

from ._blocks import aws_client, block, expect_error, make_snapshot, read_block, tokens

AUTH_KEY = "AKIAFSPDAUTHTEST0001"
AUTH_SECRET = "auth-test-secret-0123456789abcdefghijklmn"
AUTH_ACCOUNT = "111122223333"
OTHER_KEY = "AKIAFSPDAUTHTEST0002"
OTHER_SECRET = "other-test-secret-0123456789abcdefghijklm"
OTHER_ACCOUNT = "444455556666"
DENIED_REASONS = {"UNAUTHORIZED_ACCOUNT", "DEPENDENCY_ACCESS_DENIED"}


# --- regions (shared emulator) ---------------------------------------------------------------

async def test_snapshot_in_us_east_1_is_invisible_in_eu_west_1(emulator, ebs, ec2):
    sid = await make_snapshot(ebs, {0: block(0)})
    async with aws_client("ebs", emulator.url, region="eu-west-1") as eu_ebs, \
            aws_client("ec2", emulator.url, region="eu-west-1") as eu_ec2:
        await expect_error(eu_ebs.list_snapshot_blocks(SnapshotId=sid),
                           "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")
        await expect_error(eu_ebs.put_snapshot_block(
            SnapshotId=sid, BlockIndex=1, BlockData=block(1), DataLength=524288,
            Checksum="x", ChecksumAlgorithm="SHA256"), "ResourceNotFoundException", 404)
        await expect_error(eu_ec2.describe_snapshots(SnapshotIds=[sid]),
                           "InvalidSnapshot.NotFound", 400)
        assert (await eu_ec2.describe_snapshots(OwnerIds=["self"]))["Snapshots"] == []
    assert [s["SnapshotId"] for s in (await ec2.describe_snapshots(
        SnapshotIds=[sid]))["Snapshots"]] == [sid]


async def test_each_region_works_on_its_own(emulator):
    ids = {}
    for region in ("us-west-2", "ap-southeast-2"):
        async with aws_client("ebs", emulator.url, region=region) as client:
            sid = await make_snapshot(client, {3: block(region)})
            ids[region] = sid
            toks = await tokens(client, sid)
            data, _ = await read_block(client, sid, 3, toks[3])
            assert data == block(region)
    west = emulator.snapshots(region="us-west-2")
    assert len(west) == 1
    assert ids["us-west-2"] in repr(west)
    assert ids["ap-southeast-2"] not in repr(west)


async def test_deny_rule_fails_one_operation_in_one_region_only(emulator, ebs):
    sid_us = await make_snapshot(ebs, {0: block(0)})
    async with aws_client("ebs", emulator.url, region="eu-west-1") as eu:
        sid_eu = await make_snapshot(eu, {0: block(0)})
        emulator.config(deny=[{"operations": ["ListSnapshotBlocks"], "region": "eu-west-1"}])
        await expect_error(eu.list_snapshot_blocks(SnapshotId=sid_eu),
                           "AccessDeniedException", 403, DENIED_REASONS)
        # Other operations in that region still work.
        await eu.start_snapshot(VolumeSize=1)
    listed = await ebs.list_snapshot_blocks(SnapshotId=sid_us)
    assert [b["BlockIndex"] for b in listed["Blocks"]] == [0]


async def test_deny_rule_by_access_key(emulator):
    emulator.config(deny=[{"operations": ["StartSnapshot"], "access_key": "AKIADENIEDKEY0000001"}])
    async with aws_client("ebs", emulator.url, access_key="AKIADENIEDKEY0000001") as denied, \
            aws_client("ebs", emulator.url, access_key="AKIAALLOWEDKEY000001") as allowed:
        await expect_error(denied.start_snapshot(VolumeSize=1), "AccessDeniedException", 403)
        assert (await allowed.start_snapshot(VolumeSize=1))["Status"] == "pending"


async def test_reset_clears_deny_rules(emulator, ebs):
    emulator.config(deny=[{"operations": ["StartSnapshot"]}])
    await expect_error(ebs.start_snapshot(VolumeSize=1), "AccessDeniedException", 403)
    emulator.reset()
    assert (await ebs.start_snapshot(VolumeSize=1))["Status"] == "pending"


# --- access keys (own emulator process) ------------------------------------------------------

@pytest.fixture(scope="module")
def auth_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorControl]:
    proc = EmulatorProcess(
        data_dir=tmp_path_factory.mktemp("emulator-auth"),
        args=["--access-key", f"{AUTH_KEY}:{AUTH_SECRET}:{AUTH_ACCOUNT}",
              "--access-key", f"{OTHER_KEY}:{OTHER_SECRET}:{OTHER_ACCOUNT}"],
    )
    proc.start()
    try:
        yield EmulatorControl(proc.url)
    finally:
        proc.stop()


async def test_known_access_key_works_and_owns_snapshot(auth_emulator):
    async with aws_client("ebs", auth_emulator.url, access_key=AUTH_KEY,
                          secret_key=AUTH_SECRET) as client:
        resp = await client.start_snapshot(VolumeSize=1)
        assert resp["OwnerId"] == AUTH_ACCOUNT
        sid = resp["SnapshotId"]
        await client.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)
    async with aws_client("ec2", auth_emulator.url, access_key=AUTH_KEY,
                          secret_key=AUTH_SECRET) as ec2:
        snap = (await ec2.describe_snapshots(SnapshotIds=[sid]))["Snapshots"][0]
        assert snap["OwnerId"] == AUTH_ACCOUNT


async def test_unknown_access_key_is_access_denied(auth_emulator):
    async with aws_client("ebs", auth_emulator.url, access_key="AKIAUNKNOWNKEY000001",
                          secret_key=AUTH_SECRET) as client:
        await expect_error(client.start_snapshot(VolumeSize=1), "AccessDeniedException", 403,
                           DENIED_REASONS)


async def test_wrong_secret_is_403(auth_emulator):
    async with aws_client("ebs", auth_emulator.url, access_key=AUTH_KEY,
                          secret_key="wrong-secret-0000000000000000000000000000") as client:
        from botocore.exceptions import ClientError
        with pytest.raises(ClientError) as info:
            await client.start_snapshot(VolumeSize=1)
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403


async def test_wrong_secret_on_ec2_is_403(auth_emulator):
    async with aws_client("ec2", auth_emulator.url, access_key=AUTH_KEY,
                          secret_key="wrong-secret-0000000000000000000000000000") as client:
        from botocore.exceptions import ClientError
        with pytest.raises(ClientError) as info:
            await client.describe_regions()
        # EC2 reports a bad signature as AuthFailure (401/403 depending on the path).
        assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] in (401, 403)


async def test_signed_put_with_known_key_round_trips(auth_emulator):
    # PutSnapshotBlock's body is unsigned (v4-unsigned-body): the signature must still verify.
    async with aws_client("ebs", auth_emulator.url, access_key=AUTH_KEY,
                          secret_key=AUTH_SECRET) as client:
        sid = await make_snapshot(client, {1: block("auth")})
        toks = await tokens(client, sid)
        data, _ = await read_block(client, sid, 1, toks[1])
        assert data == block("auth")


async def test_unsigned_request_is_refused_when_keys_are_configured(auth_emulator):
    from botocore import UNSIGNED
    from botocore.exceptions import ClientError
    async with aws_client("ebs", auth_emulator.url, signature_version=UNSIGNED) as client:
        with pytest.raises(ClientError) as info:
            await client.start_snapshot(VolumeSize=1)
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] in (400, 401, 403)


async def test_deny_rule_on_ec2_operation_is_unauthorized_operation(emulator, ec2):
    emulator.config(deny=[{"operations": ["DescribeSnapshots"]}])
    await expect_error(ec2.describe_snapshots(OwnerIds=["self"]), "UnauthorizedOperation", 403)
    regions = (await ec2.describe_regions())["Regions"]
    assert regions


async def test_other_accounts_snapshot_is_not_visible(auth_emulator):
    async with aws_client("ebs", auth_emulator.url, access_key=AUTH_KEY,
                          secret_key=AUTH_SECRET) as mine:
        sid = await make_snapshot(mine, {0: block("acct")})
    async with aws_client("ebs", auth_emulator.url, access_key=OTHER_KEY,
                          secret_key=OTHER_SECRET) as theirs, \
            aws_client("ec2", auth_emulator.url, access_key=OTHER_KEY,
                       secret_key=OTHER_SECRET) as theirs_ec2:
        await expect_error(theirs.list_snapshot_blocks(SnapshotId=sid),
                           "ResourceNotFoundException", 404, "SNAPSHOT_NOT_FOUND")
        await expect_error(theirs_ec2.describe_snapshots(SnapshotIds=[sid]),
                           "InvalidSnapshot.NotFound", 400)
        other = await theirs.start_snapshot(VolumeSize=1)
        assert other["OwnerId"] == OTHER_ACCOUNT
