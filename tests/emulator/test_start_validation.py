"""StartSnapshot parameter ranges: VolumeSize 1–65536 GiB, Timeout 10–4320 minutes."""

from __future__ import annotations

import pytest

from ._blocks import expect_error

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
