"""Fixtures for running ``fspd`` exactly as a user types it: the installed console script as a
subprocess, pointed at the emulator (EBS, EC2) and moto's server (S3) through the standard
``AWS_ENDPOINT_URL_*`` variables, so the command line itself carries nothing a user would not
type."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl
from tests.conftest import TEST_AWS_CONFIG

FSPD = Path(sys.executable).with_name("fspd")


def fspd_argv(command: str | list[str]) -> list[str]:
    """``fspd …`` as argv: the venv's console script (what a user runs), or ``python -m fspd``
    where the script is not installed."""
    args = shlex.split(command) if isinstance(command, str) else list(command)
    if args and args[0] == "fspd":
        args = args[1:]
    if FSPD.exists():
        return [str(FSPD), *args]
    return [sys.executable, "-m", "fspd", *args]


def assert_clean(result: subprocess.CompletedProcess[str]) -> None:
    """No traceback, whatever the exit code."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli_env(emulator: EmulatorControl, tmp_path_factory: pytest.TempPathFactory
            ) -> dict[str, str]:
    """The environment of a user whose AWS is the emulator, and whose operator's config
    (``$FSPD_CONFIG``) lets job files name the emulator and moto on 127.0.0.1 (fspd's default
    allows AWS's own endpoints only)."""
    config = tmp_path_factory.mktemp("operator") / "fspd.toml"
    config.write_text(TEST_AWS_CONFIG)
    env = dict(os.environ)
    env["FSPD_CONFIG"] = str(config)
    env["AWS_ENDPOINT_URL_EBS"] = emulator.url
    env["AWS_ENDPOINT_URL_EC2"] = emulator.url
    env.pop("AWS_ENDPOINT_URL", None)
    return env


@pytest.fixture
def s3_cli_env(cli_env: dict[str, str], moto: str) -> dict[str, str]:
    """As ``cli_env``, with S3 served by moto."""
    return {**cli_env, "AWS_ENDPOINT_URL_S3": moto}


def _runner(env: dict[str, str], cwd: Path) -> Runner:
    def run(command: str | list[str], *, timeout: float = 120, input: str | None = None,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(fspd_argv(command), capture_output=True, text=True,
                                timeout=timeout, env={**env, **(extra_env or {})}, cwd=cwd,
                                input=input, stdin=None if input is not None
                                else subprocess.DEVNULL)
        assert_clean(result)
        return result

    return run


@pytest.fixture
def fspd(cli_env: dict[str, str], tmp_path: Path) -> Runner:
    """``fspd("download snap-… out.img")``: run in ``tmp_path``; the traceback check is
    built in; the caller checks exit code and effect."""
    return _runner(cli_env, tmp_path)


@pytest.fixture
def fspd_s3(s3_cli_env: dict[str, str], tmp_path: Path) -> Runner:
    return _runner(s3_cli_env, tmp_path)
