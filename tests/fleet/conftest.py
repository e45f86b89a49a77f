"""The fleet's services on moto's server (SQS, DynamoDB, S3), reached as fspd reaches AWS:
through AWS_ENDPOINT_URL_SQS/_DYNAMODB/_S3."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator

import pytest

from fspd.config import FleetSettings, Settings
from fspd.fleet import setup
from fspd.fleet.services import Services, open_services
from tests.conftest import ROOT, _free_port

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


@pytest.fixture(scope="session")
def fleet_moto_url() -> Iterator[str]:
    """moto's server, with DynamoDB's per-item atomicity (tests/fleet/atomic_moto.py)."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.fleet.atomic_moto", str(port)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def fleet_moto(fleet_moto_url: str) -> str:
    """The fleet's moto with its state reset."""
    req = urllib.request.Request(f"{fleet_moto_url}/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()
    return fleet_moto_url


@pytest.fixture
def fleet_endpoints(fleet_moto: str, monkeypatch: pytest.MonkeyPatch) -> str:
    for service in ("SQS", "DYNAMODB", "S3"):
        monkeypatch.setenv(f"AWS_ENDPOINT_URL_{service}", fleet_moto)
    return fleet_moto


@pytest.fixture
async def services(fleet_endpoints: str) -> AsyncIterator[Services]:
    """The three clients, with the fleet's resources created by ``fleet init``'s code."""
    make_bucket(fleet_endpoints)
    async with open_services(Settings(), fleet_settings()) as svc:
        await setup.init(svc)
        yield svc


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "fleet_moto" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.moto)
