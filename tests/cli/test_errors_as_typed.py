"""Errors as a user meets them at the command line: no endpoint, transient server errors,
missing credentials or profile, a region the account has not enabled, and bad input that must
be refused before any request is sent. Each runs the ``fspd`` console script as a subprocess."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from fspd.emulator.control import EmulatorControl
from tests.cli.conftest import Runner, _runner


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fast_retries(tmp_path: Path, attempts: int = 4) -> Path:
    """A settings file whose backoff is short, so a test of retries takes seconds."""
    cfg = tmp_path / "fast-retries.toml"
    cfg.write_text(f"[retry]\nmax_attempts = {attempts}\nbackoff_base_s = 0.01\n"
                   "backoff_cap_s = 0.05\n")
    return cfg


def _retry_lines(stderr: str) -> list[dict[str, object]]:
    out = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == "request_retrying":
                out.append(record)
    return out


@pytest.mark.timeout(30)
def test_nothing_listening_fails_fast_naming_the_endpoint(
        cli_env: dict[str, str], tmp_path: Path, emulator: EmulatorControl) -> None:
    sid = emulator.synthetic(volume_size=1)
    url = f"http://127.0.0.1:{_closed_port()}"
    env = {k: v for k, v in cli_env.items() if not k.startswith("AWS_ENDPOINT_URL")}
    env["AWS_ENDPOINT_URL"] = url
    result = _runner(env, tmp_path)(f"fspd list {sid}")
    assert result.returncode == 4, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fspd:")]
    assert len(errors) == 1 and url in errors[0] and "connection refused" in errors[0], \
        result.stderr


@pytest.mark.timeout(60)
def test_each_retry_is_logged_and_is_the_only_retry_layer(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    sid = emulator.synthetic(volume_size=1)
    emulator.faults(error_rate=1.0, operations=["ListSnapshotBlocks"])
    emulator.reset_stats()
    result = fspd(f"fspd list {sid} --config {_fast_retries(tmp_path)}")
    assert result.returncode == 4, result.stderr
    assert "gave up after 4 attempts" in result.stderr
    # The server saw exactly fspd's attempts: no hidden botocore retries inside them.
    assert emulator.stats()["requests"]["ListSnapshotBlocks"] == 4
    lines = _retry_lines(result.stderr)
    assert [r["attempt"] for r in lines] == [1, 2, 3]
    assert all(r["level"] == "info" and r["operation"] == "ListSnapshotBlocks"
               for r in lines)
    assert "failed on attempt 2 of 4" in str(lines[1]["detail"])
    assert "next try in" in str(lines[1]["detail"])


@pytest.mark.timeout(60)
def test_a_transient_error_is_retried_once_per_failure(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path) -> None:
    sid = emulator.synthetic(volume_size=1)
    emulator.faults(error_rate=0.5, seed=3, operations=["ListSnapshotBlocks",
                                                        "DescribeSnapshots"])
    emulator.reset_stats()
    result = fspd(f"fspd list {sid} --config {_fast_retries(tmp_path, 8)}")
    assert result.returncode == 0, result.stderr
    stats = emulator.stats()
    injected = stats["faults"]["error"]
    assert injected >= 1
    sent = stats["requests"]["ListSnapshotBlocks"] + stats["requests"]["DescribeSnapshots"]
    assert len(_retry_lines(result.stderr)) == injected
    assert sent == injected + 2  # one success each, plus one request per logged retry


def _fail_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("fspd:")]
    assert len(lines) == 1, stderr
    return lines[0]


# (command, extra environment, exit code, what the one line must name)
BAD_INPUT = [
    pytest.param("copy {sid} -d eu-west-1 --tag aws:x=1", {}, 2, "destinations[0].tags",
                 id="reserved-tag-prefix"),
    pytest.param("upload disk.img --tag AWS:team=x", {}, 2, "'aws:' prefix is reserved",
                 id="reserved-tag-prefix-any-case"),
    pytest.param("list {sid} --profile nope", {}, 2, "source.profile: profile 'nope'",
                 id="unknown-profile"),
    pytest.param("list {sid}", {"AWS_PROFILE": "nope"}, 2, "profile 'nope'",
                 id="unknown-profile-from-env"),
    pytest.param("copy {sid} -d eu-west-1 --destination-profile nope", {}, 2,
                 "destinations[0].profile", id="unknown-destination-profile"),
    pytest.param("list {sid}", {"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": "",
                                "AWS_EC2_METADATA_DISABLED": "true"}, 3,
                 "no AWS credentials found", id="no-credentials"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("command", "env", "code", "names"), BAD_INPUT)
def test_bad_input_is_refused_before_any_request(
        fspd: Runner, emulator: EmulatorControl, tmp_path: Path, command: str,
        env: dict[str, str], code: int, names: str) -> None:
    sid = emulator.synthetic(volume_size=1)
    (tmp_path / "disk.img").write_bytes(b"x" * 4096)
    emulator.reset_stats()
    result = fspd("fspd " + command.format(sid=sid), extra_env=env)
    assert result.returncode == code, result.stderr
    assert names in _fail_line(result.stderr)
    assert emulator.stats()["requests"] == {}, "bad input must not reach AWS"


@pytest.mark.timeout(30)
def test_missing_credentials_fail_at_once_naming_the_sources_tried(
        cli_env: dict[str, str], tmp_path: Path, emulator: EmulatorControl) -> None:
    sid = emulator.synthetic(volume_size=1)
    env = {k: v for k, v in cli_env.items()
           if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")}
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    emulator.reset_stats()
    result = _runner(env, tmp_path)(f"fspd list {sid}")
    assert result.returncode == 3, result.stderr
    line = _fail_line(result.stderr)
    for source in ("environment", "shared credentials file", "config file",
                   "container credentials", "instance metadata (IMDS)"):
        assert source in line, line
    assert _retry_lines(result.stderr) == []
    assert emulator.stats()["requests"] == {}


@pytest.mark.timeout(60)
def test_a_region_not_enabled_is_named_as_such(
        fspd: Runner, emulator: EmulatorControl) -> None:
    sid = emulator.synthetic(volume_size=1)
    emulator.config(regions=["us-east-1", "eu-west-1"])
    for command, field in ((f"list {sid} -r ap-southeast-2", "source.region"),
                           (f"copy {sid} -d ap-southeast-2", "destinations[0].region")):
        result = fspd("fspd " + command)
        assert result.returncode == 2, result.stderr
        line = _fail_line(result.stderr)
        assert f"{field}: region ap-southeast-2 is not enabled for this account" in line
        assert "DescribeRegions" not in line.split("(")[0]
    # No data moved, and nothing was started in the refused region.
    assert emulator.snapshots(region="ap-southeast-2") == []
