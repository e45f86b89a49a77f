"""The fleet's services on moto's server (SQS, DynamoDB, S3), reached as fspd reaches AWS:
through AWS_ENDPOINT_URL_SQS/_DYNAMODB/_S3."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fspd.config import FleetSettings, Settings
from fspd.fleet import setup
from fspd.fleet.services import Services, open_services
from tests.cli.conftest import Runner, assert_clean, fspd_argv
from tests.conftest import TEST_AWS_CONFIG, moto_server

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
    with moto_server(["-m", "tests.fleet.atomic_moto", "{port}"]) as url:
        yield url


@pytest.fixture
def fleet_moto(fleet_moto_url: str) -> str:
    """The fleet's moto with its state reset."""
    req = urllib.request.Request(f"{fleet_moto_url}/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()
    req = urllib.request.Request(f"{fleet_moto_url}/_fspd/hold", method="DELETE")
    urllib.request.urlopen(req, timeout=10).close()  # no UploadPart held (atomic_moto.py)
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


FLEET_CONFIG = f"""{TEST_AWS_CONFIG}
[fleet]
queue = "fspd-jobs"
table = "fspd-jobs"
bucket = "s3://{BUCKET}/fleet"
max_receive_count = 3
receive_wait_s = 0
"""


@pytest.fixture
def fleet_cli_env(fleet_endpoints: str, tmp_path_factory: pytest.TempPathFactory
                  ) -> dict[str, str]:
    """A user whose AWS (SQS, DynamoDB, S3) is moto, with a [fleet] section in $FSPD_CONFIG."""
    config = tmp_path_factory.mktemp("fleet-operator") / "fspd.toml"
    config.write_text(FLEET_CONFIG)
    env = {k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    env["FSPD_CONFIG"] = str(config)
    return env


@pytest.fixture
def fleet_cli(fleet_cli_env: dict[str, str], tmp_path: Path) -> Runner:
    """``fleet_cli("fspd fleet init")``: the console script, run in ``tmp_path``."""
    def run(command: str | list[str], *, timeout: float = 120,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(fspd_argv(command), capture_output=True, text=True,
                                timeout=timeout, env={**fleet_cli_env, **(extra_env or {})},
                                cwd=tmp_path, stdin=subprocess.DEVNULL)
        assert_clean(result)
        return result

    return run
