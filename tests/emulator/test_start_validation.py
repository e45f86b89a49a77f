"""StartSnapshot parameters: VolumeSize 1–65536 GiB, Timeout 10–4320 minutes, no encryption
fields with a parent."""

from __future__ import annotations

import pytest

from ._blocks import block, expect_error, make_snapshot

VOLUME_REASONS = {"INVALID_VOLUME_SIZE", "INVALID_PARAMETER_VALUE"}


@pytest.mark.parametrize("size", [0, 65537])
async def test_volume_size_out_of_range_is_rejected(raw_ebs, size):
    await expect_error(raw_ebs.start_snapshot(VolumeSize=size), "ValidationException", 400,
                       VOLUME_REASONS)


@pytest.mark.parametrize("size", [1, 65536])
async def test_volume_size_bounds_are_accepted(ebs, size):
    resp = await ebs.start_snapshot(VolumeSize=size)
    assert resp["VolumeSize"] == size


@pytest.mark.parametrize("minutes", [9, 4321])
async def test_timeout_out_of_range_is_rejected(raw_ebs, minutes):
    await expect_error(raw_ebs.start_snapshot(VolumeSize=1, Timeout=minutes),
                       "ValidationException", 400)


@pytest.mark.parametrize("minutes", [10, 4320])
async def test_timeout_bounds_are_accepted(ebs, minutes):
    resp = await ebs.start_snapshot(VolumeSize=1, Timeout=minutes)
    assert resp["Status"] == "pending"


KMS = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


@pytest.mark.parametrize("encryption", [{"Encrypted": False}, {"Encrypted": True},
                                        {"Encrypted": True, "KmsKeyArn": KMS}])
async def test_any_encryption_field_with_a_parent_is_rejected(ebs, encryption):
    """The reference: Encrypted together with ParentSnapshotId is a ValidationException; the
    field's presence counts, whatever its value (a child takes its parent's encryption)."""
    parent = await make_snapshot(ebs, {0: block(0)})
    await expect_error(ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent, **encryption),
                       "ValidationException", 400)


async def test_a_parent_without_encryption_fields_is_accepted(ebs):
    parent = await make_snapshot(ebs, {0: block(0)})
    resp = await ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)
    assert resp["Status"] == "pending" and resp["ParentSnapshotId"] == parent
