"""The fleet's AWS clients (SQS, DynamoDB, S3), found as the rest of fspd finds AWS: the
profile and region of ``[fleet]`` or AWS's defaults, ``AWS_ENDPOINT_URL_SQS/_DYNAMODB/_S3``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fspd.aws import AwsClients, AwsTarget, profile_session
from fspd.config import FleetSettings, Settings
from fspd.errors import BadInput


@dataclass(frozen=True)
class Services:
    fleet: FleetSettings
    sqs: Any
    dynamodb: Any
    s3: Any


def fleet_target(fleet: FleetSettings) -> AwsTarget:
    region = fleet.region or profile_session(fleet.profile).get_config_variable("region")
    if not region:
        raise BadInput("no region: set region in [fleet], AWS_REGION or the profile's region",
                       field="fleet.region")
    return AwsTarget(region=str(region), profile=fleet.profile)


@asynccontextmanager
async def open_services(settings: Settings, fleet: FleetSettings) -> AsyncIterator[Services]:
    target = fleet_target(fleet)
    async with AwsClients(settings) as clients:
        yield Services(fleet, await clients.client("sqs", target),
                       await clients.client("dynamodb", target),
                       await clients.client("s3", target))
