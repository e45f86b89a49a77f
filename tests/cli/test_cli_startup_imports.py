"""A command loads only what it needs: ``fspd --help``, ``fspd status`` and ``fspd completion``
import none of the engine's heavy libraries (botocore, aiohttp, pydantic, zstandard, structlog,
...). Checked by the modules a process running the CLI's ``main`` ends up with, not by timing;
tests/bench reports the CPU seconds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.cli.conftest import assert_clean
from tests.daemon import conftest as daemon_fixtures
from tests.daemon.conftest import Daemon

make_daemon = daemon_fixtures.make_daemon  # a real `fspd serve` per test
daemon = daemon_fixtures.daemon

# Top-level packages (and fspd modules) a light command must not load.
HEAVY = ("aiobotocore", "botocore", "boto3", "aiohttp", "yarl", "zstandard", "structlog",
         "pydantic", "pydantic_core", "uvloop", "tqdm", "aiofiles", "fspd.run", "fspd.aws",
         "fspd.jobs", "fspd.config", "fspd.daemon.scheduler")

# Runs the CLI's main for argv in this process, then writes its exit code and sys.modules.
_PROBE = """
import json, sys
from fspd.cli import main
try:
    code = main(sys.argv[2:])
except SystemExit as exc:
    code = exc.code
with open(sys.argv[1], "w") as f:
    json.dump({"code": code, "modules": sorted(sys.modules)}, f)
"""


def _run(argv: list[str], env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "modules.json"
    result = subprocess.run([sys.executable, "-c", _PROBE, str(out), *argv],
                            capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
                            stdin=subprocess.DEVNULL)
    assert_clean(result)
    probe = dict(json.loads(out.read_text()))
    probe["stdout"], probe["stderr"] = result.stdout, result.stderr
    return probe


def _heavy(modules: list[str]) -> list[str]:
    return sorted({m for m in modules for h in HEAVY if m == h or m.startswith(h + ".")})


@pytest.mark.parametrize("argv", [["--help"], ["download", "--help"], ["completion", "bash"]],
                         ids=["help", "download-help", "completion"])
def test_help_and_completion_load_no_heavy_module(argv: list[str], cli_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    probe = _run(argv, cli_env, tmp_path)
    assert probe["code"] == 0, probe["stderr"]
    assert probe["stdout"].strip()
    assert _heavy(probe["modules"]) == []


def test_status_without_a_daemon_exits_6_loading_no_heavy_module(
        cli_env: dict[str, str], tmp_path: Path) -> None:
    # As typed: the socket comes from the settings file ($FSPD_CONFIG names no socket, so
    # the default path, where nothing listens here).
    missing = tmp_path / "nobody" / "fspd.sock"
    config = tmp_path / "fspd.toml"
    config.write_text(f'[daemon]\nsocket_path = "{missing}"\n[transfer]\nqueue_blocks = 8\n')
    probe = _run(["status"], {**cli_env, "FSPD_CONFIG": str(config)}, tmp_path)
    assert probe["code"] == 6, probe["stderr"]
    assert "not running" in probe["stderr"] and str(missing) in probe["stderr"]
    assert _heavy(probe["modules"]) == []


def test_status_of_a_running_daemon_loads_no_heavy_module(
        daemon: Daemon, cli_env: dict[str, str], tmp_path: Path) -> None:
    # The socket as the operator's settings file gives it.
    config = tmp_path / "fspd.toml"
    config.write_text(f'[daemon]\nsocket_path = "{daemon.socket}"\n')
    env = {**cli_env, "FSPD_CONFIG": str(config)}
    probe = _run(["status"], env, tmp_path)
    assert probe["code"] == 0, probe["stderr"]
    assert "JOB" in probe["stdout"] or "no jobs" in probe["stdout"].lower(), probe["stdout"]
    assert _heavy(probe["modules"]) == []
    as_json = _run(["status", "--json"], env, tmp_path)
    assert as_json["code"] == 0 and json.loads(as_json["stdout"])["jobs"] == []
    assert _heavy(as_json["modules"]) == []


def test_a_job_name_with_spaces_and_controls_is_a_clean_not_found(
        daemon: Daemon, cli_env: dict[str, str], tmp_path: Path) -> None:
    for verb in ("status", "cancel"):
        probe = _run([verb, "no such\tjob?", "--socket", daemon.socket], cli_env, tmp_path)
        assert probe["code"] == 2, probe["stderr"]
        assert "no such" in probe["stderr"], probe["stderr"]


def test_status_names_a_socket_path_of_the_wrong_type(cli_env: dict[str, str],
                                                      tmp_path: Path) -> None:
    config = tmp_path / "fspd.toml"
    config.write_text("[daemon]\nsocket_path = 5\n")
    probe = _run(["status"], {**cli_env, "FSPD_CONFIG": str(config)}, tmp_path)
    assert probe["code"] == 2, probe["stderr"]
    assert "daemon.socket_path" in probe["stderr"]
