"""Progress a person can read, as typed: the foreground bar on a real terminal (a pseudo-
terminal), and ``fspd status``/``watch``/``bandwidth`` against a running daemon."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import fspd_argv
from tests.daemon.conftest import (
    Daemon,
    _UnixHTTPConnection,
    download_job,
    wait_for,
    write_config,
)
from tests.daemon.conftest import make_daemon as make_daemon  # the daemon tests' fixture

_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


class Terminal:
    """A command with stdout and stderr on a pseudo-terminal (so fspd draws its bars); a
    thread collects everything it writes."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 200, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=slave,
                                     stderr=slave, env=env, cwd=cwd)
        os.close(slave)
        self._master = master
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            self._chunks.append(data)

    def text(self) -> str:
        return b"".join(self._chunks).decode(errors="replace")

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("the command did not finish in time:\n" + self.text()
                                 ) from None
        self._reader.join(30)
        os.close(self._master)
        return code, self.text()


def run_on_terminal(argv: list[str], env: dict[str, str], cwd: Path,
                    timeout: float = 120) -> tuple[int, str]:
    """Run a command on a pseudo-terminal to its end: its exit code and what it wrote."""
    return Terminal(argv, env, cwd).wait(timeout)


def screen_lines(raw: str) -> list[str]:
    """The lines a terminal ends up showing: carriage returns overwrite, colours dropped."""
    lines: list[str] = []
    row: list[str] = []
    col = 0
    for ch in _CSI.sub("", raw):
        if ch == "\r":
            col = 0
        elif ch == "\n":
            lines.append("".join(row).rstrip())
            row, col = [], 0
        else:
            if col < len(row):
                row[col] = ch
            else:
                row.append(ch)
            col += 1
    if row:
        lines.append("".join(row).rstrip())
    return lines


def frames(raw: str) -> list[str]:
    """Every state the bar was drawn in (each redraw starts with a carriage return)."""
    return [f.strip() for f in re.split(r"[\r\n]", _CSI.sub("", raw)) if f.strip()]


def slow_config(tmp_path: Path) -> Path:
    """Few fetchers and short queues: with emulator latency, listing lasts most of the job."""
    path = tmp_path / "slow.toml"
    path.write_text("[transfer]\nfetch_concurrency = 4\nqueue_blocks = 8\n")
    return path


def test_download_bar_shows_an_estimated_percent_before_listing_ends_then_the_exact_total(
        emulator: EmulatorControl, cli_env: dict[str, str], tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=4, allocation="sparse", density=0.025, seed=11)
    emulator.faults(latency_ms=60, operations=["GetSnapshotBlock"])
    code, raw = run_on_terminal(
        fspd_argv(f"fspd download {snap} out.img --config {slow_config(tmp_path)}"),
        cli_env, tmp_path)
    assert code == 0, raw
    assert "Traceback" not in raw, raw
    shown = frames(raw)
    estimated = [f for f in shown if re.search(r"download: ~\d+% \|", f)]
    assert estimated, "no estimated percent on the bar:\n" + "\n".join(shown[-20:])
    assert any(re.search(r"ETA ~\d", f) and re.search(r"blocks \d+/~\d+", f)
               for f in estimated), estimated
    # The exact total once listing is done, and the bar is left at 100 %.
    final = [f for f in shown if f.startswith("download: ")][-1]
    assert re.search(r"download: 100% \|", final) and "~" not in final, final
    assert "MB" not in raw and "iB/s" in raw  # binary units only


