"""Fixtures of the engine tests that run ``fspd`` as a subprocess."""

from __future__ import annotations

import os

import pytest

from fspd.emulator.control import EmulatorControl


@pytest.fixture
def env(emulator: EmulatorControl) -> dict[str, str]:
    """The environment of a user whose AWS (EBS and EC2) is the emulator."""
    e = dict(os.environ)
    e.update(AWS_ENDPOINT_URL_EBS=emulator.url, AWS_ENDPOINT_URL_EC2=emulator.url)
    e.pop("AWS_ENDPOINT_URL", None)
    return e
