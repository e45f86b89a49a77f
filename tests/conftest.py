"""Shared fixtures: the strict EBS emulator and moto's server, each a separate process on
127.0.0.1, and aiobotocore clients pointed at them. Nothing here mocks botocore."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiobotocore.session import AioSession, get_session
from botocore.config import Config

from fspd.emulator.control import EmulatorControl, EmulatorProcess

# The tests' jobs name the emulator and moto on 127.0.0.1 in endpoint_url. As an operator
# would, the tests' settings allow them; fspd's default allows AWS's own endpoints only.
TEST_ALLOW_ENDPOINTS = ("http://127.0.0.1:*",)
TEST_AWS_CONFIG = '\n[aws]\nallow_endpoints = ["http://127.0.0.1:*"]\n'

# Fake but well-formed credentials: tests never talk to AWS.
TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "AKIAFSPDTESTKEY00001",
    "AWS_SECRET_ACCESS_KEY": "fspd-test-secret-key-not-real-0000000000",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@pytest.fixture(scope="session", autouse=True)
def _isolated_aws_environment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test reads the developer's ~/.aws or reaches a real endpoint."""
    home = tmp_path_factory.mktemp("aws-home")
    saved = {k: os.environ.get(k) for k in (*TEST_ENV, "AWS_CONFIG_FILE",
                                            "AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE",
                                            "AWS_ENDPOINT_URL")}
    os.environ.update(TEST_ENV)
    os.environ["AWS_CONFIG_FILE"] = str(home / "config")
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = str(home / "credentials")
    os.environ.pop("AWS_PROFILE", None)
    os.environ.pop("AWS_ENDPOINT_URL", None)
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def emulator_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    proc = EmulatorProcess(data_dir=tmp_path_factory.mktemp("emulator-data"))
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def emulator(emulator_process: EmulatorProcess) -> EmulatorControl:
    """A freshly reset emulator: no snapshots, no faults, default limits, zeroed counters."""
    control = EmulatorControl(emulator_process.url)
    control.reset()
    return control


def run_grouped(argv: list[str], *, timeout: float, **kwargs: Any
                ) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(argv, capture_output=True, text=True)`` for a command that starts
    processes of its own (a benchmark's emulator and daemons, the demo's): it runs in a
    session of its own, and whatever of that session is left when it ends, times out or the
    test is interrupted is killed, instead of outliving the test."""
    with subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def moto_server(argv: list[str]) -> Iterator[str]:
    """A moto server started as ``python <argv...>`` (given the port it must listen on as
    ``{port}``), its URL once it answers; terminated on exit."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, *(a.format(port=port) for a in argv)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    try:
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's standalone server (S3, EC2, EBS) as a separate process."""
    with moto_server(["-m", "moto.server", "-H", "127.0.0.1", "-p", "{port}"]) as url:
        yield url


@pytest.fixture
def moto(moto_url: str) -> str:
    """moto's server with its state reset."""
    req = urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST")
    urllib.request.urlopen(req, timeout=10).close()
    return moto_url


def client_config(**overrides: object) -> Config:
    """Test clients fail fast: one attempt per call (botocore's ``max_attempts`` counts
    retries; ``total_max_attempts`` counts attempts) unless a test asks for more."""
    base = {"retries": {"total_max_attempts": 1, "mode": "standard"}, "connect_timeout": 5,
            "read_timeout": 30}
    base.update(overrides)
    return Config(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def aws_session() -> AioSession:
    """One botocore session for the whole run: loading service models once, not per test."""
    return get_session()


@pytest.fixture
async def ebs(emulator: EmulatorControl, aws_session: AioSession) -> AsyncIterator[object]:
    """An aiobotocore EBS client (us-east-1) pointed at the emulator."""
    async with aws_session.create_client(
        "ebs", region_name="us-east-1", endpoint_url=emulator.url, config=client_config()
    ) as client:
        yield client


@pytest.fixture
async def ec2(emulator: EmulatorControl, aws_session: AioSession) -> AsyncIterator[object]:
    async with aws_session.create_client(
        "ec2", region_name="us-east-1", endpoint_url=emulator.url, config=client_config()
    ) as client:
        yield client


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "moto" in item.fixturenames:
            item.add_marker(pytest.mark.moto)


ROOT = Path(__file__).resolve().parent.parent
