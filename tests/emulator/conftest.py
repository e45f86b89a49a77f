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
