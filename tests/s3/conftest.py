"""Fixtures for archive tests: a bucket in moto's S3 server (a separate process, over HTTP)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import structlog

from fspd.cli import main
from tests.s3._support import BUCKET, s3_client


@pytest.fixture
def bucket(moto: str) -> str:
    s3_client(moto).create_bucket(Bucket=BUCKET)
    return BUCKET


@pytest.fixture
def fspd_cli() -> Iterator[Callable[..., int]]:
    """``fspd ARGS…`` in this process. The CLI points logging at the stream pytest captures;
    put structlog back afterwards so later tests do not log into a closed file."""
    yield lambda *args: main(["--log-level", "warning", *args])
    structlog.reset_defaults()
