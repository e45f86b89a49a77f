"""Naming a daemon job on the command line: unknown ids fail fast, ambiguous prefixes are an
error that lists the matches, and prefixes find finished jobs after a restart."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon, download_job

make_daemon = daemon_fixtures.make_daemon  # a real `fspd serve` per test
daemon = daemon_fixtures.daemon


def _three_big_jobs(daemon: Daemon, emulator: EmulatorControl, tmp_path: Path) -> list[str]:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.002, seed=5)
    names = [daemon.submit(download_job(emulator, snap, tmp_path / f"big{i}.img"), "big.toml")
             for i in range(3)]
    for name in names:
        assert daemon.wait_finished(name, 60) == "done", daemon.log()
    return names


def test_watch_of_an_unknown_job_exits_2_at_once_naming_it(fspd: Runner, daemon: Daemon
                                                            ) -> None:
    result = fspd(["watch", "NOSUCHJOB", "--socket", daemon.socket], timeout=30)
    assert result.returncode == 2, result.stderr
    assert "NOSUCHJOB" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    status = fspd(["status", "NOSUCHJOB", "--socket", daemon.socket], timeout=30)
    assert status.returncode == 2 and "NOSUCHJOB" in status.stderr


def test_an_ambiguous_prefix_is_an_error_listing_every_match(
        fspd: Runner, daemon: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    names = _three_big_jobs(daemon, emulator, tmp_path)
    for verb in ("status", "watch", "cancel"):
        result = fspd([verb, "big", "--socket", daemon.socket], timeout=30)
        assert result.returncode == 2, (verb, result.stderr)
        assert all(name in result.stderr for name in names), result.stderr
        assert "matches 3 jobs" in result.stderr
    one = fspd(["status", names[1][:-3], "--socket", daemon.socket, "--json"], timeout=30)
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["job"] == names[1]


def test_prefixes_find_finished_jobs_after_a_restart(
        fspd: Runner, daemon: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    names = _three_big_jobs(daemon, emulator, tmp_path)
    daemon.stop()
    daemon.start()
    prefix = names[0][:-3]
    status = fspd(["status", prefix, "--socket", daemon.socket, "--json"], timeout=30)
    assert status.returncode == 0, status.stderr
    record = json.loads(status.stdout)
    assert record["job"] == names[0] and record["state"] == "completed"
    watch = fspd(["watch", prefix, "--socket", daemon.socket, "--json"], timeout=30)
    assert watch.returncode == 0, watch.stderr
    assert json.loads(watch.stdout.splitlines()[-1])["state"] == "completed"
    quiet = fspd(["watch", prefix, "-q", "--socket", daemon.socket], timeout=30)
    assert quiet.returncode == 0 and quiet.stdout == "", quiet
    cancel = fspd(["cancel", prefix, "--socket", daemon.socket], timeout=30)
    assert cancel.returncode == 2 and "already completed" in cancel.stderr, cancel.stderr
    ambiguous = fspd(["status", "big", "--socket", daemon.socket], timeout=30)
    assert ambiguous.returncode == 2 and all(n in ambiguous.stderr for n in names)


def test_submit_wait_quiet_prints_nothing_and_exits_with_the_jobs_code(
        fspd: Runner, daemon: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.002, seed=6)
    (tmp_path / "ok.toml").write_text(download_job(emulator, snap, tmp_path / "ok.img"))
    (tmp_path / "bad.toml").write_text(download_job(emulator, "snap-0000000000000dead",
                                                    tmp_path / "bad.img"))
    conn = ["--spool", str(daemon.spool.root), "--socket", daemon.socket]
    ok = fspd(["submit", "ok.toml", "--wait", "-q", *conn], timeout=60)
    assert ok.returncode == 0 and ok.stdout == "" and ok.stderr == "", ok
    bad = fspd(["submit", "bad.toml", "--wait", "-q", *conn], timeout=60)
    assert bad.returncode == 2 and bad.stdout == "", bad
    record = fspd(["submit", "bad.toml", "--wait", "--json", *conn], timeout=60)
    assert record.returncode == 2, record
    detail = json.loads(record.stdout)
    assert detail["exit_code"] == 2 and detail["state"] == "failed"
    assert detail["error"]["field"] == "source.snapshot_id", detail


def test_serve_takes_the_global_log_level_after_the_verb(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.002, seed=7)
    for flags, debug in ((["--rescan-interval", "1"], False),
                         (["--rescan-interval", "1", "-v"], True)):
        d = make_daemon(*flags)
        name = d.submit(download_job(emulator, snap, tmp_path / f"{debug}.img"))
        assert d.wait_finished(name, 60) == "done", d.log()
        d.stop()
        events = {json.loads(line).get("event") for line in d.log().splitlines()
                  if line.startswith("{")}
        assert ("job_starting" in events) is debug, (flags, events)  # a job's debug line
