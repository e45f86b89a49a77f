"""``fspd download`` into an allowed directory whose component a submitter turns into a symlink
after the job was checked: the victim outside ``paths.allow_write`` never changes (issue 12,
item 1, end to end)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import assert_clean, fspd_argv
from tests.engine.test_symlink_swap_race import VICTIM, Swapper

LATENCY_MS = 1500


def _config(tmp_path: Path, allowed: Path) -> Path:
    cfg = tmp_path / "fspd.toml"
    cfg.write_text(f'[paths]\nallow_write = ["{allowed}"]\n'
                   "[transfer]\nfetch_concurrency = 4\n")
    return cfg


def _wait_for(what: str, condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_a_directory_swapped_for_a_symlink_after_the_check_is_not_followed(
        emulator: EmulatorControl, cli_env: dict[str, str], tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=12)
    allowed = tmp_path / "allowed"
    victim_dir = tmp_path / "victim"
    (allowed / "user" / "sub").mkdir(parents=True)
    victim_dir.mkdir()
    victim = victim_dir / "out.img"
    victim.write_bytes(VICTIM)
    target = allowed / "user" / "sub" / "out.img"
    cfg = _config(tmp_path, allowed)
    # The job is checked, then the source is described slowly: the submitter's window.
    emulator.faults(latency_ms=LATENCY_MS, operations=["DescribeSnapshots"])
    proc = subprocess.Popen(fspd_argv(["download", snap, str(target), "--config", str(cfg)]),
                            env=cli_env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        _wait_for("DescribeSnapshots", lambda: emulator.stats()["requests"].get(
            "DescribeSnapshots", 0) >= 1)
        os.rename(allowed / "user" / "sub", allowed / "user" / "sub.real")
        (allowed / "user" / "sub").symlink_to(victim_dir)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_clean(result)
    assert victim.read_bytes() == VICTIM
    assert proc.returncode == 2, err
    assert "symlink" in err and "destinations[0].path" in err, err


def test_downloads_racing_a_swapping_process_never_write_the_victim(
        emulator: EmulatorControl, cli_env: dict[str, str], tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=13)
    swap = Swapper(tmp_path)
    cfg = _config(tmp_path, swap.allowed)
    emulator.faults(latency_ms=50, operations=["DescribeSnapshots"])
    with swap:
        for _ in range(3):
            result = subprocess.run(
                fspd_argv(["download", snap, str(swap.target), "--config", str(cfg)]),
                env=cli_env, cwd=tmp_path, capture_output=True, text=True, timeout=120,
                stdin=subprocess.DEVNULL)
            assert_clean(result)
            # Done; refused at the check or the open (2); or, when the directory changed
            # under a finished job, its flush refused (4: a symlink on the way) or its final
            # check found the path naming another file (4: the victim). Never the victim.
            assert result.returncode in (0, 2, 4), result.stderr
            assert result.returncode != 4 or any(
                why in result.stderr for why in ("symlink", "now names another file")
            ), result.stderr
            assert swap.victim.read_bytes() == VICTIM, result.stderr
    assert swap.flips > 0
