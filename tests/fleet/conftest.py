"""The fleet's services on moto's server (SQS, DynamoDB, S3), reached as fspd reaches AWS:
through AWS_ENDPOINT_URL_SQS/_DYNAMODB/_S3."""

from __future__ import annotations

import urllib.request
from collections.abc import AsyncIterator

import pytest

from fspd.config import FleetSettings, Settings
from fspd.fleet import setup
from fspd.fleet.services import Services, open_services

BUCKET = "fleet-checkpoints"


def fleet_settings(**overrides: object) -> FleetSettings:
    values: dict[str, object] = {"queue": "fspd-jobs", "table": "fspd-jobs",
                                 "bucket": f"s3://{BUCKET}/fleet", "lease_s": 60.0,
                                 "heartbeat_s": 10.0, "max_receive_count": 3,
                                 "receive_wait_s": 1}
    values.update(overrides)
    return FleetSettings.model_validate(values)


def make_bucket(moto_url: str, name: str = BUCKET) -> None:
    req = urllib.request.Request(f"{moto_url}/{name}", method="PUT")
    urllib.request.urlopen(req, timeout=10).close()


@pytest.fixture
def fleet_endpoints(moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for service in ("SQS", "DYNAMODB", "S3"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", moto)
    return moto


@pytest.fixture
async def services(fleet_endpoints: str) -> AsyncIterator[Services]:
    """The three clients, with the fleet's resources created by ``fleet init``'s code."""
    make_bucket(fleet_endpoints)
    async with open_services(Settings(), fleet_settings()) as svc:
        await setup.init(svc)
        yield svc
