"""README's service commands (``fspd submit job.toml``, ``fspd status``, ``fspd watch``,
``fspd cancel|pause|resume JOB``, ``fspd bandwidth 200M``), typed as shown, against a real
``fspd serve``; the socket and spool come from $FSPD_SOCKET and $FSPD_SPOOL, the documented
alternative to flags. Each is checked by what it did to the job, not only by its output."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner, fspd_argv
from tests.conftest import ROOT, TEST_AWS_CONFIG
from tests.daemon.conftest import Daemon, wait_for
from tests.s3._support import GIB, assert_file_is_volume

CONFIG = """
[transfer]
fetch_concurrency = 1
[daemon]
event_interval_s = 0.1
""" + TEST_AWS_CONFIG
LATENCY_MS = 100  # one GetSnapshotBlock in flight, each 100 ms: a job runs until let go


def service_commands() -> list[str]:
    """The ``fspd …`` commands of the README's "As a service" sentence, with
    ``cancel|pause|resume`` spelled out."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    sentence = text.split("As a service:", 1)[1].split("See `docs/daemon.md`", 1)[0]
    out = []
    for command in re.findall(r"`(fspd [^`]+)`", sentence):
        if "cancel|pause|resume" in command:
            out += [command.replace("cancel|pause|resume", verb)
                    for verb in ("cancel", "pause", "resume")]
        else:
            out.append(command)
    return out


@pytest.fixture
def served(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Daemon]:
    """``fspd serve`` whose AWS is the emulator (from the environment, as the CLI's)."""
    config = tmp_path / "fspd.toml"
    config.write_text(CONFIG)
    d = Daemon(tmp_path / "daemon", ["--config", str(config), "--rescan-interval", "1"],
               env=cli_env)
    d.start()
    yield d
    d.stop()
    shutil.rmtree(d.sock_dir, ignore_errors=True)


@pytest.fixture
def client(fspd: Runner, served: Daemon) -> Runner:
    """``fspd …`` as typed, finding the daemon through FSPD_SOCKET / FSPD_SPOOL."""
    env = {"FSPD_SOCKET": served.socket, "FSPD_SPOOL": str(served.spool.root)}

    def run(command: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return fspd(command, extra_env={**env, **kw.pop("extra_env", {})}, **kw)

    run.env = env  # type: ignore[attr-defined]
    return run


def _job_file(path: Path, snapshot_id: str, out: Path) -> None:
    path.write_text(f'verb = "download"\nsnapshot_id = "{snapshot_id}"\npath = "{out}"\n')


def _ok(result: Any) -> None:
    assert result.returncode == 0, (result.stdout, result.stderr)


def _in_flight(d: Daemon, job: str) -> int:
    """Blocks in flight, as the job's worker last reported; -1 before its first report."""
    stages = d.job(job)["progress"]["stages"]
    return sum(s["in_flight"] for s in stages.values()) if stages else -1


def test_the_readme_names_these_service_commands() -> None:
    assert service_commands() == [
        "fspd submit job.toml", "fspd status", "fspd watch", "fspd cancel JOB",
        "fspd pause JOB", "fspd resume JOB", "fspd bandwidth 200M"]


async def test_submit_status_pause_resume_bandwidth_and_watch_a_job_to_the_end(
        client: Runner, served: Daemon, emulator: EmulatorControl, ebs: Any,
        tmp_path: Path) -> None:
    d = served
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.05, seed=41)
    out = tmp_path / "restored.img"
    _job_file(tmp_path / "job.toml", snap, out)
    emulator.faults(latency_ms=LATENCY_MS, operations=["GetSnapshotBlock"])

    submitted = client("fspd submit job.toml")
    _ok(submitted)
    job = submitted.stdout.strip()
    assert re.fullmatch(r"job-\S+\.toml", job), submitted.stdout
    wait_for(lambda: d.job(job)["state"] == "running", what="the job to run")

    status = client("fspd status")
    _ok(status)
    row = next(line for line in status.stdout.splitlines() if job[:20] in line)
    assert "running" in row, status.stdout

    # Reading: the worker has reported blocks in flight (so a later 0 is news from it).
    wait_for(lambda: _in_flight(d, job) > 0, 20, "blocks in flight")
    _ok(client(f"fspd pause {job}"))
    assert d.job(job)["state"] == "paused"
    wait_for(lambda: _in_flight(d, job) == 0, 10, "blocks in flight to finish")
    gets = emulator.stats()["requests"]["GetSnapshotBlock"]
    _ok(client("fspd status"))  # time passes while paused, and no block is read
    assert emulator.stats()["requests"]["GetSnapshotBlock"] == gets

    _ok(client(f"fspd resume {job}"))
    wait_for(lambda: emulator.stats()["requests"]["GetSnapshotBlock"] > gets, 20,
             "reads to start again")
    assert d.job(job)["state"] == "running"

    bandwidth = client("fspd bandwidth 200M")
    _ok(bandwidth)
    assert d.api("/v1/status")["bandwidth_bytes_per_s"] == 200 << 20  # binary units
    assert "bandwidth limit:" in bandwidth.stdout

    emulator.clear_faults()  # let it finish
    watched = client(f"fspd watch {job}", timeout=120)
    _ok(watched)
    events = [json.loads(line) for line in watched.stdout.splitlines()]
    assert events and all(e["job"] == job for e in events)
    assert events[-1]["state"] == "completed"
    assert d.wait_finished(job) == "done"
    await assert_file_is_volume(out, emulator, ebs, snap, GIB)


def test_cancel_stops_a_running_job_and_moves_it_to_failed(
        client: Runner, served: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    d = served
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.05, seed=42)
    _job_file(tmp_path / "job.toml", snap, tmp_path / "never.img")
    emulator.faults(latency_ms=LATENCY_MS, operations=["GetSnapshotBlock"])
    job = client("fspd submit job.toml").stdout.strip()
    wait_for(lambda: d.job(job)["state"] == "running", what="the job to run")
    cancelled = client(f"fspd cancel {job}")
    _ok(cancelled)
    assert d.wait_finished(job) == "failed"
    assert d.sidecar("failed", job)["error"] == "Cancelled"
    assert d.job(job)["state"] == "cancelled"


def test_watch_without_a_job_streams_every_job_until_interrupted(
        client: Runner, served: Daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    d = served
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.05, seed=43)
    _job_file(tmp_path / "job.toml", snap, tmp_path / "w.img")
    emulator.faults(latency_ms=LATENCY_MS, operations=["GetSnapshotBlock"])
    job = client("fspd submit job.toml").stdout.strip()
    wait_for(lambda: d.job(job)["state"] == "running", what="the job to run")
    env = {**d.env, **client.env}  # type: ignore[attr-defined]
    watch = subprocess.Popen(fspd_argv("fspd watch"), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    try:
        assert watch.stdout is not None
        first = json.loads(watch.stdout.readline())
        assert first["event"] == "job" and first["job"] == job and first["state"] == "running"
        second = json.loads(watch.stdout.readline())  # progress keeps coming
        assert second["job"] == job
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0 and "Traceback" not in err, err
    _ok(client(f"fspd cancel {job}"))
