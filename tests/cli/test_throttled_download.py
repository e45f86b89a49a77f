"""A download through a steady share of throttled requests completes with bounded retries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner
from tests.engine._support import assert_matches_snapshot


@pytest.mark.timeout(300)
def test_download_with_5_percent_throttled_gets_completes_with_bounded_retries(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(region="us-east-1", volume_size=1, allocation="sparse",
                              density=0.5, seed=12)
    emulator.faults(throttle_rate=0.05, operations=["GetSnapshotBlock"], seed=13)
    emulator.reset_stats()

    result = fspd(f"download {snap} out.img --json -q", timeout=240)

    assert result.returncode == 0, result.stderr
    blocks = int(json.loads(result.stdout)["blocks_done"])
    assert blocks > 500
    stats = emulator.stats()
    emulator.clear_faults()
    assert stats["faults"].get("throttle", 0) > 0, "no throttle was injected"
    gets = stats["requests"]["GetSnapshotBlock"]
    assert gets <= 1.1 * blocks, f"{gets} GetSnapshotBlock requests for {blocks} blocks"
    assert_matches_snapshot(tmp_path / "out.img", emulator, snap)
