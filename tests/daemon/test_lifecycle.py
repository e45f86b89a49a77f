"""Stopping, restarting, reloading, and talking to systemd."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspd.daemon.sdnotify import Notifier, listen_fds
from fspd.emulator.control import EmulatorControl
from tests.daemon.conftest import (
    Daemon,
    assert_file_is_snapshot,
    download_job,
    upload_job,
    wait_for,
)


class FakeSystemd:
    """A datagram socket playing systemd's NOTIFY_SOCKET, read by a thread (as promptly as
    systemd would: the kernel queues only a few datagrams)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[dict[str, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append(dict(line.split("=", 1) for line in data.decode().split("\n")))

    def wait(self, key: str, value: str | None = None, timeout: float = 20.0,
             after: int = 0) -> int:
        """Index of the first message (from ``after``) carrying ``key`` (= ``value``)."""
        def find() -> int | None:
            for i, msg in enumerate(list(self.messages)[after:], after):
                if key in msg and (value is None or msg[key] == value):
                    return i + 1  # wait_for needs a truthy value
            return None
        return wait_for(find, timeout, f"{key}={value} from the daemon") - 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def systemd(tmp_path: Path) -> Iterator[FakeSystemd]:
    fake = FakeSystemd(tmp_path / "notify.sock")
    yield fake
    fake.close()


def test_sigterm_mid_job_requeues_it_and_a_restart_finishes_it_with_correct_bytes(
        make_daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    d: Daemon = make_daemon("--bandwidth", "16M")
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.08, seed=31)
    out = tmp_path / "restarted.img"
    job = d.submit(download_job(emulator, snap, out))
    wait_for(lambda: d.job(job)["progress"]["blocks_done"] > 5, what="the job to move")
    assert d.stop() == 0
    assert (d.spool.box("new") / job).exists()  # back in new/ for the next start
    assert not list(d.spool.box("active").iterdir())
    assert "job_requeued" in d.log()

    d.start(["--bandwidth", "0"])
    assert d.wait_finished(job) == "done"
    assert d.sidecar("done", job)["state"] == "completed"
    assert_file_is_snapshot(emulator, snap, out)


def test_a_job_left_in_active_by_a_crash_is_restarted(
        make_daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    d: Daemon = make_daemon(start=False)
    d.spool.ensure()
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.002, seed=32)
    (d.spool.box("active") / "crashed.toml").write_text(
        download_job(emulator, snap, tmp_path / "c.img"))
    d.start()
    assert d.wait_finished("crashed.toml") == "done"
    assert d.sidecar("done", "crashed.toml")["progress"]["blocks_done"] > 0
    assert '"restarted": true' in d.log()


def test_sd_notify_ready_status_watchdog_reloading_stopping(
        make_daemon, systemd: FakeSystemd, tmp_path: Path) -> None:
    config = tmp_path / "fspd.toml"
    config.write_text("[daemon]\nmax_jobs = 2\n")
    d: Daemon = make_daemon("--config", str(config), start=False)
    d.start(env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": "200000"})
    ready = systemd.wait("READY", "1")
    assert "running" in systemd.messages[ready]["STATUS"]
    first_dog = systemd.wait("WATCHDOG", "1")
    systemd.wait("WATCHDOG", "1", after=first_dog + 1)  # repeats (every 0.1 s)

    config.write_text('[daemon]\nmax_jobs = 7\nbandwidth_bytes_per_s = 1000000\n'
                      'socket_group = "root"\n')
    d.signal(signal.SIGHUP)
    reloading = systemd.wait("RELOADING", "1")
    usec = int(systemd.messages[reloading]["MONOTONIC_USEC"])
    assert abs(usec - time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000) < 30e6
    systemd.wait("READY", "1", after=reloading + 1)
    status = json.loads(d.cli("status", "--json").stdout)
    assert status["max_jobs"] == 7 and status["bandwidth_bytes_per_s"] == 1e6
    assert "reload_needs_restart" in d.log() and "daemon.socket_group" in d.log()
    assert "sd_notify_failed" not in d.log()

    assert d.stop() == 0
    systemd.wait("STOPPING", "1")


def test_notifier_speaks_to_abstract_sockets_and_is_silent_without_systemd() -> None:
    name = f"fspd-test-{os.getpid()}-{time.monotonic_ns()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind("\0" + name)
    listener.settimeout(2)
    try:
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready("1 running")
        assert listener.recv(100) == b"READY=1\nSTATUS=1 running"
        notifier.close()
    finally:
        listener.close()
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.send("READY=1")
    assert Notifier({"WATCHDOG_USEC": "100", "WATCHDOG_PID": "1"}).watchdog_usec is None
    assert listen_fds({"LISTEN_PID": "1", "LISTEN_FDS": "1"}) == []


def test_socket_activation_serves_on_the_inherited_fd(tmp_path: Path) -> None:
    path = tmp_path / "act.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()
    fd = listener.fileno()
    # What systemd does: the socket on fd 3, LISTEN_PID = the service's pid, then exec.
    wrapper = ("import os, sys; os.dup2(int(sys.argv[1]), 3); "
               "os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1'); "
               "os.execv(sys.executable, [sys.executable, '-m', 'fspd', *sys.argv[2:]])")
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper, str(fd), "--log-json", "serve", "--spool",
         str(tmp_path / "spool"), "--state-dir", str(tmp_path / "state"), "--socket",
         str(tmp_path / "unused.sock")], pass_fds=(fd,), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    listener.close()
    try:
        def answered() -> bool:
            done = subprocess.run([sys.executable, "-m", "fspd", "status", "--json",
                                   "--socket", str(path)], capture_output=True, text=True,
                                  timeout=30)
            return done.returncode == 0 and json.loads(done.stdout)["pid"] == proc.pid
        try:
            wait_for(answered, 60, "the activated daemon")  # with its workers started
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.communicate()[1].decode()) from None
        assert not (tmp_path / "unused.sock").exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert path.exists()  # systemd's socket: not ours to remove


def test_sigterm_mid_upload_then_restart_completes_one_snapshot_with_the_file_bytes(
        make_daemon, emulator: EmulatorControl, tmp_path: Path) -> None:
    d: Daemon = make_daemon("--bandwidth", "8M")
    image = tmp_path / "in.img"
    image.write_bytes(os.urandom(24 << 20) + bytes(4 << 20) + os.urandom(3 << 20))
    job = d.submit(upload_job(emulator, image))
    wait_for(lambda: d.job(job)["progress"]["blocks_done"] > 5, what="the upload to move")
    assert d.stop() == 0
    assert (d.spool.box("new") / job).exists()

    d.start(["--bandwidth", "0"])
    assert d.wait_finished(job) == "done"
    result = d.sidecar("done", job)
    snap = result["destinations"][0]["snapshot_id"]
    assert emulator.image(snap, length=image.stat().st_size) == image.read_bytes()
    # The restart continued the same snapshot (same job id, same ClientToken, same state dir).
    assert [s["id"] for s in emulator.snapshots() if s["status"] == "completed"] == [snap]
