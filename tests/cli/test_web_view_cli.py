"""``fspd ui`` as typed: the web view's URL when ``daemon.http_listen`` is set, else an SSH
hint that forwards a local port to the configured control socket."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from tests.cli.conftest import Runner


def _config(tmp_path: Path, daemon: str) -> Path:
    path = tmp_path / "fspd.toml"
    path.write_text(f"[daemon]\n{daemon}\n")
    return path


def test_ui_prints_the_url_when_http_listen_is_set(fspd: Runner, tmp_path: Path) -> None:
    config = _config(tmp_path, 'http_listen = "127.0.0.1:8485"\nstate_dir = "/srv/fspd-state"')
    result = fspd(f"fspd ui --config {config}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "http://127.0.0.1:8485/ui/"
    assert "/srv/fspd-state/ui-token" in result.stdout  # where the control token is
    as_json = json.loads(fspd(f"fspd ui --config {config} --json").stdout)
    assert as_json["url"] == "http://127.0.0.1:8485/ui/"


def test_ui_prints_an_ssh_hint_with_the_configured_socket(fspd: Runner, tmp_path: Path) -> None:
    config = _config(tmp_path, 'socket_path = "/srv/run/fspd.sock"')
    result = fspd(f"fspd ui --config {config}", extra_env={"FSPD_SOCKET": ""})
    assert result.returncode == 0, result.stderr
    assert f"ssh -L 8485:/srv/run/fspd.sock {socket.gethostname()}" in result.stdout
    assert "http://127.0.0.1:8485/ui/" in result.stdout
    # --socket wins over the config, as for every client command.
    other = fspd(f"fspd ui --config {config} --socket /tmp/other.sock --json")
    assert json.loads(other.stdout)["ssh"].startswith("ssh -L 8485:/tmp/other.sock ")


def test_ui_refuses_a_non_loopback_http_listen_naming_the_field(
        fspd: Runner, tmp_path: Path) -> None:
    for listen in ("0.0.0.0:8485", "192.0.2.7:8485", "example.com:8485"):
        config = _config(tmp_path, f'http_listen = "{listen}"')
        result = fspd(f"fspd ui --config {config}")
        assert result.returncode == 2, result.stdout
        assert "daemon.http_listen" in result.stderr and "loopback" in result.stderr
    for bad in ("127.0.0.1", "127.0.0.1:0", "127.0.0.1:99999"):
        config = _config(tmp_path, f'http_listen = "{bad}"')
        result = fspd(f"fspd ui --config {config}")
        assert result.returncode == 2 and "daemon.http_listen" in result.stderr, bad
    ipv6_config = _config(tmp_path, 'http_listen = "[::1]:8485"')
    ipv6 = fspd(f"fspd ui --config {ipv6_config}")
    assert ipv6.returncode == 0 and ipv6.stdout.startswith("http://[::1]:8485/ui/")
