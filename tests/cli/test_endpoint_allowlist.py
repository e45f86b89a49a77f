"""A job may send fspd's credentials only to AWS's endpoints or ones the operator allowed
(issue 12, item 2): a job naming its own listener is refused before any request, from the
command line (exit 2 naming the field) and in the daemon (failed/ with the field)."""

from __future__ import annotations

import json
import shutil
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner
from tests.daemon.conftest import Daemon


class Listener:
    """A TCP listener of the submitter's: records whatever connects to it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                try:
                    self.received.append(conn.recv(65536))
                    conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    self.received.append(b"")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    lst = Listener()
    yield lst
    lst.close()


def _config(tmp_path: Path, *allow: str) -> Path:
    cfg = tmp_path / "fspd.toml"
    cfg.write_text("[aws]\nallow_endpoints = " + json.dumps(list(allow)) + "\n"
                   "[retry]\nmax_attempts = 1\n")
    return cfg


def _job(tmp_path: Path, snap: str, url: str, where: str) -> Path:
    job = {"source": {"type": "ebs", "snapshot_id": snap},
           "destinations": [{"type": "file", "path": str(tmp_path / "out.img")}]}
    if where == "source":
        job["source"]["endpoint_url"] = url  # type: ignore[index]
    else:
        job["source"] = {"type": "file", "path": str(tmp_path / "in.img")}
        job["destinations"] = [{"type": "ebs", "endpoint_url": url}]
        (tmp_path / "in.img").write_bytes(b"x" * 4096)
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    return path


@pytest.mark.parametrize("where", ["source", "destinations[0]"])
def test_fspd_run_refuses_a_job_naming_an_endpoint_not_allowed(
        fspd: Runner, emulator: EmulatorControl, listener: Listener, tmp_path: Path,
        where: str) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.001, seed=2)
    cfg = _config(tmp_path, emulator.url)  # the operator allows the emulator, nothing else
    result = fspd(["run", str(_job(tmp_path, snap, listener.url, where)), "--config", str(cfg)])
    assert result.returncode == 2, result.stderr
    assert f"{where}.endpoint_url" in result.stderr and "allow_endpoints" in result.stderr
    assert listener.received == []  # not a byte, let alone a signature, left fspd


def test_the_default_allows_aws_endpoints_only(fspd: Runner, emulator: EmulatorControl,
                                                 tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.001, seed=3)
    (tmp_path / "empty.toml").write_text("")
    job = _job(tmp_path, snap, emulator.url, "source")
    refused = fspd(["run", str(job), "--config", str(tmp_path / "empty.toml")])
    assert refused.returncode == 2 and "source.endpoint_url" in refused.stderr
    allowed = fspd(["run", str(job), "--config", str(_config(tmp_path, emulator.url))])
    assert allowed.returncode == 0, allowed.stderr
    assert (tmp_path / "out.img").stat().st_size == 1 << 30


def test_an_endpoint_typed_on_the_command_line_is_the_operators_choice(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.001, seed=4)
    (tmp_path / "empty.toml").write_text("")
    result = fspd(["download", snap, str(tmp_path / "out.img"), "--endpoint-url", emulator.url,
                   "--config", str(tmp_path / "empty.toml")])
    assert result.returncode == 0, result.stderr


def test_a_bad_allow_list_entry_is_a_config_error(fspd: Runner, tmp_path: Path) -> None:
    cfg = _config(tmp_path, "https://example.com/path")
    result = fspd(["list", "snap-0123456789abcdef0", "--config", str(cfg)])
    assert result.returncode == 2 and "aws.allow_endpoints" in result.stderr, result.stderr


def test_the_daemon_puts_a_job_naming_its_own_endpoint_into_failed_with_the_field(
        emulator: EmulatorControl, cli_env: dict[str, str], listener: Listener,
        tmp_path: Path) -> None:
    snap = emulator.synthetic(volume_size=1, allocation="sparse", density=0.001, seed=5)
    daemon = Daemon(tmp_path / "d", ["--config", str(_config(tmp_path, emulator.url)),
                                     "--rescan-interval", "1"], env=cli_env)
    daemon.start()
    try:
        name = daemon.submit(_job(tmp_path, snap, listener.url, "source").read_text(),
                             "steal.json")
        assert daemon.wait_finished(name, 60) == "failed"
        record = daemon.sidecar("failed", name)
    finally:
        daemon.stop()
        shutil.rmtree(daemon.sock_dir, ignore_errors=True)
    assert record["field"] == "source.endpoint_url" and record["error"] == "BadInput"
    assert listener.received == []
