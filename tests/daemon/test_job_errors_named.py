"""A daemon job that names a profile nobody defined fails with that reason, not as an
internal error, and sends nothing to AWS."""

from __future__ import annotations

from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl
from tests.daemon.conftest import Daemon, download_job


@pytest.mark.timeout(90)
def test_an_unknown_profile_is_the_jobs_failure_reason(
        daemon: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=5)
    emulator.reset_stats()
    name = daemon.submit(download_job(emulator, snap, tmp_path / "out.img", profile="nope"),
                         "nope.toml")
    assert daemon.wait_finished(name) == "failed"
    error = daemon.sidecar("failed", name)
    assert error["error"] == "BadInput", error
    assert error["field"] == "source.profile"
    assert "profile 'nope' is not defined" in error["message"]
    assert emulator.stats()["requests"] == {}
    assert not (tmp_path / "out.img").exists()
