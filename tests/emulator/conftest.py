"""Fixtures only the emulator tests need (the shared ones live in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ._blocks import aws_client


@pytest.fixture
async def raw_ebs(emulator: Any) -> AsyncIterator[Any]:
    """An EBS client with botocore's client-side parameter validation off, so out-of-range
    values (VolumeSize 0, Timeout 9, maxResults 99) reach the emulator, which must reject
    them itself the way AWS does."""
    async with aws_client("ebs", emulator.url, parameter_validation=False) as client:
        yield client


@pytest.fixture
async def ebs1(emulator: Any) -> AsyncIterator[Any]:
    """An EBS client (us-east-1) that makes exactly ONE attempt per call. The shared ``ebs``
    fixture's ``retries={"max_attempts": 1}`` still allows one retry (botocore counts retries
    there), which would double every 500/throttle the fault tests count."""
    async with aws_client("ebs", emulator.url) as client:
        yield client


@pytest.fixture(autouse=True)
def _quota_free_by_default(request: pytest.FixtureRequest) -> None:
    """The emulator's defaults enforce AWS's quotas (e.g. StartSnapshot/CompleteSnapshot 10/s,
    List* 50/s with a small burst). Tests about other rules run many calls back to back with no
    retries, so they switch throttling off; the throttling tests switch it back on and set the
    rates they need."""
    if "emulator" in request.fixturenames:
        request.getfixturevalue("emulator").config(throttling=False)
