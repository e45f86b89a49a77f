"""What a job submitter can put in front of an operator, as the CLI shows it (issue 12, item 5):
escape sequences in spool names and messages are printed escaped, a spool the user may not
write is exit 6 with a message, and a NUL in a job's path is exit 2 naming the field."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from fspd.daemon.spool import Spool
from tests.cli.conftest import Runner, assert_clean, fspd_argv
from tests.daemon.conftest import Daemon, wait_for

NOBODY = 65534
# Clear the screen, set the window title, and reverse the rest of the line.
EVIL = "evil\x1b[2J\x1b]0;owned\x07\u202etxt.toml"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory other users can traverse (pytest's tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="fspd-surface-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _as_nobody(command: list[str], env: dict[str, str], cwd: Path
               ) -> subprocess.CompletedProcess[str]:
    if os.getuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to run the client as another user")
    as_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    result = subprocess.run([*as_nobody, *fspd_argv(command)], capture_output=True, text=True,
                            timeout=60, env=env, cwd=cwd, stdin=subprocess.DEVNULL)
    assert_clean(result)
    return result


def test_status_shows_escape_sequences_in_spool_names_escaped(
        fspd: Runner, cli_env: dict[str, str], tmp_path: Path) -> None:
    daemon = Daemon(tmp_path / "d", ["--rescan-interval", "1"], env=cli_env)
    daemon.start()
    try:
        # Dropped straight into new/ (not through `fspd submit`, which renames safely); the
        # snapshot does not exist, so the job fails and stays in the daemon's history.
        (daemon.spool.box("new") / EVIL).write_text(
            'verb = "list"\nsnapshot_id = "snap-0123456789abcdef0"\n')
        wait_for(lambda: (daemon.spool.box("failed") / EVIL).exists(), 60, "the job to fail")
        table = fspd(["status", "--socket", daemon.socket])
        detail = fspd(["status", EVIL, "--socket", daemon.socket])
    finally:
        daemon.stop()
        shutil.rmtree(daemon.sock_dir, ignore_errors=True)
    for result in (table, detail):
        assert result.returncode == 0, result.stderr
        assert "\x1b" not in result.stdout and "\x07" not in result.stdout
        assert "\u202e" not in result.stdout
        assert "evil\\x1b[2J\\x1b]0;owned\\x07\\u202etxt.toml" in result.stdout, result.stdout
    assert "failed" in table.stdout and "does not exist" in detail.stdout


def test_the_daemons_console_log_shows_spool_names_escaped(
        cli_env: dict[str, str], shared_dir: Path) -> None:
    spool = Spool(shared_dir / "spool")
    spool.ensure()
    (spool.box("new") / EVIL).write_text('verb = "nonsense"\n')
    proc = subprocess.Popen(
        fspd_argv(["--no-log-json", "serve", "--spool", str(spool.root), "--state-dir",
                   str(shared_dir / "state"), "--socket", str(shared_dir / "fspd.sock"),
                   "--rescan-interval", "1"]),
        env=cli_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        wait_for(lambda: (spool.box("failed") / EVIL).exists(), 60, "the rejection")
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert "job_rejected" in err, err
    assert "\x1b" not in err + out and "\u202e" not in err + out
    assert "evil\\x1b[2J" in err


def test_an_error_message_quoting_a_path_shows_it_escaped(fspd: Runner, tmp_path: Path) -> None:
    result = fspd(["run", str(tmp_path / "no\x1b[31mred.toml")])
    assert result.returncode == 2
    assert "\x1b" not in result.stderr and "\\x1b[31m" in result.stderr, result.stderr


def test_submit_without_access_to_the_spool_is_exit_6_with_a_message(
        cli_env: dict[str, str], shared_dir: Path) -> None:
    job = shared_dir / "job.toml"
    job.write_text('verb = "list"\nsnapshot_id = "snap-0123456789abcdef0"\n')
    os.chmod(job, 0o644)
    Spool(shared_dir / "spool").ensure()
    for mode in (0o755, 0o700):  # boxes not writable; then the spool not even searchable
        os.chmod(shared_dir / "spool", mode)
        result = _as_nobody(["submit", str(job), "--spool", str(shared_dir / "spool")],
                            cli_env, shared_dir)
        assert result.returncode == 6, result.stderr
        assert "permission denied" in result.stderr and "spool" in result.stderr
    assert not any(Spool(shared_dir / "spool").entries("new"))


@pytest.mark.parametrize("command", ["run", "submit"])
def test_a_nul_byte_in_a_job_path_is_exit_2_naming_the_field(
        fspd: Runner, tmp_path: Path, command: str) -> None:
    job = tmp_path / "nul.json"
    job.write_text(json.dumps({"source": {"type": "ebs", "snapshot_id": "snap-0123456789abcdef0"},
                               "destinations": [{"type": "file",
                                                 "path": str(tmp_path / "a\x00b.img")}]}))
    Spool(tmp_path / "spool").ensure()
    extra = ["--spool", str(tmp_path / "spool")] if command == "submit" else []
    result = fspd([command, str(job), *extra])
    assert result.returncode == 2, result.stderr
    assert "destinations[0].path" in result.stderr and "control characters" in result.stderr
    assert not (tmp_path / "a").exists()
