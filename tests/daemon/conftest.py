"""``fspd serve`` as a real child process, with the emulator (tests/conftest.py) as AWS."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fspd.daemon.spool import Spool
from fspd.emulator.control import EmulatorControl
from tests.conftest import TEST_AWS_CONFIG

SERVE_START_S = 60.0  # a hang guard: the daemon and its workers start (slow on a busy machine)
# Worker processes of every daemon the tests start, unless a test names its own: 2 (CI has
# 2 CPUs); FSPD_TEST_WORKERS=1 runs the same tests with one.
TEST_WORKERS = os.environ.get("FSPD_TEST_WORKERS", "2")


def write_config(path: Path, text: str = "") -> Path:
    """An fspd.toml of ``text`` that also allows the tests' endpoints (their jobs name the
    emulator and moto on 127.0.0.1)."""
    path.write_text(text + TEST_AWS_CONFIG)
    return path


def wait_for(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition"
             ) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("fspd", timeout=30)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


class Daemon:
    """One ``fspd serve`` process with its spool, state and socket in a private directory."""

    def __init__(self, root: Path, args: list[str], env: dict[str, str] | None = None) -> None:
        self.root = root
        self.spool = Spool(root / "spool")
        # A short path (Unix socket paths are limited to 107 bytes), traversable by others.
        self.sock_dir = Path(tempfile.mkdtemp(prefix="fspd-sock-"))
        os.chmod(self.sock_dir, 0o755)
        self.socket = str(self.sock_dir / "fspd.sock")
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "serve.log"
        root.mkdir(parents=True, exist_ok=True)

    def start(self, extra: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        args = [*self.args, *(extra or [])]
        if "--config" not in args:  # the tests' jobs name the emulator: allow it
            args += ["--config", str(write_config(self.root / "fspd-test.toml"))]
        if "--workers" not in args:
            args += ["--workers", TEST_WORKERS]
        cmd = [sys.executable, "-m", "fspd", "--log-json", "serve",
               "--spool", str(self.spool.root), "--state-dir", str(self.root / "state"),
               "--socket", self.socket, *args]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         env={**self.env, **(env or {})})
        wait_for(self._listening, SERVE_START_S, "fspd serve to listen")

    def _listening(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"fspd serve exited {self.proc.returncode}:\n{self.log()}")
        try:
            self.api("/v1/status")
        except OSError:
            return False
        return True

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def cli(self, *args: str, user: int | None = None, group: int | None = None,
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run ``fspd ARGS --socket S`` as a separate process, as a CLI user would."""
        return subprocess.run([sys.executable, "-m", "fspd", *args, "--socket", self.socket],
                              capture_output=True, text=True, timeout=timeout, env=self.env,
                              user=user, group=group, extra_groups=[] if user else None)

    def submit(self, text: str, name: str = "job.toml") -> str:
        return self.spool.submit(text.encode(), name)

    def api(self, path: str, *, missing_ok: bool = False) -> Any:
        """GET a control-socket path in-process (cheaper than a CLI process for polling)."""
        conn = _UnixHTTPConnection(self.socket)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        if missing_ok and resp.status == 404:
            return None
        assert resp.status == 200, body
        return json.loads(body)

    def job(self, name: str) -> dict[str, Any]:
        """The job's record, once the daemon has noticed the file."""
        return wait_for(lambda: self.api(f"/v1/jobs/{name}", missing_ok=True), 10,
                        f"the daemon to notice {name}")

    def wait_finished(self, name: str, timeout: float = 30) -> str:
        """The box (done/failed) the job file lands in."""
        def where() -> str | None:
            for box in ("done", "failed"):
                if (self.spool.box(box) / name).exists():
                    return box
            return None
        try:
            return wait_for(where, timeout, f"{name} to finish")
        except AssertionError as exc:  # CI keeps only the test's output: say what the daemon did
            tail = "\n".join(self.log().splitlines()[-40:])
            raise AssertionError(f"{exc}; the daemon log ends with:\n{tail}") from None

    def sidecar(self, box: str, name: str) -> dict[str, Any]:
        suffix = ".result.json" if box == "done" else ".error.json"
        return json.loads((self.spool.box(box) / (name + suffix)).read_text())

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise AssertionError(f"fspd serve ignored SIGTERM:\n{self.log()}") from None
        return proc.returncode


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(*args: str, start: bool = True, env: dict[str, str] | None = None,
             root: Path | None = None) -> Daemon:
        d = Daemon(root or tmp_path / f"d{len(made)}", list(args), env)
        made.append(d)
        if start:
            d.start()
        return d

    yield make
    for d in made:
        d.stop()
        shutil.rmtree(d.sock_dir, ignore_errors=True)


@pytest.fixture
def daemon(make_daemon: Callable[..., Daemon]) -> Daemon:
    return make_daemon("--rescan-interval", "1")


def download_job(emulator: EmulatorControl, snapshot_id: str, path: Path, **extra: Any) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join([
        'verb = "download"', f'snapshot_id = "{snapshot_id}"', f'path = "{path}"',
        f'endpoint_url = "{emulator.url}"', *lines, ""])


def upload_job(emulator: EmulatorControl, path: Path, **extra: Any) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in extra.items()]
    return "\n".join(['verb = "upload"', f'path = "{path}"',
                      f'endpoint_url = "{emulator.url}"', *lines, ""])


def assert_file_is_snapshot(emulator: EmulatorControl, snapshot_id: str, path: Path,
                            region: str = "us-east-1") -> None:
    size = path.stat().st_size
    piece = 128 << 20
    with path.open("rb") as f:
        for offset in range(0, size, piece):
            length = min(piece, size - offset)
            assert f.read(length) == emulator.image(snapshot_id, region, offset, length), (
                f"bytes differ in [{offset}, {offset + length})")


def query(url: str, **params: str) -> str:
    return url + "?" + urllib.parse.urlencode(params)
