"""Fixtures for archive tests: a bucket in moto's S3 server (a separate process, over HTTP)."""

from __future__ import annotations

import pytest

from tests.s3._support import BUCKET, s3_client


@pytest.fixture
def bucket(moto: str) -> str:
    s3_client(moto).create_bucket(Bucket=BUCKET)
    return BUCKET
