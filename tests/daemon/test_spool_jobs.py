"""Jobs dropped into the spool run in a real ``fspd serve`` and land in done/ or failed/."""

from __future__ import annotations

import os
from pathlib import Path

from fspd.emulator.control import EmulatorControl
from tests.daemon.conftest import (
    Daemon,
    assert_file_is_snapshot,
    download_job,
    upload_job,
    wait_for,
)


def test_download_and_upload_jobs_land_in_done_with_correct_bytes(
        daemon: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.01, seed=11)
    image = tmp_path / "in.img"
    image.write_bytes(os.urandom(3 << 20) + bytes(1 << 20) + os.urandom(12345))
    out = tmp_path / "out.img"
    down = daemon.submit(download_job(emulator, snap, out), "down.toml")
    up = daemon.submit(upload_job(emulator, image, description="daemon test"), "up.toml")

    assert daemon.wait_finished(down) == "done"
    assert daemon.wait_finished(up) == "done"
    result = daemon.sidecar("done", down)
    assert result["state"] == "completed" and result["verb"] == "download"
    assert result["blocks_done"] > 0 and result["duration_s"] >= 0
    assert_file_is_snapshot(emulator, snap, out)

    uploaded = daemon.sidecar("done", up)
    new_snap = uploaded["destinations"][0]["snapshot_id"]
    assert uploaded["snapshot_ids"] == {"destinations[0]": new_snap}
    assert uploaded["destinations"][0]["checksum"]
    assert emulator.image(new_snap, length=image.stat().st_size) == image.read_bytes()
    assert emulator.image(new_snap, offset=image.stat().st_size, length=1 << 20) == bytes(
        1 << 20)
    assert not list(daemon.spool.box("new").iterdir())
    assert not list(daemon.spool.box("active").iterdir())


def test_unparsable_and_invalid_files_land_in_failed_with_reason_and_field(
        daemon: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    bad_toml = daemon.submit("verb = [\n", "broken.toml")
    bad_json = daemon.submit('{"source": ', "broken.json")
    bad_field = daemon.submit(download_job(emulator, "snap-nothex", tmp_path / "x.img"),
                              "badid.toml")
    unknown = daemon.submit('verb = "download"\nsnapshot_id = "snap-0123456789abcdef0"\n'
                            'path = "/tmp/x"\ncolour = "blue"\n', "unknown.toml")
    expected = {bad_toml: ("(file)", "not valid TOML"), bad_json: ("(file)", "not valid JSON"),
                bad_field: ("source.snapshot_id", "not a snapshot id"),
                unknown: ("colour", "unknown field")}
    for name, (field, words) in expected.items():
        assert daemon.wait_finished(name) == "failed"
        error = daemon.sidecar("failed", name)
        assert error["field"] == field, error
        assert words in error["message"]
        assert error["error"] == "BadInput"


def test_symlinks_and_oversized_files_are_refused_not_followed(
        daemon: Daemon, tmp_path: Path) -> None:
    target = tmp_path / "secret.toml"
    target.write_text('verb = "list"\nsnapshot_id = "snap-0123456789abcdef0"\n')
    link = daemon.spool.box("new") / "link.toml"
    link.symlink_to(target)
    big = daemon.spool.box("tmp") / "big.toml"
    big.write_bytes(b"# " + b"x" * (1 << 20) + b"\n")
    os.rename(big, daemon.spool.box("new") / "big.toml")

    assert daemon.wait_finished("link.toml") == "failed"
    assert (daemon.spool.box("failed") / "link.toml").is_symlink()  # moved, not followed
    assert "symlink" in daemon.sidecar("failed", "link.toml")["message"]
    assert target.exists()
    assert daemon.wait_finished("big.toml") == "failed"
    assert "limit" in daemon.sidecar("failed", "big.toml")["message"]


def test_jobs_wait_in_priority_order_then_arrival(
        make_daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    d: Daemon = make_daemon("--max-jobs", "1", start=False)
    d.spool.ensure()
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.002, seed=3)
    names = []
    for i, prio in enumerate([0, 5, 0, 9]):
        names.append(d.submit(download_job(emulator, snap, tmp_path / f"o{i}.img",
                                           priority=prio), f"p{i}.toml"))
    d.start()
    for name in names:
        assert d.wait_finished(name) == "done"
    started = {n: d.sidecar("done", n)["started_at"] for n in names}
    order = sorted(names, key=started.__getitem__)
    assert order == [names[3], names[1], names[0], names[2]]


def test_stale_tmp_files_are_removed_and_nothing_else(daemon: Daemon) -> None:
    old = daemon.spool.box("tmp") / "half-written.toml"
    old.write_text("verb =")
    os.utime(old, (1, 1))
    fresh = daemon.spool.box("tmp") / "being-written.toml"
    fresh.write_text("verb =")
    assert daemon.spool.clean_tmp(86400) == ["half-written.toml"]
    assert fresh.exists()


def test_submit_cli_validates_first_and_waits_for_the_result(
        daemon: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(download_job(emulator, "snap-12", tmp_path / "x"))
    refused = daemon.cli("submit", str(bad), "--spool", str(daemon.spool.root))
    assert refused.returncode == 2
    assert "snapshot_id" in refused.stderr and "Traceback" not in refused.stderr
    assert not list(daemon.spool.box("new").iterdir())

    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.002, seed=5)
    good = tmp_path / "good.toml"
    good.write_text(download_job(emulator, snap, tmp_path / "good.img"))
    done = daemon.cli("submit", str(good), "--spool", str(daemon.spool.root), "--wait",
                      "--json")
    assert done.returncode == 0, done.stderr
    assert '"state": "completed"' in done.stdout
    wait_for(lambda: list(daemon.spool.box("done").glob("good-*.toml")), what="done file")