def test_log_lines_get_their_own_line_not_the_bars(
        emulator: EmulatorControl, cli_env: dict[str, str], tmp_path: Path) -> None:
    """An upload logs when it starts and completes its snapshot while the bar is drawn; a
    flaky endpoint adds retries. Each log line starts at the left edge, alone."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(12 << 20))
    emulator.faults(latency_ms=30, error_rate=0.1, seed=3, operations=["PutSnapshotBlock"])
    code, raw = run_on_terminal(
        fspd_argv(f"fspd upload {image} --config {slow_config(tmp_path)}"), cli_env, tmp_path)
    assert code == 0, raw
    assert emulator.stats()  # the emulator answered
    lines = screen_lines(raw)
    logged = [line for line in lines if "snapshot_started" in line or
              "snapshot_completed" in line]
    assert len(logged) == 2, "\n".join(lines)
    for line in logged:
        assert _TIMESTAMP.match(line), f"log line glued to the bar: {line!r}"
        assert "upload:" not in line and "|" not in line, line
    # The bar itself is still there, on a line of its own, at the end.
    assert any(line.startswith("upload: 100% |") for line in lines), "\n".join(lines)


# --- the daemon ----------------------------------------------------------------------------


def _metrics(d: Daemon) -> str:
    conn = _UnixHTTPConnection(d.socket)
    try:
        conn.request("GET", "/metrics")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def _status_json(d: Daemon, *args: str) -> Any:
    out = d.cli("status", *args, "--json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    return json.loads(out.stdout)


def _first_event(d: Daemon, job: str, want: Callable[[dict[str, Any]], bool],
                 timeout: float = 30) -> dict[str, Any]:
    """Run ``fspd watch JOB --json`` and return the first NDJSON event that ``want``s."""
    with subprocess.Popen([sys.executable, "-m", "fspd", "watch", job, "--json",
                           "--socket", d.socket], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True,
                          env=d.env) as proc:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 1.0)
                if not ready:
                    continue
                line = proc.stdout.readline()
                if not line:
                    break
                event = json.loads(line)
                if want(event):
                    return event
            raise AssertionError("fspd watch --json showed no such event")
        finally:
            proc.kill()


def _slow_daemon_job(make_daemon: Callable[..., Daemon], emulator: EmulatorControl,
                     tmp_path: Path) -> tuple[Daemon, str]:
    """A daemon running a download slowed by latency and two fetchers, once it has moved."""
    config = write_config(tmp_path / "fspd.toml",
                          "[transfer]\nfetch_concurrency = 2\nqueue_blocks = 4\n")
    d = make_daemon("--config", str(config), "--rescan-interval", "1")
    snap = emulator.synthetic(volume_size=8, allocation="sparse", density=0.05, seed=17)
    emulator.faults(latency_ms=50, operations=["GetSnapshotBlock"])
    job = d.submit(download_job(emulator, snap, tmp_path / "out.img"), "est.toml")
    wait_for(lambda: d.job(job)["state"] == "running" and d.job(job)["blocks_done"] >= 5,
             60, "the job to move")
    return d, job


def _row(d: Daemon, job: str) -> str:
    return next(line for line in d.cli("status").stdout.splitlines()
                if line.startswith(job[:20]))


def test_a_running_daemon_job_shows_an_estimated_total_early_in_status_and_watch(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, tmp_path: Path
) -> None:
    d, job = _slow_daemon_job(make_daemon, emulator, tmp_path)
    detail = _status_json(d, job)
    assert detail["total_estimated"] is True and detail["blocks_total"] is None
    assert detail["blocks_total_estimate"] > detail["blocks_done"]
    assert detail["percent"] is not None and detail["eta_s"] is not None
    assert detail["progress"]["total_estimated"] is True
    # The estimate is near the snapshot's real count (about 5 % of 16,384 blocks).
    assert 0.7 * 819 <= detail["blocks_total_estimate"] <= 1.3 * 819
    row = _row(d, job)
    assert re.search(r"~\d+%", row) and re.search(r"~\d+(s|m)", row), row
    shown = d.cli("status", job).stdout
    assert re.search(r"blocks \d+/~\d+ \(~\d+%\)", shown) and "ETA ~" in shown, shown
    event = _first_event(d, job, lambda e: e.get("total_estimated") is True)
    assert event["blocks_total_estimate"] >= event["blocks_done"] and event["percent"] < 100
    # On a terminal, `fspd watch JOB` draws the same estimate on its bar.
    watch = Terminal([sys.executable, "-m", "fspd", "watch", job, "--socket", d.socket],
                     d.env, tmp_path)
    wait_for(lambda: re.search(r"~\d+% \|.*blocks \d+/~\d+", watch.text()), 30,
             "an estimate on the watch bar")
    assert d.cli("cancel", job).returncode == 0
    code, raw = watch.wait(60)
    assert code == 5 and "Traceback" not in raw, raw  # the job's own code: cancelled
    assert d.wait_finished(job, 60) == "failed"


def test_a_paused_daemon_job_shows_rate_zero_and_is_not_counted_as_running(
        make_daemon: Callable[..., Daemon], emulator: EmulatorControl, tmp_path: Path
) -> None:
    d, job = _slow_daemon_job(make_daemon, emulator, tmp_path)
    assert d.cli("pause", job).returncode == 0
    wait_for(lambda: d.job(job)["state"] == "paused"
             and d.job(job)["progress"]["stages"]["fetch"]["in_flight"] == 0,
             30, "the blocks in flight to finish")
    paused = _status_json(d, job)
    assert paused["state"] == "paused" and paused["rate_recent_bps"] == 0
    assert paused["progress"]["rate_recent_bps"] == 0 and paused["eta_s"] is None
    status = _status_json(d)
    assert status["summary"].startswith("0 running, 1 paused"), status["summary"]
    assert status["running"] == [] and status["paused"] == [job]
    row = _row(d, job)
    assert "paused" in row and "0 B/s" in row, row
    metrics = _metrics(d)
    assert 'fspd_jobs{state="paused"} 1' in metrics
    assert 'fspd_jobs{state="running"} 0' in metrics
    event = _first_event(d, job, lambda e: e.get("state") == "paused")
    assert event["rate_recent_bps"] == 0

    assert d.cli("resume", job).returncode == 0
    wait_for(lambda: d.job(job)["rate_recent_bps"] > 0, 30, "the job to move again")
    assert d.cli("cancel", job).returncode == 0
    assert d.wait_finished(job, 60) == "failed"


def test_bandwidth_20M_is_20_MiB_per_second_everywhere(
        make_daemon: Callable[..., Daemon]) -> None:
    d = make_daemon("--rescan-interval", "1")
    changed = d.cli("bandwidth", "20M")
    assert changed.returncode == 0, changed.stderr
    assert "20.0 MiB/s" in changed.stdout and str(20 << 20) in changed.stdout
    assert _status_json(d)["bandwidth_bytes_per_s"] == 20 << 20
    assert "(limit 20.0 MiB/s)" in d.cli("status").stdout
    assert "20.0 MiB/s" in d.cli("bandwidth", "20MiB").stdout
    help_text = d.cli("bandwidth", "--help").stdout
    assert "binary" in help_text and "MiB" in help_text


def test_list_bar_shows_the_share_listed_before_the_listing_ends(
        emulator: EmulatorControl, cli_env: dict[str, str], tmp_path: Path) -> None:
    """`fspd list` of a big snapshot: pages come slowly, and the bar says how far it got."""
    snap = emulator.synthetic(volume_size=256, allocation="sparse", density=0.002, seed=13)
    emulator.faults(latency_ms=400, operations=["ListSnapshotBlocks"])
    code, raw = run_on_terminal(fspd_argv(f"fspd list {snap}"), cli_env, tmp_path)
    assert code == 0 and "Traceback" not in raw, raw
    shown = frames(raw)
    assert any(re.search(r"list: ~\d+% \|.*listed \d+/~\d+", f) for f in shown), shown[-10:]
    final = [f for f in shown if f.startswith("list: ")][-1]
    assert re.search(r"list: 100% \|.*listed (\d+)/\1\b", final), final
